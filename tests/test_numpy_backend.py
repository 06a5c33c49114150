"""The NumPy backend's own forms of its operations: the column sums (the bias
gradients) as the product ones @ delta, the relu derivative as a byte mask, the
passes chunk by chunk, and the fused loops compiled by Numba (numba_loops.py),
which must give the passes' results bit for bit."""

import os
from pathlib import Path

import numpy as np
import pytest
from _helpers import away_from_kinks, sum_error

from gpubp.backends.numpy_backend import NumpyBackend

# Measured: at most 7e-8 (float32) and 3e-16 (float64) over these shapes; NumPy's
# sum over axis 0, which this replaced, 2e-7 in float32.
TOL = {"float32": 1e-6, "float64": 1e-14}
SHAPES = [(1, 1), (256, 10), (999, 257), (1024, 1024), (262144, 64)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES)
def test_bias_grad_is_the_float64_column_sum(rng, dtype, shape):
    """Within a few roundings of the float64 sums, relative to the magnitudes they add."""
    backend = NumpyBackend()
    for _ in range(2):                      # the second call reuses the work array of ones
        delta = rng.normal(size=shape).astype(dtype)
        out = np.full(shape[1], np.nan, dtype=dtype)
        assert backend.bias_grad(delta, out=out) is out
        assert sum_error(out, delta) < TOL[dtype]


def test_bias_grad_repeats_bit_for_bit(rng):
    backend = NumpyBackend()
    delta = rng.normal(size=(262144, 64)).astype(np.float32)
    first = backend.bias_grad(delta, out=np.empty(64, dtype=np.float32)).copy()
    for _ in range(3):
        np.testing.assert_array_equal(backend.bias_grad(delta, out=np.empty(64, dtype=np.float32)), first)


def test_bias_grad_of_no_rows_is_zero():
    out = np.full(5, np.nan, dtype=np.float32)
    NumpyBackend().bias_grad(np.empty((0, 5), dtype=np.float32), out=out)
    np.testing.assert_array_equal(out, np.zeros(5))


