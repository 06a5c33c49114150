"""Every CUDA kernel: compiled by nvcc and NVRTC where they exist, and compared
with the NumPy path (its readable definition) on fresh random inputs, on a GPU
and, anywhere with a host C++ compiler, emulated on the CPU through the CuPy
backend's own launch code (tests/_cuda_emulator.py).

Tolerance: max |cupy - numpy| / max |numpy| below 1e-5 in float32, 1e-12 in float64.
"""

import shutil
import subprocess

import numpy as np
import pytest

from _cuda_emulator import emulated_backend
from _helpers import (ACTIVATIONS, BACKENDS, PAIRS, away_from_kinks, max_rel_error, random_targets,
                      requires_cupy, spy_kernels, sum_error)
from gpubp import kernels
from gpubp.backends import get_backend

TOL = {"float32": 1e-5, "float64": 1e-12}
CU_FILES = sorted(kernels.kernel_dir().glob("*.cu"))


def test_every_kernel_file_states_its_math_first():
    assert len(CU_FILES) >= 7
    for path in CU_FILES:
        first = path.read_text().lstrip().splitlines()[0]
        assert first.startswith("//"), f"{path.name} must open with a comment stating its math"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on the PATH")
@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: p.name)
def test_kernel_compiles_with_nvcc_for_hopper(path, tmp_path):
    result = subprocess.run(
        ["nvcc", "-std=c++17", "-arch=sm_90", "-cubin", "-o", str(tmp_path / "k.cubin"), str(path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr


def _nvrtc_program():
    """CuPy's NVRTC wrapper, where CuPy and an NVRTC library are installed."""
    compiler = pytest.importorskip("cupy.cuda.compiler")
    program = getattr(compiler, "_NVRTCProgram", None)
    if program is None:
        pytest.skip("this CuPy has no _NVRTCProgram")
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
    except Exception as exc:  # no libnvrtc on this machine
        pytest.skip(f"NVRTC is not available: {exc}")
    return program


@pytest.mark.parametrize("name", [p.stem for p in CU_FILES if p.stem != "activation_backward"])
def test_loader_source_compiles_with_nvrtc(name):
    """What the loader hands CuPy (common.cuh pasted in, the instantiations it
    names) compiles with NVRTC, without a GPU."""
    program = _nvrtc_program()
    names = kernels.instantiations(name)
    assert names, f"kernels/{name}.cu instantiates nothing"
    ptx, mapping = program(kernels.source(name), name=f"{name}.cu", name_expressions=names).compile(
        options=kernels.COMPILE_OPTIONS + ("--gpu-architecture=compute_90",))
    assert set(mapping) == set(names)


def test_activation_backward_preamble_compiles_with_nvrtc():
    program = _nvrtc_program()
    calls = "\n".join(
        f"  out[{i}] = activation_backward<{code}>(err[{i}], a[{i}]);"
        for i, code in enumerate(kernels.ACTIVATION_CODES.values())
    )
    for t in ("float", "double"):
        src = kernels.source("activation_backward") + (
            f'\nextern "C" __global__ void probe(const {t}* err, const {t}* a, {t}* out) {{\n'
            f"{calls}\n}}\n")
        program(src, name="probe.cu").compile(
            options=kernels.COMPILE_OPTIONS + ("--gpu-architecture=compute_90",))


def test_activation_backward_preamble_compiles_after_cupys_elementwise_headers():
    """A cupy.ElementwiseKernel's source starts with CuPy's own headers (complex,
    carray, atomics, math constants) and is compiled with CuPy's include paths:
    the preamble must not clash with anything they define."""
    program = _nvrtc_program()
    from cupy._core import core

    headers = getattr(core, "_cupy_header_list", None)
    assemble = getattr(core, "assemble_cupy_compiler_options", None)
    if headers is None or assemble is None:
        pytest.skip("this CuPy does not expose its elementwise headers and options")
    calls = "\n".join(
        f"  out[i * {len(kernels.ACTIVATION_CODES)} + {j}] = activation_backward<{code}>(err[i], a[i]);"
        for j, code in enumerate(kernels.ACTIVATION_CODES.values())
    )
    for t in ("float", "double"):
        src = ("".join(f"#include <{h}>\n" for h in headers) + kernels.source("activation_backward")
               + f'\nextern "C" __global__ void probe(const {t}* err, const {t}* a, {t}* out, int n) {{\n'
               f"  for (int i = threadIdx.x; i < n; i += blockDim.x) {{\n{calls}\n  }}\n}}\n")
        program(src, name="probe.cu").compile(
            options=tuple(assemble(kernels.COMPILE_OPTIONS)) + ("--gpu-architecture=compute_90",))


# -- CuPy against NumPy ---------------------------------------------------------

@pytest.fixture(scope="module", params=["gpu", "emulated", "emulated-7sm-reversed"])
def both(request):
    """The CuPy backend (on a GPU, or its launch code over NumPy arrays with the
    kernels emulated on the CPU: tests/_cuda_emulator.py), and the NumPy backend.
    The emulation runs twice: on a pretend GPU of 1 SM with each block's threads
    taking turns in index order, and of 7 SMs (more blocks, more partial sums)
    in the reverse order, so that a missing barrier shows in one or the other."""
    if request.param == "gpu":
        if "cupy" not in BACKENDS:
            pytest.skip("needs CuPy and a CUDA GPU")
        return get_backend("cupy"), get_backend("numpy")
    reverse = request.param.endswith("reversed")
    emulated = emulated_backend(sms=7 if reverse else 1, reverse_order=reverse)
    return emulated, get_backend("numpy")


def _pair(cp_backend, a):
    """The same data on the GPU and on the host."""
    return cp_backend.asarray(a), np.array(a)


def _check(cp_backend, gpu, cpu, dtype):
    assert max_rel_error(cp_backend.to_numpy(gpu), cpu) < TOL[dtype]


DTYPES = ["float32", "float64"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(37, 19), (4099, 300), (4099, 301)])   # the last two stride the grid (packed, per element)
def test_bias_activation(both, rng, dtype, activation, shape):
    cpb, npb = both
    zc, zn = _pair(cpb, rng.normal(scale=3.0, size=shape).astype(dtype))
    bc, bn = _pair(cpb, rng.normal(size=shape[1]).astype(dtype))
    cpb.bias_activation(zc, bc, activation)
    npb.bias_activation(zn, bn, activation)
    _check(cpb, zc, zn, dtype)


DENSE_SHAPES = [(37, 19, 23), (300, 64, 64), (5, 1, 3), (1000, 64, 16), (70, 65, 8)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("m,K,N", DENSE_SHAPES)    # float32 and K, N <= 64: dense_layer.cu
def test_dense_forward(both, rng, dtype, activation, m, K, N):
    cpb, npb = both
    ac, an = _pair(cpb, rng.normal(size=(m, K)).astype(dtype))
    wc, wn = _pair(cpb, rng.normal(size=(K, N)).astype(dtype))
    bc, bn = _pair(cpb, rng.normal(size=N).astype(dtype))
    oc, on = _pair(cpb, np.full((m, N), np.nan, dtype=dtype))
    cpb.dense_forward(ac, wc, bc, activation, out=oc)
    npb.dense_forward(an, wn, bn, activation, out=on)
    _check(cpb, oc, on, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("m,K,N", DENSE_SHAPES)
def test_dense_backward(both, rng, dtype, activation, m, K, N):
    cpb, npb = both
    ec, en = _pair(cpb, rng.normal(size=(m, N)).astype(dtype))
    wc, wn = _pair(cpb, rng.normal(size=(K, N)).astype(dtype))
    a = rng.normal(size=(m, K))
    if activation in ("sigmoid", "tanh"):          # a stored activation: in (0, 1) or (-1, 1)
        a = np.tanh(a) if activation == "tanh" else 1 / (1 + np.exp(-a))
    ac, an = _pair(cpb, a.astype(dtype))
    oc, on = _pair(cpb, np.full((m, K), np.nan, dtype=dtype))
    dbc, dbn = _pair(cpb, np.full(K, np.nan, dtype=dtype))
    cpb.dense_backward(ec, wc, ac, activation, out=oc, db=dbc)
    npb.dense_backward(en, wn, an, activation, out=on, db=dbn)
    _check(cpb, oc, on, dtype)
    # Column sums: within tolerance of the float64 sum, relative to what they add.
    assert sum_error(cpb.to_numpy(dbc), on) < TOL[dtype] * (10 if m > 10000 else 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_backward(both, rng, dtype, activation):
    cpb, npb = both
    z = rng.normal(size=(41, 23))
    a = np.array(z)
    npb.bias_activation(a, np.zeros(23), activation)
    ec, en = _pair(cpb, rng.normal(size=z.shape).astype(dtype))
    ac, an = _pair(cpb, a.astype(dtype))
    cpb.activation_backward(ec, ac, activation, out=ec)     # in place, as the model calls it
    npb.activation_backward(en, an, activation, out=en)
    _check(cpb, ec, en, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(41, 23), (517, 256), (3, 128)])   # narrow rows; wide: packed
@pytest.mark.parametrize("block_rows", [256, 32])      # the default grid, and the one to measure
def test_activation_backward_bias_grad(both, rng, monkeypatch, dtype, activation, shape, block_rows):
    cpb, npb = both
    monkeypatch.setattr(cpb, "_BG_BLOCK_ROWS", block_rows)
    a = rng.normal(size=shape)
    npb.bias_activation(a, np.zeros(shape[1]), activation)
    ec, en = _pair(cpb, rng.normal(size=shape).astype(dtype))
    ac, an = _pair(cpb, a.astype(dtype))
    dbc, dbn = _pair(cpb, np.full(shape[1], np.nan, dtype=dtype))
    cpb.activation_backward_bias_grad(ec, ac, activation, out=ec, db=dbc)   # in place
    npb.activation_backward_bias_grad(en, an, activation, out=en, db=dbn)
    _check(cpb, ec, en, dtype)
    assert sum_error(cpb.to_numpy(dbc), en) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 10, 33, 100])
@pytest.mark.parametrize("target", ["dense", "labels", "forward"])
def test_softmax_cross_entropy(both, rng, dtype, k, target):
    cpb, npb = both
    n = 300
    z = rng.normal(scale=4.0, size=(n, k))
    # A quarter of the rows shifted up by 100 (float64: 800): exp overflows there
    # unless the row's max is taken away first.
    z[rng.random(n) < 0.25] += 100.0 if dtype == "float32" else 800.0
    zc, zn = _pair(cpb, z.astype(dtype))
    dc, dn = _pair(cpb, np.full((n, k), np.nan, dtype=dtype))   # poisoned: every element must be written
    if target == "forward":
        cpb.softmax(zc, out=dc)
        npb.softmax(zn, out=dn)
        _check(cpb, dc, dn, dtype)
        return
    lc, ln = _pair(cpb, np.full((), rng.uniform(1, 2)))
    if target == "labels":
        y = rng.integers(0, k, size=n).astype(np.int32)
        yc, yn, labc, labn = None, None, cpb.asarray(y), y
    else:
        yc, yn = _pair(cpb, rng.uniform(0, 1, size=(n, k)).astype(dtype))
        labc = labn = None
    scale = float(rng.uniform(0.001, 0.1))
    cpb.softmax_cross_entropy(zc, yc, labc, dc, lc, scale)
    npb.softmax_cross_entropy(zn, yn, labn, dn, ln, scale)
    _check(cpb, dc, dn, dtype)
    _check(cpb, lc, ln, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["mse_identity", "mse_sigmoid", "bce_sigmoid"])
@pytest.mark.parametrize("gathered", [False, True])
def test_pointwise_loss(both, rng, dtype, kind, gathered):
    """Gathered: the targets are the rows order[offset : offset + 513] of a
    larger set, read in place (the trainer's step), against NumPy's gather."""
    cpb, npb = both
    shape = (513, 7)
    zc, zn = _pair(cpb, _logits_some_huge(rng, shape).astype(dtype))
    n_y = 2000 if gathered else shape[0]
    yv = rng.uniform(0, 1, size=(n_y, 7)) if kind != "mse_identity" else rng.normal(size=(n_y, 7))
    yc, yn = _pair(cpb, yv.astype(dtype))
    dc, dn = _pair(cpb, np.full(shape, np.nan, dtype=dtype))
    lc, ln = _pair(cpb, np.full((), rng.uniform(1, 2)))
    scale = float(rng.uniform(0.001, 0.1))
    rows_c = rows_n = None
    if gathered:
        order, offset = rng.permutation(n_y).astype(np.int64), np.array([1100], dtype=np.int64)
        rows_c, rows_n = (cpb.asarray(order), cpb.asarray(offset)), (order, offset)
    cpb.pointwise_loss(zc, yc, kind, dc, lc, scale, rows=rows_c)
    npb.pointwise_loss(zn, yn, kind, dn, ln, scale, rows=rows_n)
    _check(cpb, dc, dn, dtype)
    _check(cpb, lc, ln, dtype)
    if gathered:                          # NumPy's own definition, against a plain gather
        d2, l2 = np.full(shape, np.nan, dtype=dtype), np.zeros(())
        npb.pointwise_loss(zn, yn[order[1100:1613]], kind, d2, l2, scale)
        np.testing.assert_array_equal(d2, dn)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_keeps_the_loss_of_well_classified_rows(both, rng, dtype):
    """Rows classified right by far (y = 1, z from 15 (float64: 38) to 45; y = 0, the same negated)
    have a loss of log1p(exp(-|z|)), down to 1e-20: kept to the dtype's relative
    rounding, by the kernel and by NumPy's definition, where log(1 + exp(-|z|)), or
    adding the term to z before taking z y away, would round it to 0."""
    cpb, npb = both
    m = 64
    lo = 15 if dtype == "float32" else 38          # where 1 + exp(-|z|) rounds to 1, for the sum
    z = rng.uniform(lo, 45, size=(m, 1)) * np.where(rng.random((m, 1)) < 0.5, 1.0, -1.0)
    y = (z > 0).astype(np.float64)
    zc, yc = cpb.asarray(z.astype(dtype)), cpb.asarray(y.astype(dtype))
    loss, delta = cpb.asarray(np.zeros(())), cpb.asarray(np.full((m, 1), np.nan, dtype=dtype))
    cpb.pointwise_loss(zc, yc, "bce_sigmoid", delta, loss, 1.0)
    z32 = z.astype(dtype).astype(np.float64)
    expected = np.log1p(np.exp(-np.abs(z32))).sum()
    rtol = 1e-5 if dtype == "float32" else 1e-12
    assert float(cpb.to_numpy(loss)) == pytest.approx(expected, rel=rtol)
    ln = np.zeros(())
    npb.pointwise_loss(z.astype(dtype), y.astype(dtype), "bce_sigmoid",
                       np.full((m, 1), np.nan, dtype=dtype), ln, 1.0)
    assert float(ln) == pytest.approx(expected, rel=rtol)


def _logits_some_huge(rng, shape):
    """Logits of scale 3, one in 20 of them ±30 to ±100: where the sigmoid rounds to 0
    or 1 in float32 (and past 37, float64), so a loss taken as log(s) or log(1 - s)
    rather than from the logits shows as inf."""
    z = rng.normal(scale=3.0, size=shape)
    huge = rng.random(shape) < 0.05
    z[huge] = rng.choice([-1.0, 1.0], size=huge.sum()) * rng.uniform(30, 100, size=huge.sum())
    return z


def _loss_bias_grad_case(cpb, rng, dtype, kind, shape, gathered):
    """Fresh operands for loss_bias_grad on ``cpb``: the product z, bias b,
    targets (the rows order[offset : offset + m] of a larger set where
    gathered), NaN-filled delta and db, a loss accumulator already holding a
    value, a scale; and the same on the host."""
    m, k = shape
    n_y = 3 * m + 5 if gathered else m
    yv = rng.normal(size=(n_y, k)) if kind == "mse_identity" else rng.uniform(0, 1, size=(n_y, k))
    host = {"z": _logits_some_huge(rng, shape).astype(dtype),
            "b": rng.normal(size=k).astype(dtype), "y": yv.astype(dtype),
            "delta": np.full(shape, np.nan, dtype=dtype), "loss": np.full((), rng.uniform(1, 2)),
            "db": np.full(k, np.nan, dtype=dtype)}
    rows = None
    if gathered:
        rows = (rng.permutation(n_y).astype(np.int64), np.array([m + 3], dtype=np.int64))
    scale = float(rng.uniform(0.001, 0.1))
    dev = {name: cpb.asarray(a) for name, a in host.items()}
    dev_rows = None if rows is None else tuple(cpb.asarray(r) for r in rows)
    return dev, dev_rows, host, rows, scale


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["mse_identity", "mse_sigmoid", "bce_sigmoid"])
@pytest.mark.parametrize("gathered", [False, True])
@pytest.mark.parametrize("shape", [(517, 256), (41, 132), (3, 128), (40, 12)])   # last: narrow
@pytest.mark.parametrize("block_rows", [256, 32])
def test_loss_bias_grad(both, rng, monkeypatch, dtype, kind, gathered, shape, block_rows):
    """The output layer's bias, loss, delta and bias sums in one pass over wide
    rows (pointwise_loss_bias_grad; 40 x 12 is too narrow and takes the three
    kernels in turn), against NumPy's definition: the three passes."""
    cpb, npb = both
    monkeypatch.setattr(cpb, "_BG_BLOCK_ROWS", block_rows)
    launched = spy_kernels(monkeypatch, cpb)
    dev, dev_rows, host, rows, scale = _loss_bias_grad_case(cpb, rng, dtype, kind, shape, gathered)
    cpb.loss_bias_grad(dev["z"], dev["b"], dev["y"], kind, dev["delta"], dev["loss"], scale,
                       dev["db"], rows=dev_rows)
    npb.loss_bias_grad(host["z"], host["b"], host["y"], kind, host["delta"], host["loss"], scale,
                       host["db"], rows=rows)
    fused = any(e.startswith("pointwise_loss_bias_grad") for e in launched)
    assert fused == (shape[1] != 12), launched
    _check(cpb, dev["delta"], host["delta"], dtype)
    _check(cpb, dev["loss"], host["loss"], dtype)
    assert sum_error(cpb.to_numpy(dev["db"]), host["delta"]) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["mse_identity", "bce_sigmoid"])
