"""Shared by the tests: which backends run here, and a float64 reference of the algorithm."""

from __future__ import annotations

import numpy as np
import pytest

import gpubp

BACKENDS = gpubp.available_backends()
requires_cupy = pytest.mark.skipif("cupy" not in BACKENDS, reason="needs CuPy and a CUDA GPU")

PAIRS = [  # (output, loss)
    ("softmax", "cross_entropy"),
    ("sigmoid", "binary_cross_entropy"),
    ("sigmoid", "mse"),
    ("identity", "mse"),
]
ACTIVATIONS = ["sigmoid", "tanh", "relu", "leaky_relu", "identity"]


def random_targets(rng, n, k, output, loss, labels=False):
    """Targets that fit the loss: labels or one-hot rows, probabilities, or reals."""
    if loss == "cross_entropy":
        y = rng.integers(0, k, size=n)
        return y if labels else np.eye(k)[y]
    if output == "sigmoid":
        return rng.uniform(0.0, 1.0, size=(n, k))
    return rng.normal(size=(n, k))


def max_rel_error(actual, expected):
    """max |actual - expected| / max |expected|: a norm-wise relative error."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-300))


def sum_error(actual, terms):
    """max |actual - sum(terms, axis=0)| / max sum(|terms|, axis=0), in float64.

    A floating-point sum's rounding error is bounded relative to the sum of the
    magnitudes it adds, not to the result, which may cancel to near zero: a
    column of five terms summing to 7e-5 can be off by 5e-4 of itself in float32
    (seen in CI), while off by 1e-8 of what it added."""
    terms = np.asarray(terms, dtype=np.float64)
    error = np.abs(np.asarray(actual, dtype=np.float64) - terms.sum(axis=0))
    return float(np.max(error) / max(np.max(np.abs(terms).sum(axis=0)), 1e-300))


# -- a plain per-example reference of backpropagation, in float64 -------------

def _g(name, z):
    return {
        "sigmoid": lambda: 1.0 / (1.0 + np.exp(-z)),
        "tanh": lambda: np.tanh(z),
        "relu": lambda: np.maximum(z, 0.0),
        "leaky_relu": lambda: np.where(z > 0, z, 0.01 * z),
        "identity": lambda: z.copy(),
        "softmax": lambda: np.exp(z - z.max()) / np.exp(z - z.max()).sum(),
    }[name]()


def _g_prime(name, z):
    s = 1.0 / (1.0 + np.exp(-z))
    return {
        "sigmoid": s * (1 - s),
        "tanh": 1 - np.tanh(z) ** 2,
        "relu": (z > 0).astype(float),
        "leaky_relu": np.where(z > 0, 1.0, 0.01),
        "identity": np.ones_like(z),
    }[name]


def reference_backprop(params, activation, output, loss, X, Y, l2, operand=None):
    """The textbook algorithm one example at a time, Theta(l) = W(l)^T:

    for t = 1..m: forward; d(L) = a(L) - y (times g'(z(L)) for sigmoid + mse);
    d(l) = (Theta(l)^T d(l+1)) .* g'(z(l)); Delta(l) += d(l+1) a(l)^T;
    then D(l) = (Delta(l) + lambda Theta(l)) / m, biases unregularized.
    ``operand(x)``, where given, is applied to both factors of every product
    (a precision mode's rounding); the sums stay in float64.
    Returns (J, [(dW, db), ...]).
    """
    r = (lambda x: x) if operand is None else operand
    m = X.shape[0]
    Ws = [np.asarray(W, np.float64) for W, _ in params]
    bs = [np.asarray(b, np.float64) for _, b in params]
    Delta_W = [np.zeros_like(W) for W in Ws]
    Delta_b = [np.zeros_like(b) for b in bs]
    J = 0.0
    L = len(Ws)
    for t in range(m):
        a = [X[t].astype(np.float64)]
        zs = []
        for l in range(L):
            z = r(Ws[l]).T @ r(a[-1]) + bs[l]
            zs.append(z)
            a.append(_g(activation if l < L - 1 else output, z))
        y, out = Y[t], a[-1]
        if loss == "cross_entropy":
            J += -np.sum(y * np.log(out))
        elif loss == "binary_cross_entropy":
            J += -np.sum(y * np.log(out) + (1 - y) * np.log(1 - out))
        else:
            J += 0.5 * np.sum((out - y) ** 2)
        d = out - y
        if output == "sigmoid" and loss == "mse":
            d = d * _g_prime("sigmoid", zs[-1])
        for l in reversed(range(L)):
            Delta_W[l] += np.outer(r(a[l]), r(d))
            Delta_b[l] += d
            if l > 0:
                d = (r(Ws[l]) @ r(d)) * _g_prime(activation, zs[l - 1])
    J = J / m + l2 / (2 * m) * sum(np.sum(W * W) for W in Ws)
    grads = [((Delta_W[l] + l2 * Ws[l]) / m, Delta_b[l] / m) for l in range(L)]
    return J, grads


def spy_kernels(monkeypatch, backend):
    """The kernel expressions the CuPy backend (or its emulation) launches from
    now on, in order: a list that grows as it launches them."""
    launched, function = [], backend._kernels.function

    def spied(name, expression):
        launched.append(expression)
        return function(name, expression)

    monkeypatch.setattr(backend._kernels, "function", spied)
    return launched


# -- training runs compared across two float32 routes, with relu -------------

KINKED = ("relu", "leaky_relu")
# Two float32 routes to z = a @ W + b (another summation order, a fused kernel)
# differ by about sqrt(K) u (|a| @ |W| + |b|), 5e-7 of it for K = 64. A hidden z
# nearer relu's kink than that may fall on opposite sides of it in the two runs;
# one example's delta then differs by a whole term, and momentum or Adam carries
# that into the parameters far beyond rounding (5.5e-4 against a tolerance of
# 1e-4, seen in CI, where the NumPy run's nearest z was 1.8e-8 of its sum).
KINK_MARGIN = 1e-6


def nearest_kink(backend):
    """Watch ``backend``'s forward passes from now on: returns a list whose one
    element is the least |z| / (|a| @ |W| + |b|), in float64, over every hidden
    pre-activation of a relu or leaky relu layer that ``dense_forward`` made."""
    seen, forward = [np.inf], backend.dense_forward

    def watched(a, w, b, activation, out, precision="float32"):
        if activation in KINKED:
            a64, w64, b64 = (np.asarray(x, dtype=np.float64) for x in (a, w, b))
            size = np.abs(a64) @ np.abs(w64) + np.abs(b64)
            seen[0] = min(seen[0], float(np.min(np.abs(a64 @ w64 + b64) / size)))
        return forward(a, w, b, activation, out, precision)

    backend.dense_forward = watched
    return seen


def away_from_kinks(rng, activation, draw, reference, tries=30, make_backend=None):
    """Inputs ``draw(rng)`` whose float32 training ``reference(inputs, backend)``
    on a watched NumPy backend (``make_backend()``, where given) keeps every
    hidden pre-activation KINK_MARGIN of its sum or more from relu's kink;
    redrawn until it does (in the tests here, one draw in three or fewer is).
    Returns (inputs, what ``reference`` returned). Smooth activations take the
    first draw."""
    from gpubp.backends.numpy_backend import NumpyBackend

    for _ in range(tries):
        inputs, backend = draw(rng), (make_backend or NumpyBackend)()
        nearest = nearest_kink(backend)
        result = reference(inputs, backend)
        if activation not in KINKED or nearest[0] >= KINK_MARGIN:
            return inputs, result
    raise AssertionError(f"no draw in {tries} trained {KINK_MARGIN:g} away from relu's kink")
