"""Checks run by every public entry point before any kernel touches the data."""

from __future__ import annotations

import math
import numbers

import numpy as np


def _is_device_array(a) -> bool:
    return hasattr(a, "__cuda_array_interface__")


def as_checked_array(name: str, a):
    """``a`` as a NumPy or CuPy array of real numbers, not empty, all finite."""
    if a is None:
        raise TypeError(f"{name} must be an array of numbers; got None")
    if not _is_device_array(a):
        try:
            a = np.asarray(a)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{name} must be an array of numbers; got {type(a).__name__} ({exc})") from None
    kind = a.dtype.kind
    if kind == "c":
        raise TypeError(f"{name} must be real; got complex dtype {a.dtype}")
    if kind not in "biuf":
        raise TypeError(f"{name} must hold numbers; got dtype {a.dtype}")
    if a.size == 0:
        raise ValueError(f"{name} must not be empty; got shape {a.shape}")
    if kind == "f" and not bool(_xp(a).isfinite(a).all()):
        raise ValueError(f"{name} must be finite; it holds NaN or Inf")
    return a


def _xp(a):
    if _is_device_array(a):
        import cupy

        return cupy
    return np


def check_fits(name: str, a, dtype):
    """Values of ``a`` must stay finite when cast to ``dtype`` (float64 data into
    a float32 model: beyond 3.4e38 they would become Inf)."""
    dtype = np.dtype(dtype)
    if a.dtype.kind == "f" and a.dtype.itemsize > dtype.itemsize:
        limit = float(np.finfo(dtype).max)
        if float(_xp(a).abs(a).max()) > limit:
            raise ValueError(f"{name} holds values beyond the range of {dtype.name} (|x| > {limit:.3g})")


def check_X(X, n_inputs: int, name: str = "X"):
    X = as_checked_array(name, X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, {n_inputs}); got shape {X.shape}")
    if X.shape[1] != n_inputs:
        raise ValueError(
            f"{name} must have {n_inputs} columns (the input layer's size); got shape {X.shape}"
        )
    return X


def check_Y(Y, n_rows: int, n_outputs: int, loss: str, name: str = "Y"):
    """Validated targets as ``(dense, labels)``: one of the two is None.

    Integer labels ``(n,)`` are taken for ``cross_entropy`` only; other losses
    take ``(n, n_outputs)``, or ``(n,)`` when there is one output.
    """
    Y = as_checked_array(name, Y)
    if Y.ndim == 0 or Y.ndim > 2:
        raise ValueError(f"{name} must be 1-D or 2-D; got shape {Y.shape}")
    if Y.shape[0] != n_rows:
        raise ValueError(f"{name} must have {n_rows} rows, one per row of X; got {Y.shape[0]}")
    if Y.ndim == 1 and loss == "cross_entropy":
        if Y.dtype.kind not in "iu":
            raise TypeError(
                f"{name} as 1-D class labels must have an integer dtype; got {Y.dtype} "
                f"(or pass one-hot targets of shape ({n_rows}, {n_outputs}))"
            )
        lo, hi = int(Y.min()), int(Y.max())
        if lo < 0 or hi >= n_outputs:
            raise ValueError(
                f"{name} labels must lie in [0, {n_outputs - 1}] for {n_outputs} outputs; "
                f"got values from {lo} to {hi}"
            )
        return None, Y
    if Y.ndim == 1:
        if n_outputs != 1:
            raise ValueError(
                f"{name} must have shape ({n_rows}, {n_outputs}); got 1-D targets of shape {Y.shape}"
            )
        Y = Y.reshape(-1, 1)
    if Y.shape[1] != n_outputs:
        hint = ""
        if loss == "cross_entropy" and Y.shape[1] == 1 and Y.dtype.kind in "iu":
            hint = f", or be 1-D class labels: pass {name}.ravel()"
        raise ValueError(
            f"{name} must have {n_outputs} columns (the output layer's size){hint}; got shape {Y.shape}"
        )
    if loss in ("cross_entropy", "binary_cross_entropy"):
        if bool((Y < 0).any()) or (loss == "binary_cross_entropy" and bool((Y > 1).any())):
            limits = "in [0, 1]" if loss == "binary_cross_entropy" else "non-negative"
            raise ValueError(f"{name} targets for {loss} must be {limits}")
    return Y, None


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer; got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer; got {value}")
    return int(value)


def check_real(name: str, value, *, low=None, high=None, low_open=False, high_open=False) -> float:
    """``value`` as a float, finite and within the stated bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {value!r}")
    value = float(value)
    bad = not math.isfinite(value)
    if low is not None:
        bad |= value <= low if low_open else value < low
    if high is not None:
        bad |= value >= high if high_open else value > high
    if bad:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        rule = " and ".join(s for s in ("finite" if not math.isfinite(value) else "", lo, hi) if s)
        raise ValueError(f"{name} must be {rule or 'finite'}; got {value}")
    return value


def check_choice(name: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def check_flag(name: str, value) -> bool:
    """True/False (a NumPy bool, or the integers 0 and 1, count too)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(value)
    raise TypeError(f"{name} must be True or False; got {value!r}")