@pytest.mark.parametrize("gathered", [False, True])
@pytest.mark.parametrize("block_rows", [256, 32])
def test_loss_bias_grad_is_the_three_kernels_bit_for_bit(both, rng, monkeypatch, dtype, kind,
                                                         gathered, block_rows):
    """One pass gives the bits of bias_activation, pointwise_loss and
    bias_grad (bias_grad_packed) launched in turn on the same operands, delta
    and db alike; the loss, whose blocks add up in another order, within 1e-12."""
    cpb, _ = both
    monkeypatch.setattr(cpb, "_BG_BLOCK_ROWS", block_rows)
    launched = spy_kernels(monkeypatch, cpb)
    seed = int(rng.integers(2**32))
    one, one_rows, _, _, scale = _loss_bias_grad_case(cpb, np.random.default_rng(seed), dtype, kind,
                                                      (301, 132), gathered)
    three, three_rows, _, _, _ = _loss_bias_grad_case(cpb, np.random.default_rng(seed), dtype, kind,
                                                      (301, 132), gathered)
    cpb.loss_bias_grad(one["z"], one["b"], one["y"], kind, one["delta"], one["loss"], scale,
                       one["db"], rows=one_rows)
    one_pass = (f"pointwise_loss_bias_grad<{cpb._t(dtype)}, {cpb._POINTWISE[kind]}, "
                f"{'true' if gathered else 'false'}>")
    assert launched[-2:] == [one_pass, f"bias_grad_finish<{cpb._t(dtype)}>"], launched
    cpb.bias_activation(three["z"], three["b"], "identity")
    cpb.pointwise_loss(three["z"], three["y"], kind, three["delta"], three["loss"], scale,
                       rows=three_rows)
    cpb.bias_grad(three["delta"], out=three["db"])
    assert f"bias_grad_packed<{cpb._t(dtype)}, 0, false>" in launched
    for name in ("delta", "db"):
        got = cpb.to_numpy(one[name])
        assert not np.isnan(got).any()
        np.testing.assert_array_equal(got, cpb.to_numpy(three[name]))
    np.testing.assert_allclose(cpb.to_numpy(one["loss"]), cpb.to_numpy(three["loss"]), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (256, 10), (1000, 257), (262144, 64), (999, 256)])