@pytest.mark.parametrize("loops", ["passes", "loops"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_relu_backward_through_a_byte_mask_is_err_times_the_step(rng, dtype, loops):
    """err * [a > 0] exactly as multiplying by a float 0/1 gives it, signed zeros
    and NaN in err included, in place too; the mask is reused from call to call.
    The same of the fused loop."""
    backend = NumpyBackend(loops=None) if loops == "passes" else NumpyBackend(loops=_numba_loops())
    for _ in range(2):
        a = np.maximum(rng.normal(size=(300, 70)), 0).astype(dtype)      # about half zeros
        err = rng.normal(size=a.shape).astype(dtype)
        err[0, :5] = [np.nan, -0.0, 0.0, np.inf, -np.inf]
        a[0, :5] = [1.0, 1.0, 0.0, 0.0, 2.0]
        out = np.full_like(a, np.nan)
        with np.errstate(invalid="ignore"):                             # inf * 0, as before
            expected = err * (a > 0).astype(dtype)
            assert backend.activation_backward(err, a, "relu", out=out) is out
            np.testing.assert_array_equal(out, expected)
            assert np.signbit(out[0, 1]) and np.isnan(out[0, 3])      # -0 * 1; inf * 0
            backend.activation_backward(err, a, "relu", out=err)        # in place
        np.testing.assert_array_equal(err, expected)


class _Passes(NumpyBackend):
    """NumPy's passes, never the fused loops."""

    def __init__(self):
        super().__init__(loops=None)


class _OnePass(_Passes):
    PASS_CHUNK = None


def _numba_loops():
    pytest.importorskip("numba")            # in the test extra; optional for users
    from gpubp.backends import numba_loops
    return numba_loops


class _CountedLoops:
    """numba_loops, counting the calls of each loop (so that a test knows the
    loops ran, and did not fall back to the passes)."""

    def __init__(self):
        self._loops, self.calls = _numba_loops(), {}
        self.BACKWARD = {k: self._counted(fn) for k, fn in self._loops.BACKWARD.items()}

    def _counted(self, fn):
        def call(*args):
            self.calls[fn.__name__] = self.calls.get(fn.__name__, 0) + 1
            return fn(*args)
        return call

    def __getattr__(self, name):
        return self._counted(getattr(self._loops, name))


def _optimizer_state(rng, n, dtype):
    p, g, buf, m = (rng.normal(size=n).astype(dtype) for _ in range(4))
    v = (rng.normal(size=n) ** 2).astype(dtype)
    return p, g, buf, m, v


@pytest.mark.parametrize("chunk", [7, NumpyBackend.PASS_CHUNK])
@pytest.mark.parametrize("n", [1, 6, 7, 8, 65535, 65536, 65537, 200003])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_optimizers_chunk_by_chunk_change_no_bit(rng, chunk, n, dtype):
    """Every element goes through the same passes in the same order, chunked or
    not: Adam, AdamW, SGD with and without (Nesterov) momentum, three steps each."""
    class Chunked(_Passes):
        PASS_CHUNK = chunk
    state = _optimizer_state(rng, n, dtype)
    runs = {}
    for backend in (Chunked(), _OnePass()):
        p, g, buf, m, v = (a.copy() for a in state)
        step, coef = np.zeros(1, np.int32), np.zeros(2)
        sgd_p = p.copy()
        for decay, momentum, nesterov in [(1.0, 0.0, False), (0.999, 0.9, False), (1.0, 0.9, True)]:
            backend.adam_schedule(step, coef, 1e-3, 0.9, 0.999)
            backend.adam(p, g, m, v, coef, decay=decay, beta1=0.9, beta2=0.999, eps=1e-8)
            backend.sgd(sgd_p, g, None if momentum == 0.0 else buf, 0.05, momentum, nesterov)
        runs[backend.PASS_CHUNK] = (p, m, v, sgd_p, buf)
    for chunked, whole in zip(runs[chunk], runs[None]):
        np.testing.assert_array_equal(chunked, whole)
    assert not np.array_equal(runs[chunk][0], state[0])          # the steps did move p


def test_optimizers_chunk_by_chunk_reuse_one_work_array(rng):
    """A step allocates nothing after its first: the chunks share one work array."""
    backend = _Passes()
    p, g, buf, m, v = _optimizer_state(rng, 3 * NumpyBackend.PASS_CHUNK + 5, "float32")
    coef = np.array([1e-3, 0.5])
    backend.adam(p, g, m, v, coef, decay=1.0, beta1=0.9, beta2=0.999, eps=1e-8)
    backend.sgd(p, g, buf, 0.05, 0.9, False)
    held = {id(a) for a in backend._work.live()}
    assert len(held) == 1
    backend.adam(p, g, m, v, coef, decay=1.0, beta1=0.9, beta2=0.999, eps=1e-8)
    backend.sgd(p, g, buf, 0.05, 0.9, True)
    assert {id(a) for a in backend._work.live()} == held


@pytest.mark.parametrize("k", [1, 2, 10, 16, 17, 100])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_row_max_and_row_sum(rng, k, dtype):
    """The short-row forms: maxima exactly NumPy's (NaN included), sums within
    a few roundings of float64's; softmax rows then sum to 1."""
    backend = NumpyBackend()
    z = rng.normal(scale=3.0, size=(300, k)).astype(dtype)
    z[7, k // 2] = np.nan
    out = np.full((300, 1), -1.0, dtype=dtype)
    assert backend._row_max(z, out=out) is out
    np.testing.assert_array_equal(out[:, 0], z.max(axis=1))
    z[7, k // 2] = 1.0
    assert backend._row_sum(z, out=out) is out
    exact = z.astype(np.float64).sum(axis=1)
    scale = np.abs(z.astype(np.float64)).sum(axis=1)
    assert np.max(np.abs(out[:, 0] - exact) / scale) < TOL[dtype]
    p = backend.softmax(z, out=np.empty_like(z))
    ref = np.exp(z.astype(np.float64) - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(p, ref / ref.sum(axis=1, keepdims=True), rtol=TOL[dtype] * 10,
                               atol=TOL[dtype])


@pytest.mark.parametrize("activation", ["identity", "sigmoid", "tanh", "relu", "leaky_relu"])
@pytest.mark.parametrize("shape", [(0, 5), (1, 3), (37, 5), (300, 64), (2100, 40)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_activations_block_by_block_change_no_bit(rng, activation, shape, dtype):
    """Forward (bias + g) and backward (err * g') by blocks of rows, out of
    place and in place, are the one-pass results bit for bit (blocks of 7
    elements, so of one row where rows are wider, and the default)."""
    class Blocks(_Passes):
        PASS_CHUNK = 7
    z = rng.normal(size=shape).astype(dtype)
    b = rng.normal(size=shape[1]).astype(dtype)
    err = rng.normal(size=shape).astype(dtype)
    whole = _OnePass()
    a_ref = whole.bias_activation(z.copy(), b, activation)
    d_ref = whole.activation_backward(err, a_ref, activation, out=np.empty_like(z))
    for backend in (Blocks(), _Passes()):
        a = backend.bias_activation(z.copy(), b, activation)
        np.testing.assert_array_equal(a, a_ref)
        np.testing.assert_array_equal(backend.activation_backward(err, a, activation, out=np.empty_like(z)), d_ref)
        e = err.copy()
        assert backend.activation_backward(e, a, activation, out=e) is e
        np.testing.assert_array_equal(e, d_ref)


def test_plain_cupys_own_forms_agree_with_numpys(rng):
    """PlainCupyBackend's one pass per operation and its plain reductions (what it
    runs on CuPy), here on NumPy arrays, against the NumPy backend's forms."""
    from gpubp.backends.cupy_backend import PlainCupyBackend

    class Plain(_Passes):
        PASS_CHUNK = PlainCupyBackend.PASS_CHUNK
        bias_grad = PlainCupyBackend.bias_grad
        _row_max = PlainCupyBackend._row_max
        _row_sum = PlainCupyBackend._row_sum
    plain, numpy = Plain(), NumpyBackend()
    z = rng.normal(scale=3.0, size=(300, 10)).astype(np.float32)
    labels = rng.integers(0, 10, size=300)
    y = rng.uniform(size=z.shape).astype(np.float32)
    for target in ({"y": None, "labels": labels}, {"y": y, "labels": None}):
        out = []
        for backend in (plain, numpy):
            loss = np.zeros(1)
            delta = backend.softmax_cross_entropy(z, target["y"], target["labels"],
                                                  np.empty_like(z), loss, np.float32(0.5))
            out.append((delta, loss))
        # float32, row sums added in another order: a few roundings of values near 1
        np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-5, atol=2e-6)
        np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-5)
    np.testing.assert_allclose(plain.softmax(z, np.empty_like(z)), numpy.softmax(z, np.empty_like(z)),
                               rtol=1e-5, atol=2e-6)
    a = np.maximum(rng.normal(size=(300, 64)), 0).astype(np.float32)
    assert sum_error(plain.bias_grad(a, out=np.empty(64, np.float32)), a) < TOL["float32"]
    assert plain._chunks(5000, per=64) == [(0, 5000)]
    assert numpy._chunks(5000, per=64) == [(0, 1024), (1024, 2048), (2048, 3072), (3072, 4096), (4096, 5000)]
    np.testing.assert_array_equal(plain.activation_backward(z[:, :1].repeat(64, 1), a, "relu", np.empty_like(a)),
                                  numpy.activation_backward(z[:, :1].repeat(64, 1), a, "relu", np.empty_like(a)))


# -- the fused loops (numba_loops.py) against the passes, bit for bit ---------------------

def _special(a, rng):
    """Signed zeros, infinities and NaN at random places of a (more than one of each)."""
    flat = a.reshape(-1)
    for value in (0.0, -0.0, np.inf, -np.inf, np.nan)[:flat.size]:
        flat[rng.integers(0, flat.size, size=max(1, flat.size // 50))] = value
    return a


def _same_bits(x, y):
    """Equal, NaN where NaN, and zeros of the same sign."""
    np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(np.signbit(x), np.signbit(y))


@pytest.mark.parametrize("n", [1, 7, 31, 1000, 269322])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_optimizers_are_the_passes_bit_for_bit(rng, n, dtype):
    """Adam, AdamW, SGD, with momentum and with Nesterov's, three steps each,
    from the same state: every parameter and moment the same bits."""
    fused, passes = NumpyBackend(loops=_CountedLoops()), _Passes()
    state = _optimizer_state(rng, n, dtype)
    runs = []
    for backend in (fused, passes):
        p, g, buf, m, v = (a.copy() for a in state)
        step, coef = np.zeros(1, np.int32), np.zeros(2)
        sgd_p = p.copy()
        for decay, momentum, nesterov in [(1.0, 0.0, False), (0.999, 0.9, False), (1.0, 0.9, True),
                                          (0.99, 0.5, True)]:
            backend.adam_schedule(step, coef, 1e-3, 0.9, 0.999)
            backend.adam(p, g, m, v, coef, decay=decay, beta1=0.9, beta2=0.999, eps=1e-8)
            backend.sgd(sgd_p, g, None if momentum == 0.0 else buf, 0.05, momentum, nesterov)
        runs.append((p, m, v, sgd_p, buf))
    for x, y in zip(*runs):
        _same_bits(x, y)
    assert not np.array_equal(runs[0][0], state[0])
    assert fused.loops.calls == {"adam": 4, "sgd": 1, "sgd_momentum": 3}


def test_fused_adam_keeps_infinities_and_nan_as_the_passes_do(rng):
    fused, passes = NumpyBackend(loops=_numba_loops()), _Passes()
    p, g, _, m, v = _optimizer_state(rng, 5000, "float32")
    g = _special(g, rng)
    v[:10] = 0.0                                        # sqrt(0) / c + eps: no division by 0
    out = []
    for backend in (fused, passes):
        q, mm, vv = p.copy(), m.copy(), v.copy()
        with np.errstate(invalid="ignore", over="ignore"):
            backend.adam(q, g, mm, vv, np.array([1e-3, 0.03]), decay=0.999, beta1=0.9, beta2=0.999, eps=1e-8)
        out.append((q, mm, vv))
    for x, y in zip(*out):
        _same_bits(x, y)
    assert np.isnan(out[0][0]).any() and np.isfinite(out[0][0]).any()


@pytest.mark.parametrize("activation", ["identity", "sigmoid", "tanh", "relu", "leaky_relu"])
@pytest.mark.parametrize("shape", [(0, 5), (1, 3), (37, 5), (300, 64), (2100, 40)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_activations_are_the_passes_bit_for_bit(rng, activation, shape, dtype):
    """bias + g forward (the loops take relu and leaky relu) and err * g'
    backward, out of place and in place, with signed zeros, infinities and NaN
    among the inputs: the same bits as NumPy's passes (np.maximum's choice of
    zero's sign included)."""
    fused, passes = NumpyBackend(loops=_CountedLoops()), _Passes()
    z = _special(rng.normal(size=shape).astype(dtype), rng)
    b = rng.normal(size=shape[1]).astype(dtype)
    b[:2] = [-0.0, 0.0][:shape[1]]
    err = _special(rng.normal(size=shape).astype(dtype), rng)
    with np.errstate(invalid="ignore", over="ignore"):
        a_ref = passes.bias_activation(z.copy(), b, activation)
        a = fused.bias_activation(z.copy(), b, activation)
        _same_bits(a, a_ref)
        a = _special(rng.uniform(-1.5, 1.5, size=shape).astype(dtype), rng)
        d_ref = passes.activation_backward(err, a, activation, out=np.empty_like(z))
        _same_bits(fused.activation_backward(err, a, activation, out=np.empty_like(z)), d_ref)
        e = err.copy()
        assert fused.activation_backward(e, a, activation, out=e) is e
        _same_bits(e, d_ref)
    expected = set() if activation == "identity" else {f"{activation}_backward"}
    if activation in ("relu", "leaky_relu"):
        expected.add(f"bias_{activation}")
    if activation == "sigmoid" and shape[0] > 0:                 # (no block of rows: no call)
        expected |= {"bias_half", "half_plus_half"}
    assert set(fused.loops.calls) == expected


def test_fused_loops_leave_strided_arrays_and_other_dtypes_to_the_passes(rng):
    """A column slice (not C-contiguous) or a float16 array goes through NumPy's
    passes with the same results."""
    fused, passes = NumpyBackend(loops=_numba_loops()), _Passes()
    base = rng.normal(size=(50, 40)).astype(np.float32)
    err, a = base[:, ::2], rng.uniform(size=(50, 20)).astype(np.float32)
    _same_bits(fused.activation_backward(err, a, "sigmoid", out=np.empty_like(a)),
               passes.activation_backward(err, a, "sigmoid", out=np.empty_like(a)))
    z16, b16 = base.astype(np.float16), rng.normal(size=40).astype(np.float16)
    _same_bits(fused.bias_activation(z16.copy(), b16, "relu"), passes.bias_activation(z16.copy(), b16, "relu"))


def _train_both_ways(rng, activation, optimizer, output, loss):
    """Three epochs from the same start with the loops and with the passes, on
    inputs that keep the loops' training clear of relu's kink
    (_helpers.away_from_kinks): the parameters at the end of each, and the
    loops' calls."""
    from gpubp import MLP, Trainer

    def draw(rng):
        X = rng.normal(size=(300, 12)).astype(np.float32)
        Y = (rng.integers(0, 4, size=300) if loss == "cross_entropy"
             else rng.normal(size=(300, 4)).astype(np.float32))
        return X, Y

    def train(data, backend):
        model = MLP((12, 32, 16, 4), activation, output, backend=backend, seed=3)
        Trainer(model, loss=loss, optimizer=optimizer(), batch_size=32, seed=1, l2=1e-3).fit(*data, epochs=3)
        return model.get_params()

    loops = _CountedLoops()

    def with_loops():
        loops.calls.clear()                         # the last draw's calls only
        return NumpyBackend(loops=loops)

    data, ends = away_from_kinks(rng, activation, draw, train, make_backend=with_loops)
    return (ends, train(data, _Passes())), loops.calls


_TRAININGS = [("relu", "adamw"), ("leaky_relu", "nesterov"), ("sigmoid", "adamw"), ("tanh", "momentum")]


def _optimizer(name):
    from gpubp.optim import SGD, AdamW
    return {"adamw": lambda: AdamW(3e-3, weight_decay=0.01),
            "nesterov": lambda: SGD(0.05, momentum=0.9, nesterov=True),
            "momentum": lambda: SGD(0.05, momentum=0.9)}[name]


@pytest.mark.parametrize("activation, optimizer", _TRAININGS)
def test_training_with_the_fused_loops_ends_with_the_same_parameters(rng, activation, optimizer):
    """Whole epochs on both forms of the CPU path (identity output and mean
    squared error, whose delta the loop gives bit for bit): relu, leaky relu,
    sigmoid and tanh layers, AdamW and SGD with (Nesterov) momentum; the same
    bits at the end."""
    (ends, ref), calls = _train_both_ways(rng, activation, _optimizer(optimizer), "identity", "mse")
    for (w, b), (w_ref, b_ref) in zip(ends, ref):
        _same_bits(w, w_ref)
        _same_bits(b, b_ref)
        assert np.isfinite(w).all()
    assert calls.get(f"{activation}_backward", 0) > 0 and calls.get("mse_identity", 0) > 0
    assert calls.get("adam" if optimizer == "adamw" else "sgd_momentum", 0) > 0


@pytest.mark.parametrize("activation, optimizer", _TRAININGS)
def test_training_with_the_fused_cross_entropy_ends_near_the_passes(rng, activation, optimizer):
    """With softmax and cross-entropy, whose loop rounds a little differently,
    three epochs (30 steps) end within float32 rounding of the passes' parameters."""
    (ends, ref), calls = _train_both_ways(rng, activation, _optimizer(optimizer), "softmax", "cross_entropy")
    for (w, b), (w_ref, b_ref) in zip(ends, ref):
        np.testing.assert_allclose(w, w_ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b, b_ref, rtol=1e-4, atol=1e-5)
    assert calls.get("softmax_cross_entropy_labels", 0) > 0


def test_the_fused_loops_are_optional(monkeypatch):
    """Without Numba, or with GPUBP_NUMBA=0, the NumPy backend makes its passes."""
    import sys

    from gpubp.backends.numpy_backend import numba_loops
    monkeypatch.setenv("GPUBP_NUMBA", "0")
    assert numba_loops() is None and NumpyBackend().loops is None
    monkeypatch.delenv("GPUBP_NUMBA")
    monkeypatch.setitem(sys.modules, "numba", None)               # import numba fails
    monkeypatch.delitem(sys.modules, "gpubp.backends.numba_loops", raising=False)
    monkeypatch.delattr("gpubp.backends.numba_loops", raising=False)
    assert numba_loops() is None and NumpyBackend().loops is None


def test_the_fused_loops_work_where_nothing_can_be_cached(tmp_path):
    """Where Numba finds no writable place for its cache (a read-only install, no
    home directory), the loops still compile, each process anew."""
    import subprocess
    import sys
    _numba_loops()
    code = (
        "import numba.core.caching as c; c.CacheImpl._locator_classes = []\n"
        "import numpy as np\n"
        "from gpubp.backends.numpy_backend import NumpyBackend\n"
        "b = NumpyBackend(); assert b.loops is not None\n"
        "p = np.ones(5, np.float32); b.sgd(p, np.ones(5, np.float32), None, 0.25, 0.0, False)\n"
        "print(p.tolist())\n")
    import gpubp
    root = str(Path(gpubp.__file__).parent.parent)
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": root, "GPUBP_NUMBA": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0.75, 0.75, 0.75, 0.75, 0.75]"


def _softmax_ce_float64(z, y, labels, scale):
    """delta and loss of softmax + cross-entropy in float64, and their scales:
    per row scale (1 + sum_j y_ij), and sum_ij y_ij (|z_ij| + |lse_i|)."""
    z = z.astype(np.float64)
    y = np.eye(z.shape[1])[labels] if y is None else y.astype(np.float64)
    zmax = z.max(axis=1, keepdims=True)
    lse = zmax + np.log(np.exp(z - zmax).sum(axis=1, keepdims=True))
    ysum = y.sum(axis=1, keepdims=True)
    delta = (np.exp(z - lse) * ysum - y) * scale
    return delta, (y * (lse - z)).sum(), scale * (1 + ysum), (y * (np.abs(z) + np.abs(lse))).sum()


# Measured over 300 seeds of these shapes, the worse of the two forms: delta within
# 8.9e-7 (float32) and 7.3e-15 (float64) of its row scale, loss within 6.1e-8 and
# 9.8e-15 of its scale.
CE_TOL = {"float32": 4e-6, "float64": 4e-14}


@pytest.mark.parametrize("k", [1, 2, 10, 17, 100])
@pytest.mark.parametrize("target", ["labels", "dense"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_softmax_cross_entropy_against_float64(rng, k, target, dtype):
    """The fused loop (libm's exp and log, sums left to right) and NumPy's passes
    each within CE_TOL of float64, relative to the scale of what they sum."""
    loops = _CountedLoops()
    for _ in range(3):
        m = int(rng.integers(1, 300))
        z = rng.normal(size=(m, k)) * rng.uniform(0.1, 20)
        # A quarter of the rows with one logit 1000 above the rest, in any column (the
        # last included): exp overflows in both dtypes unless the row's true max is taken.
        lifted = np.flatnonzero(rng.random(m) < 0.25)
        z[lifted, rng.integers(0, k, size=lifted.size)] += 1000.0
        z = z.astype(dtype)
        labels = rng.integers(0, k, size=m)
        y = None if target == "labels" else rng.uniform(size=(m, k)).astype(dtype)
        ref, ref_loss, row_scale, loss_scale = _softmax_ce_float64(z, y, labels, 0.5)
        for backend in (NumpyBackend(loops=loops), _Passes()):
            loss = np.zeros(1)
            delta = backend.softmax_cross_entropy(z, y, None if y is not None else labels,
                                                  np.full_like(z, np.nan), loss, 0.5)
            assert np.max(np.abs(delta - ref) / row_scale) < CE_TOL[dtype]
            assert abs(loss[0] - ref_loss) < CE_TOL[dtype] * loss_scale
    assert set(loops.calls) == {f"softmax_cross_entropy_{target}"}


def test_fused_softmax_cross_entropy_keeps_nan_and_infinite_logits_as_the_passes_do(rng):
    """A row with a NaN logit is NaN throughout; with +inf the max is inf (and the
    row NaN); large logits do not overflow. Same places as the passes."""
    z = rng.normal(size=(6, 10)).astype(np.float32)
    z[1, 3], z[2, 0], z[3, 9], z[4] = np.nan, np.inf, -np.inf, 80.0
    labels = np.arange(6) % 10
    out = []
    for backend in (NumpyBackend(loops=_numba_loops()), _Passes()):
        loss = np.zeros(1)
        with np.errstate(invalid="ignore"):
            out.append(backend.softmax_cross_entropy(z, None, labels, np.empty_like(z), loss, 1.0))
    np.testing.assert_array_equal(np.isnan(out[0]), np.isnan(out[1]))
    assert np.isfinite(out[0][[0, 3, 4, 5]]).all()
    np.testing.assert_allclose(out[0][[0, 3, 4, 5]], out[1][[0, 3, 4, 5]], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_mse_is_the_passes_delta_and_a_float64_sum(rng, dtype):
    """delta = (z - y) scale bit for bit; the loss a float64 sum of the same
    squares (in another order: within 1e-12 relative)."""
    loops = _CountedLoops()
    for shape in [(1, 1), (257, 16), (4096, 64)]:
        z, y = (rng.normal(size=shape).astype(dtype) for _ in range(2))
        out = []
        for backend in (NumpyBackend(loops=loops), _Passes()):
            loss = np.zeros(1)
            delta = backend.pointwise_loss(z, y, "mse_identity", np.empty_like(z), loss, 0.25)
            out.append((delta, loss[0]))
        _same_bits(out[0][0], out[1][0])
        assert abs(out[0][1] - out[1][1]) <= 1e-12 * out[1][1]
        exact = 0.5 * ((z.astype(np.float64) - y) ** 2).sum()
        # float32: each square rounded (6e-8); float64: sums of 262144 terms in two
        # orders (at most n eps = 3e-11, measured 1.1e-14)
        assert abs(out[0][1] - exact) <= (1e-6 if dtype == "float32" else 1e-12) * exact
    assert set(loops.calls) == {"mse_identity"}


class _DeviceOffset(np.ndarray):
    """An offset that may not be read back: indexing it fails, as a host read
    of a CuPy array would cost a wait for the GPU."""

    def __getitem__(self, key):
        raise AssertionError("the offset was read back")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_unfused_gpu_gather_keeps_the_offset_on_the_device(rng, dtype):
    """PlainCupyBackend.gather_rows (the unfused GPU path's gather, which must not
    read the offset back), run here on NumPy arrays: the rows NumpyBackend.gather_rows
    takes, batch after batch, a partial last batch included."""
    from gpubp.backends.cupy_backend import PlainCupyBackend

    backend = NumpyBackend(loops=None)
    n, cols = 50, 7
    src = rng.normal(size=(n, cols)).astype(dtype)
    order = rng.permutation(n)
    offset = np.zeros(1, dtype=np.int64)
    on_device = np.zeros(1, dtype=np.int64).view(_DeviceOffset)
    for m in (16, 16, 16, 2):
        expected = np.empty((m, cols), dtype=dtype)
        backend.gather_rows(src, order, offset, expected)
        out = np.full((m, cols), np.nan, dtype=dtype)
        PlainCupyBackend.gather_rows(backend, src, order, on_device, out)
        np.testing.assert_array_equal(out, expected)
        backend.advance_offset(offset, m)
        backend.advance_offset(on_device, m)
    assert np.asarray(on_device).item() == n
