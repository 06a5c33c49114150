"""The NumPy backend's own forms of three operations: the column sums (the bias
gradients) as the product ones @ delta, the relu derivative as a byte mask, and
the optimizers' passes chunk by chunk."""

import numpy as np
import pytest
from _helpers import sum_error

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


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_relu_backward_through_a_byte_mask_is_err_times_the_step(rng, dtype):
    """err * [a > 0] exactly as multiplying by a float 0/1 gives it, signed zeros
    and NaN in err included, in place too; the mask is reused from call to call."""
    backend = NumpyBackend()
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


class _OnePass(NumpyBackend):
    PASS_CHUNK = None


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
    class Chunked(NumpyBackend):
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
    backend = NumpyBackend()
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
    class Blocks(NumpyBackend):
        PASS_CHUNK = 7
    z = rng.normal(size=shape).astype(dtype)
    b = rng.normal(size=shape[1]).astype(dtype)
    err = rng.normal(size=shape).astype(dtype)
    whole = _OnePass()
    a_ref = whole.bias_activation(z.copy(), b, activation)
    d_ref = whole.activation_backward(err, a_ref, activation, out=np.empty_like(z))
    for backend in (Blocks(), NumpyBackend()):
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

    class Plain(NumpyBackend):
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