def test_bias_grad(both, rng, dtype, shape):
    cpb, npb = both
    dc, dn = _pair(cpb, rng.normal(size=shape).astype(dtype))
    oc, on = _pair(cpb, np.full(shape[1], np.nan, dtype=dtype))
    cpb.bias_grad(dc, out=oc)
    npb.bias_grad(dn, out=on)
    # Sums of many terms: within tolerance of the float64 sum, relative to what they add.
    tol = TOL[dtype] * (10 if dtype == "float32" and shape[0] > 10000 else 1)
    assert sum_error(cpb.to_numpy(oc), dn) < tol


def test_bias_grad_repeats_bit_for_bit(both, rng):
    """No atomics: the same delta gives the same bits, however many block rows."""
    cpb, _ = both
    delta = cpb.asarray(rng.normal(size=(262144, 64)).astype(np.float32))
    first = cpb.to_numpy(cpb.bias_grad(delta, out=cpb.xp.empty(64, dtype=np.float32)))
    for _ in range(3):
        again = cpb.to_numpy(cpb.bias_grad(delta, out=cpb.xp.empty(64, dtype=np.float32)))
        np.testing.assert_array_equal(again, first)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [5000, 3_000_001])
def test_l2_penalty(both, rng, dtype, n):
    cpb, npb = both
    wc, wn = _pair(cpb, rng.normal(size=n).astype(dtype))
    gc, gn = _pair(cpb, rng.normal(size=n).astype(dtype))
    lc, ln = _pair(cpb, np.full((), rng.uniform(1, 2)))
    cpb.l2_penalty(wc, gc, lc, 0.3, 17)
    npb.l2_penalty(wn, gn, ln, 0.3, 17)
    _check(cpb, gc, gn, dtype)
    _check(cpb, lc, ln, dtype)


