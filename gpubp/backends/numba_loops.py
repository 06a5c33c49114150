"""The CPU's fused loops: a step's per-element passes in one loop each, compiled by Numba.

NumPy makes one pass over memory per operation: Adam's update takes 13 of them,
the sigmoid's derivative times the error three. Each loop here does one
operation's whole arithmetic per element, in the same order and in the array's
dtype, so it gives the NumPy backend's passes bit for bit (the tests hold them
to it); LLVM vectorizes them. They mirror the CUDA kernels named in each
section, as the passes in numpy_backend.py do, and those passes stay the
readable definition and the path taken without Numba (``pip install
gpubp[numba]``; ``GPUBP_NUMBA=0`` turns the loops off).

The exceptions are the two losses with a row sum or a transcendental function
(softmax + cross-entropy, and the squared error's loss): their loops sum in
another order than the passes and call libm's exp and log, so they are held to
float64 within stated tolerances instead. The sigmoid's and tanh's forward keep
NumPy's vectorized tanh between two loops. Every function takes C-contiguous
arrays; the caller checks. ``error_model="numpy"``: a division by zero gives inf
or nan, as in NumPy, instead of raising (and lets LLVM vectorize the division).
"""

from __future__ import annotations

import numba
import numpy as np

_OPTIONS = {"nogil": True, "fastmath": False, "boundscheck": False, "error_model": "numpy"}


def _jit(fn):
    """Compiled on first call, and cached on disk (beside this file, or in the
    user's cache directory) where a writable place exists; else each process
    compiles again."""
    try:
        return numba.njit(cache=True, **_OPTIONS)(fn)
    except RuntimeError:                       # "no locator available": nowhere to cache
        return numba.njit(**_OPTIONS)(fn)


VERSION = numba.__version__


# -- optimizers (kernels/adam.cu, kernels/sgd.cu) ------------------------------------------
@_jit
def adam(p, g, m, v, step_size, bc2_sqrt, decay, one_minus_beta1, beta2, one_minus_beta2, eps):
    """PyTorch's Adam/AdamW on 1-D arrays, every scalar in their dtype:
    m += (1 - beta1) (g - m); v = beta2 v + (1 - beta2) g^2; p *= decay (AdamW,
    skipped when 1); p -= step_size m / (sqrt(v) / bc2_sqrt + eps)."""
    if decay != 1:                      # two loops: a test inside one would keep it scalar
        for i in range(p.size):
            p[i] = _adam_one(p[i] * decay, g[i], m, v, i, step_size, bc2_sqrt,
                             one_minus_beta1, beta2, one_minus_beta2, eps)
    else:
        for i in range(p.size):
            p[i] = _adam_one(p[i], g[i], m, v, i, step_size, bc2_sqrt,
                             one_minus_beta1, beta2, one_minus_beta2, eps)


@numba.njit(inline="always", **_OPTIONS)
def _adam_one(pi, gi, m, v, i, step_size, bc2_sqrt, one_minus_beta1, beta2, one_minus_beta2, eps):
    mi = m[i] + (gi - m[i]) * one_minus_beta1
    vi = v[i] * beta2 + (gi * gi) * one_minus_beta2
    m[i] = mi
    v[i] = vi
    return pi - (mi / (np.sqrt(vi) / bc2_sqrt + eps)) * step_size


@_jit
def sgd(p, g, lr):
    """p -= lr g."""
    for i in range(p.size):
        p[i] -= g[i] * lr


@_jit
def sgd_momentum(p, g, buf, lr, momentum, nesterov):
    """buf = momentum buf + g; p -= lr buf, or with Nesterov p -= lr (g + momentum buf)."""
    if nesterov:
        for i in range(p.size):
            b = buf[i] * momentum + g[i]
            buf[i] = b
            p[i] -= (b * momentum + g[i]) * lr
    else:
        for i in range(p.size):
            b = buf[i] * momentum + g[i]
            buf[i] = b
            p[i] -= b * lr


# -- activations (kernels/bias_activation.cu, kernels/activation_backward.cu) --------------
# The derivatives g'(z) from a = g(z), times the error in place (the training step's
# only use; NumPyBackend copies err to a distinct out first). Each loop is written out
# once per activation: a branch inside the loop would keep LLVM from vectorizing it.
# They take err and a, never one array twice: LLVM's overlap check would send the same
# array as input and output to its scalar loop, three times slower.

@_jit
def sigmoid_backward(err, a):
    """err *= a (1 - a)."""
    one = a.dtype.type(1)
    for i in range(a.size):
        err[i] *= (one - a[i]) * a[i]


@_jit
def tanh_backward(err, a):
    """err *= 1 - a^2."""
    one = a.dtype.type(1)
    for i in range(a.size):
        err[i] *= one - a[i] * a[i]


