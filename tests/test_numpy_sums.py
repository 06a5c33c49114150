"""The NumPy backend's column sums (the bias gradients) as the product ones @ delta."""

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