@pytest.mark.parametrize("blocks_per_sm", [1, 3, 4, 8])
@pytest.mark.parametrize("activation,m,K,N", [("relu", 1000, 64, 64), ("sigmoid", 37, 19, 23),
                                              ("tanh", 130, 16, 64), ("identity", 300, 64, 16)])
def test_dense_layer_variants_are_the_same_bits(both, rng, monkeypatch, blocks_per_sm,
                                                activation, m, K, N):
    """dense_layer.cu on other grids than the default (6 blocks per SM), as
    `gpubp bench --kernels` also times it. Each block takes tiles in turn and
    each thread keeps its order of work, so activations and deltas are the same
    bits as the default's (which test_dense_forward and test_dense_backward
    check against NumPy); the column sums are within rounding."""
    cpb, _ = both
    monkeypatch.setattr(cpb, "_DL_FORWARD_MIN_N", 0)      # the kernel forward also for N <= 16
    a, w, b = (cpb.asarray(rng.normal(size=s).astype(np.float32)) for s in ((m, K), (K, N), (N,)))
    e = cpb.asarray(rng.normal(size=(m, N)).astype(np.float32))
    stored = rng.normal(size=(m, K))                      # this layer's stored activation
    if activation in ("sigmoid", "tanh"):
        stored = np.tanh(stored) if activation == "tanh" else 1 / (1 + np.exp(-stored))
    stored = cpb.asarray(stored.astype(np.float32))
    results = []
    for grid in (6, blocks_per_sm):
        monkeypatch.setattr(cpb, "_dl_blocks_per_sm", grid)
        z = cpb.dense_forward(a, w, b, activation, out=cpb.xp.full((m, N), np.nan, dtype=np.float32))
        d, db = cpb.xp.full((m, K), np.nan, dtype=np.float32), cpb.xp.empty(K, dtype=np.float32)
        cpb.dense_backward(e, w, stored, activation, out=d, db=db)
        results.append([cpb.to_numpy(x) for x in (z, d, db)])
    (z0, d0, db0), (z1, d1, db1) = results
    assert not np.isnan(z0).any() and not np.isnan(d0).any()
    np.testing.assert_array_equal(z1, z0)
    np.testing.assert_array_equal(d1, d0)
    assert sum_error(db0, d0) < TOL["float32"] and sum_error(db1, d0) < TOL["float32"]