@_jit
def relu_backward(err, a):
    """err *= [a > 0] (0 or -0 where a <= 0, nan where err is nan or inf)."""
    zero, one = a.dtype.type(0), a.dtype.type(1)
    for i in range(a.size):
        err[i] *= one if a[i] > zero else zero


@_jit
def leaky_relu_backward(err, a, slope, one_minus_slope):
    """err *= [a > 0] (1 - slope) + slope, as the NumPy passes round it."""
    zero, one = a.dtype.type(0), a.dtype.type(1)
    for i in range(a.size):
        err[i] *= (one if a[i] > zero else zero) * one_minus_slope + slope


@_jit
def bias_relu(z, b):
    """z <- max(z + b, 0) on an m x n array, as np.maximum takes it: nan stays
    nan, and of two equal values (-0 and 0) the second."""
    zero = z.dtype.type(0)
    for r in range(z.shape[0]):
        for j in range(z.shape[1]):
            x = z[r, j] + b[j]
            z[r, j] = x if (x > zero or np.isnan(x)) else zero


@_jit
def bias_leaky_relu(z, b, slope):
    """z <- max(z + b, slope (z + b)), as np.maximum."""
    for r in range(z.shape[0]):
        for j in range(z.shape[1]):
            x = z[r, j] + b[j]
            s = x * slope
            z[r, j] = x if (x > s or np.isnan(x)) else s


@_jit
def bias_half(z, b):
    """z <- (z + b) / 2 on an m x n array: the sigmoid's first two passes, before
    NumPy's tanh (sigmoid(x) = (1 + tanh(x / 2)) / 2)."""
    half = z.dtype.type(0.5)
    for r in range(z.shape[0]):
        for j in range(z.shape[1]):
            z[r, j] = (z[r, j] + b[j]) * half


@_jit
def half_plus_half(z):
    """z <- z / 2 + 1/2 on a 1-D array: the sigmoid's last two passes, after tanh."""
    half = z.dtype.type(0.5)
    for i in range(z.size):
        z[i] = z[i] * half + half


# -- losses (kernels/softmax_cross_entropy.cu, kernels/pointwise_loss.cu) ------------------
# The deltas are the passes' to a rounding or two: the row sums go left to right here,
# where the passes take BLAS's order, and exp and log are libm's, where NumPy has its
# own. Each loss is summed in float64 and returned, for the caller to add.

@_jit
def softmax_cross_entropy_labels(z, labels, delta, scale):
    """Per row i of z (m x k) with label l = labels[i] (clipped to [0, k - 1]):
    s = sum_j exp(z_ij - max_j z_ij); lse = max + log s; loss += lse - z_il;
    delta_ij = (exp(z_ij - max) / s - [j == l]) scale."""
    m, k = z.shape
    one = z.dtype.type(1)
    loss = 0.0
    for i in range(m):
        zmax = _row_max(z, i, k)
        s = z.dtype.type(0)
        for j in range(k):
            e = np.exp(z[i, j] - zmax)
            delta[i, j] = e
            s += e
        lse = np.log(s) + zmax
        label = min(max(labels[i], 0), k - 1)
        loss += np.float64(lse - z[i, label])
        for j in range(k):
            p = delta[i, j] / s
            delta[i, j] = (p - one if j == label else p) * scale
    return loss


@_jit
def softmax_cross_entropy_dense(z, y, delta, scale):
    """Per row i with targets y_i: loss += sum_j y_ij (lse - z_ij);
    delta_ij = (p_ij sum_j y_ij - y_ij) scale, p = softmax(z_i)."""
    m, k = z.shape
    loss = 0.0
    for i in range(m):
        zmax = _row_max(z, i, k)
        s = z.dtype.type(0)
        ysum = z.dtype.type(0)
        for j in range(k):
            e = np.exp(z[i, j] - zmax)
            delta[i, j] = e
            s += e
            ysum += y[i, j]
        lse = np.log(s) + zmax
        for j in range(k):
            loss += np.float64((lse - z[i, j]) * y[i, j])
            delta[i, j] = ((delta[i, j] / s) * ysum - y[i, j]) * scale
    return loss


@numba.njit(inline="always", **_OPTIONS)
def _row_max(z, i, k):
    """max_j z[i, j] as np.maximum takes it (nan wins)."""
    zmax = z[i, 0]
    for j in range(1, k):
        x = z[i, j]
        zmax = x if (x > zmax or np.isnan(x)) else zmax
    return zmax


@_jit
def mse_identity(z, y, delta, scale):
    """delta = (z - y) scale; returns sum (z - y)^2 / 2, each square in z's dtype."""
    loss = 0.0
    for i in range(z.size):
        d = z[i] - y[i]
        loss += np.float64(d * d)
        delta[i] = d * scale
    return 0.5 * loss


BACKWARD = {"sigmoid": sigmoid_backward, "tanh": tanh_backward, "relu": relu_backward,
            "leaky_relu": leaky_relu_backward}
