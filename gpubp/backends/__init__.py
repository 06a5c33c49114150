"""Choosing the array backend: CuPy on an NVIDIA GPU, NumPy on the CPU.

``get_backend("auto")`` picks CuPy when it imports and sees a usable device,
else NumPy. The environment variable ``GPUBP_BACKEND`` (numpy, cupy or auto)
sets the default. CuPy is imported only when asked about, so importing gpubp
never touches CUDA.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings

from .numpy_backend import NumpyBackend

BACKEND_NAMES = ("auto", "numpy", "cupy")
ENV_VAR = "GPUBP_BACKEND"


class BackendUnavailableError(RuntimeError):
    """The CuPy backend was asked for where it cannot work; the message says why."""


@functools.cache
def _cupy_problem() -> str | None:
    """None when CuPy can run here, else the reason it cannot."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import cupy
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return (
            f"CuPy is not installed or does not import ({type(exc).__name__}: {exc}); "
            "install gpubp[cuda12] or gpubp[cuda13] to match your CUDA driver"
        )
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        text = str(exc)
        if "InsufficientDriver" in text or "driver version is insufficient" in text:
            runtime = _version(cupy.cuda.runtime.runtimeGetVersion)
            driver = _version(cupy.cuda.runtime.driverGetVersion)
            if driver == "none":
                return "no NVIDIA driver was found (no GPU on this machine?)"
            return (
                f"the NVIDIA driver is too old for this CuPy build (driver supports CUDA "
                f"{driver}, CuPy needs CUDA {runtime}): update the driver or install the "
                "CuPy wheel for an older CUDA (gpubp[cuda12])"
            )
        if "NoDevice" in text:
            return "no CUDA device is visible (cudaErrorNoDevice); check CUDA_VISIBLE_DEVICES"
        return f"CUDA could not be initialised: {text}"
    if count == 0:
        return "no CUDA device is visible"
    if not cupy.cuda.is_available():
        return "cupy.cuda.is_available() is False"
    return None


def _version(getter) -> str:
    try:
        v = getter()
    except Exception:
        return "unknown"
    return "none" if not v else f"{v // 1000}.{(v % 1000) // 10}"


def available_backends() -> list[str]:
    """The backends that work on this machine: always ``"numpy"``, plus ``"cupy"``
    where CuPy imports and sees a usable GPU."""
    return ["numpy"] + (["cupy"] if _cupy_problem() is None else [])


@functools.cache
def _make(name: str):
    if name == "numpy":
        return NumpyBackend()
    problem = _cupy_problem()
    if problem is not None:
        raise BackendUnavailableError(f"backend 'cupy' is unavailable: {problem}")
    from .cupy_backend import CupyBackend

    return CupyBackend()


def get_backend(name: str | None = "auto"):
    """The backend object for ``name``: "numpy", "cupy" or "auto" (None is "auto";
    a backend object is passed through).

    "auto" takes ``$GPUBP_BACKEND`` when it is set (numpy, cupy or auto), else
    CuPy when it imports and sees a usable GPU, else NumPy. An explicit "numpy"
    or "cupy" wins over the environment. The object has ``.name``, ``.xp`` (the
    array module), ``asarray`` and ``to_numpy`` to move arrays, ``matmul``, and
    the fused operations of one training step.
    """
    if _is_backend(name):
        return name
    if name is None:
        name = "auto"
    if not isinstance(name, str) or name.lower() not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {', '.join(BACKEND_NAMES)}; got {name!r}")
    name = name.lower()
    if name == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env and env not in BACKEND_NAMES:
            raise ValueError(
                f"${ENV_VAR} must be one of {', '.join(BACKEND_NAMES)}; got {env!r}"
            )
        name = env if env in ("numpy", "cupy") else ("cupy" if _cupy_problem() is None else "numpy")
    return _make(name)


def _is_backend(obj) -> bool:
    """A backend object of gpubp's (NumpyBackend, CupyBackend, PlainCupyBackend)."""
    if isinstance(obj, NumpyBackend):
        return True
    cupy_backend = sys.modules.get(f"{__name__}.cupy_backend")   # imported by now if obj is one
    return cupy_backend is not None and isinstance(obj, cupy_backend.CupyBackend)


def plain_cupy_backend():
    """CuPy with plain array expressions in place of the fused kernels, for the
    benchmarks' fused-against-unfused comparison."""
    problem = _cupy_problem()
    if problem is not None:
        raise BackendUnavailableError(f"backend 'cupy' is unavailable: {problem}")
    from .cupy_backend import PlainCupyBackend

    return PlainCupyBackend()