def _placed(cpb, host, misaligned):
    """host's values on the device at a 16-byte aligned address, or one element
    past one (a view into a larger buffer, C-contiguous either way)."""
    flat = np.ascontiguousarray(host).ravel()
    buf = cpb.xp.empty(flat.size + 32, dtype=flat.dtype)
    start = next(k for k in range(16) if cpb.address(buf[k:]) % 16 == 0)
    start += 1 if misaligned else 0
    view = buf[start:start + flat.size].reshape(host.shape)
    view[...] = cpb.asarray(host)
    assert (cpb.address(view) % 16 == 0) != misaligned
    return view


def _packed_case(op, cpb, rng, dtype, misaligned):
    """Runs one backend operation that has a packed kernel on fresh operands
    (the same ones for the same seed), placed aligned or not; returns its results."""
    def put(a):
        return _placed(cpb, np.asarray(a).astype(dtype), misaligned)

    if op == "bias_activation":                          # 12 columns: 3 packs of float, 6 of double
        z, b = put(rng.normal(scale=3.0, size=(301, 12))), put(rng.normal(size=12))
        cpb.bias_activation(z, b, "sigmoid")
        return [z]
    if op == "activation_backward":                      # 1003 elements: a tail after the packs
        e, a = put(rng.normal(size=(59, 17))), put(rng.uniform(0, 1, size=(59, 17)))
        cpb.activation_backward(e, a, "sigmoid", out=e)
        return [e]
    if op in ("bias_grad", "activation_backward_bias_grad", "bias_grad_input"):   # 33 packs: wide
        e, a = put(rng.normal(size=(301, 132))), put(rng.uniform(0, 1, size=(301, 132)))
        if op == "bias_grad_input":                  # what bias_grad sums, on the host
            return cpb.to_numpy(e)
        db = put(np.zeros(132))
        if op == "bias_grad":
            return [cpb.bias_grad(e, out=db)]
        cpb.activation_backward_bias_grad(e, a, "sigmoid", out=e, db=db)
        return [e, db]
    if op == "adam":
        p, g, m = (put(rng.normal(size=4097)) for _ in range(3))
        v = put(rng.uniform(0, 2, size=4097))
        step, coef = cpb.asarray(np.array([4], dtype=np.int32)), cpb.xp.zeros(2, dtype=np.float64)
        cpb.adam_schedule(step, coef, lr=0.01, beta1=0.9, beta2=0.999)
        cpb.adam(p, g, m, v, coef, decay=0.999, beta1=0.9, beta2=0.999, eps=1e-8)
        return [p, m, v]
    assert op == "gather_rows"                           # rows of 8 elements: 32 or 64 bytes
    src, out = put(rng.normal(size=(500, 8))), put(np.zeros((64, 8)))
    order = cpb.asarray(rng.permutation(500).astype(np.int64))
    cpb.gather_rows(src, order, cpb.asarray(np.array([100], dtype=np.int64)), out)
    return [out]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["bias_activation", "activation_backward", "adam", "gather_rows",
                                "bias_grad", "activation_backward_bias_grad"])
