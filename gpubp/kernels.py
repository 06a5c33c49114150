"""One loader for the CUDA sources in ``kernels/``.

Each ``kernels/NAME.cu`` is read once, has ``common.cuh`` pasted in, and is
compiled by CuPy (NVRTC) into a ``cupy.RawModule``; CuPy caches the binary on
disk, this module caches the loaded module per process. The template
instantiations a module exports are read from the explicit instantiation lines
of its source, so the ``.cu`` file is the one list of its variants. The
library, the tests and the benchmarks all load kernels through here.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

# Codes of the activations inside the kernels (kernels/common.cuh).
ACTIVATION_CODES = {"identity": 0, "sigmoid": 1, "tanh": 2, "relu": 3, "leaky_relu": 4}

COMPILE_OPTIONS = ("-std=c++17",)

_INCLUDE = re.compile(r'^#include "common\.cuh"\s*$', re.MULTILINE)
_INSTANTIATION = re.compile(r"template\s+__global__\s+void\s+(\w+)\s*<([^>]*)>\s*\(")


def kernel_dir() -> Path:
    """The folder holding the ``.cu`` sources: inside the installed package
    (a wheel carries them as ``gpubp/_kernels``), else the source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_kernels", here.parent / "kernels"):
        if (candidate / "common.cuh").is_file():
            return candidate
    raise FileNotFoundError(f"gpubp's CUDA sources (kernels/*.cu) are missing next to {here}")


def kernel_names() -> list[str]:
    """The stems of every ``kernels/*.cu``."""
    return sorted(p.stem for p in kernel_dir().glob("*.cu"))


@functools.cache
def source(name: str) -> str:
    """The full source of ``kernels/NAME.cu`` with ``common.cuh`` pasted in."""
    folder = kernel_dir()
    text = (folder / f"{name}.cu").read_text()
    common = (folder / "common.cuh").read_text()
    return _INCLUDE.sub(lambda _: common, text)


def instantiations(name: str) -> list[str]:
    """The ``kernel<args>`` names that ``kernels/NAME.cu`` instantiates explicitly."""
    return [
        f"{fn}<{', '.join(a.strip() for a in args.split(','))}>"
        for fn, args in _INSTANTIATION.findall(source(name))
    ]


@functools.cache
def module(name: str):
    """The compiled ``cupy.RawModule`` of ``kernels/NAME.cu``."""
    import cupy

    return cupy.RawModule(
        code=source(name), options=COMPILE_OPTIONS, name_expressions=instantiations(name)
    )


@functools.cache
def function(name: str, expression: str):
    """One kernel of ``kernels/NAME.cu``, e.g. ``function("adam", "adam<float>")``."""
    return module(name).get_function(expression)


@functools.cache
def activation_backward(activation: str):
    """The ``cupy.ElementwiseKernel`` computing ``delta = err * g'(a)`` for one
    activation, with ``kernels/activation_backward.cu`` as its preamble."""
    import cupy

    code = ACTIVATION_CODES[activation]
    return cupy.ElementwiseKernel(
        "T err, T a",
        "T delta",
        f"delta = activation_backward<{code}>(err, a)",
        name=f"gpubp_activation_backward_{activation}",
        preamble=source("activation_backward"),
        options=COMPILE_OPTIONS,
    )