def test_packed_kernels_are_the_same_bits_as_one_element_at_a_time(both, rng, monkeypatch, dtype, op):
    """Where every operand is 16-byte aligned, these operations take their
    packed kernels (16 bytes per access: gpubp_pack in kernels/common.cuh);
    where one is not, the kernels that move one element at a time. Each gives
    the same bits, whatever the tail past the last whole pack; column sums
    (bias_grad.cu's packed kernel adds in another order) within rounding.
    test_bias_activation and the others check the packed kernels against
    NumPy, where operands are aligned."""
    cpb, _ = both
    chosen = []
    packed = cpb._packed
    monkeypatch.setattr(cpb, "_packed", lambda *arrays: chosen.append(packed(*arrays)) or chosen[-1])
    seed = int(rng.integers(2**32))
    results = []
    for misaligned in (False, True):
        chosen.clear()
        got = _packed_case(op, cpb, np.random.default_rng(seed), dtype, misaligned)
        assert chosen[:1] == [not misaligned], chosen
        results.append([cpb.to_numpy(x) for x in got])
    (fast, slow) = results
    sums = op.endswith("bias_grad")
    for f, s in zip(fast[:-1] if sums else fast, slow[:-1] if sums else slow):
        assert not np.isnan(f).any()
        np.testing.assert_array_equal(f, s)
    if sums:
        delta = slow[0] if op != "bias_grad" else None
        if delta is None:
            delta = _packed_case("bias_grad_input", cpb, np.random.default_rng(seed), dtype, False)
        assert sum_error(fast[-1], delta) < TOL[dtype]
        assert sum_error(slow[-1], delta) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_kernel(both, rng, dtype, momentum, nesterov):
    cpb, npb = both
    pc, pn = _pair(cpb, rng.normal(size=3001).astype(dtype))
    gc, gn = _pair(cpb, rng.normal(size=3001).astype(dtype))
    bc, bn = _pair(cpb, rng.normal(size=3001).astype(dtype))
    cpb.sgd(pc, gc, bc, 0.05, momentum, nesterov)
    npb.sgd(pn, gn, bn, 0.05, momentum, nesterov)
    _check(cpb, pc, pn, dtype)
    _check(cpb, bc, bn, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decay", [1.0, 0.999])
def test_adam_kernel(both, rng, dtype, decay):
    cpb, npb = both
    arrays = [rng.normal(size=3001) for _ in range(3)] + [rng.uniform(0, 2, size=3001)]
    (pc, pn), (gc, gn), (mc, mn), (vc, vn) = [_pair(cpb, a.astype(dtype)) for a in arrays]
    stepc, stepn = _pair(cpb, np.array([2], dtype=np.int32))      # two steps already taken
    coefc, coefn = _pair(cpb, np.full(2, np.nan))
    args = dict(decay=decay, beta1=0.9, beta2=0.999, eps=1e-8)
    cpb.adam_schedule(stepc, coefc, lr=0.01, beta1=0.9, beta2=0.999)
    npb.adam_schedule(stepn, coefn, lr=0.01, beta1=0.9, beta2=0.999)
    cpb.adam(pc, gc, mc, vc, coefc, **args)
    npb.adam(pn, gn, mn, vn, coefn, **args)
    assert int(stepc[0]) == int(stepn[0]) == 3
    _check(cpb, coefc, coefn, "float64")
    for c, n in ((pc, pn), (mc, mn), (vc, vn)):
        _check(cpb, c, n, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32"])
@pytest.mark.parametrize("cols,n,m", [(1, 1000, 37), (7, 1000, 37), (64, 1000, 37),
                                      (777, 7000, 2000)])      # the last strides the grid
def test_gather_rows_and_advance(both, rng, dtype, cols, n, m):
    cpb, npb = both
    src = (rng.normal(size=(n, cols)) * 100).astype(dtype)
    if cols == 1 and dtype == "int32":
        src = src[:, 0].copy()                                   # labels are 1-D
    order = rng.permutation(n).astype(np.int64)
    sc, sn = _pair(cpb, src)
    oc, on = _pair(cpb, order)
    offc, offn = _pair(cpb, np.array([0], dtype=np.int64))
    for _ in range(3):
        outc = cpb.xp.empty((m,) + src.shape[1:], dtype=dtype)
        outn = np.empty((m,) + src.shape[1:], dtype=dtype)
        cpb.gather_rows(sc, oc, offc, outc)
        npb.gather_rows(sn, on, offn, outn)
        np.testing.assert_array_equal(cpb.to_numpy(outc), outn)
        cpb.advance_offset(offc, m)
        npb.advance_offset(offn, m)
    assert int(offc[0]) == int(offn[0]) == 3 * m


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transa,transb", [(False, False), (True, False), (False, True)])
def test_matmul_seam(both, rng, dtype, transa, transb):
    cpb, npb = both
    a = rng.normal(size=(31, 17) if not transa else (17, 31)).astype(dtype)
    b = rng.normal(size=(17, 9) if not transb else (9, 17)).astype(dtype)
    ac, an = _pair(cpb, a)
    bc, bn = _pair(cpb, b)
    oc, on = _pair(cpb, np.full((31, 9), np.nan, dtype=dtype))
    cpb.matmul(ac, bc, out=oc, transa=transa, transb=transb)
    npb.matmul(an, bn, out=on, transa=transa, transb=transb)
    _check(cpb, oc, on, dtype)


@requires_cupy
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fused_and_unfused_gpu_paths_train_alike(rng, activation):
    """The benchmarks' unfused baseline (the NumPy definitions on CuPy arrays)
    trains to the same parameters as the fused kernels."""
    import gpubp
    from gpubp.backends import plain_cupy_backend

    X, y = rng.normal(size=(64, 6)), rng.integers(0, 3, size=64)
    params = []
    for backend in (get_backend("cupy"), plain_cupy_backend()):
        model = gpubp.MLP([6, 9, 3], activation=activation, backend=backend, dtype="float64", seed=1)
        gpubp.Trainer(model, batch_size=10, l2=0.1).fit(X, y, epochs=3)
        params.append(model.backend.to_numpy(model.params))
    np.testing.assert_allclose(params[0], params[1], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("output,loss", PAIRS)
def test_emulated_kernels_train_like_numpy(rng, activation, output, loss):
    """The whole CuPy step (the trainer's gather at a device offset, every fused
    kernel, Adam's device step count), its kernels emulated on the CPU, ends
    where the NumPy backend does: float64, L2, a partial last batch."""
    import gpubp

    emulated = emulated_backend()
    n = 45                                             # batches of 8 and a last one of 5
    X = rng.normal(size=(n, 6))
    Y = random_targets(rng, n, 3, output, loss, labels=loss == "cross_entropy")
    results = []
    for backend in (emulated, get_backend("numpy")):
        model = gpubp.MLP([6, 7, 5, 3], activation=activation, output=output, backend=backend,
                          dtype="float64", seed=4)
        h = gpubp.Trainer(model, loss=loss, optimizer=gpubp.optim.AdamW(1e-2), batch_size=8,
                          l2=0.1, seed=9).fit(X, Y, epochs=2, validation_data=(X[:9], Y[:9]))
        results.append((np.asarray(model.params), h))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-10, atol=1e-12)
    for key in results[1][1]:
        np.testing.assert_allclose(results[0][1][key], results[1][1][key], rtol=1e-10)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_emulated_narrow_float32_layers_train_like_numpy(rng, activation):
    """float32 and layers at most 64 wide: every layer through kernels/dense_layer.cu
    (emulated), in graph mode, within float32 rounding of the NumPy backend (on
    inputs whose training stays clear of relu's kink: _helpers.away_from_kinks)."""
    import gpubp

    def train(data, backend):
        model = gpubp.MLP([64, 64, 64, 16], activation=activation, backend=backend, seed=4)
        gpubp.Trainer(model, optimizer=gpubp.optim.SGD(0.05, momentum=0.9), batch_size=128,
                      l2=0.01, seed=9).fit(*data, epochs=3)
        return np.asarray(model.params)

    def draw(rng):
        return rng.normal(size=(300, 64)).astype(np.float32), rng.integers(0, 16, size=300)

    data, reference = away_from_kinks(rng, activation, draw, train)
    assert max_rel_error(train(data, emulated_backend()), reference) < 1e-4


# -- the emulation's own checks --------------------------------------------------------

def test_emulation_stops_a_kernel_that_reads_or_writes_past_an_array(rng):
    """What a GPU would not show (or would show by killing its context): an access
    past either end of an array a kernel is handed. Each eager launch gets copies
    flush against a page the process may not touch: past the end in index order,
    before the start in reverse order. The launch after a fault runs normally."""
    from _cuda_emulator import EmulationError

    d = rng.normal(size=(37, 5)).astype(np.float32)
    out = np.empty(5, dtype=np.float32)
    forward = emulated_backend()._kernels.function("bias_grad", "bias_grad_partial<float>")
    with pytest.raises(EmulationError, match=r"a read at byte 740 of argument 0, float32\[37, 5\]"):
        forward((1, 1), (32, 8), (d, out, np.int32(38), np.int32(5)))     # one row too many
    with pytest.raises(EmulationError, match=r"a write at byte 16 of argument 1, float32\[4\]"):
        forward((1, 1), (32, 8), (d, out[:4], np.int32(37), np.int32(5)))
    forward((1, 1), (32, 8), (d, out, np.int32(37), np.int32(5)))
    assert sum_error(out, d) < 1e-5

    reverse = emulated_backend(sms=7, reverse_order=True)._kernels.function(
        "gather_rows", "gather_rows<float>")
    order = rng.permutation(37).astype(np.int64)
    order[3] = -1                                                         # a row before the first
    offset, xb = np.zeros(1, dtype=np.int64), np.empty((8, 5), dtype=np.float32)
    with pytest.raises(EmulationError, match=r"a read at byte -(4|8|12|16|20) of argument 0"):
        reverse((1, 1), (8, 32), (d, order, offset, xb, np.int32(8), np.int32(5)))


def test_emulation_checks_each_argument_against_the_kernels_parameters(rng):
    """A Python float where the kernel takes a float32 (CuPy would pass a double),
    or an argument too few, is an error here; on a GPU the kernel reads wrong bytes."""
    from _cuda_emulator import EmulationError

    adam = emulated_backend()._kernels.function("adam", "adam<float>")
    p, g, m, v = (rng.normal(size=10).astype(np.float32) for _ in range(4))
    coef = np.array([1e-3, 0.5])
    with pytest.raises(EmulationError, match="argument 6 is float"):
        adam((1,), (32,), (p, g, m, v, coef, np.int64(10), 1.0, np.float32(0.9),
                           np.float32(0.999), np.float32(1e-8)))
    with pytest.raises(EmulationError, match="takes 10 arguments; got 9"):
        adam((1,), (32,), (p, g, m, v, coef, np.int64(10), np.float32(1), np.float32(0.9),
                           np.float32(0.999)))
