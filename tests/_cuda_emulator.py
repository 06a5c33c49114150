"""gpubp's CUDA kernels run on the CPU, for the tests: the CuPy backend's own
launch code (grids, blocks, scalar types) over NumPy arrays, with each
``kernels/*.cu`` compiled by the host C++ compiler against
``tests/emulator/cuda_on_cpu.h``, and CUDA graphs as recorded launches replayed
with the pointers and values they were captured with. It checks what the
kernels and the trainer's graph mode compute, not how fast: on a GPU the same
tests run on the real thing.

    backend = emulated_backend()      # skips the test where no C++20 compiler is found
    backend.bias_activation(z, b, "sigmoid")
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from gpubp import kernels
from gpubp.backends.cupy_backend import CupyBackend
from gpubp.backends.numpy_backend import WorkArrays

HERE = Path(__file__).resolve().parent
SHIM = HERE / "emulator" / "cuda_on_cpu.h"
_EXTERN_C = re.compile(r'extern "C" __global__ void (\w+)\s*\(')
_C_TYPES = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double,
            np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
            np.dtype(np.uint64): ctypes.c_uint64, np.dtype(np.bool_): ctypes.c_bool}
_LAUNCH_ERRORS = {1: "a barrier was not reached by every thread it waits for (divergent "
                     "__syncthreads or shuffle)",
                  2: "a warp shuffle named a mask other than the whole warp"}


def compiler():
    """The host C++ compiler, or None."""
    return shutil.which("g++") or shutil.which("clang++")


class EmulationError(RuntimeError):
    pass


_SHARED = re.compile(r"^(\s*)__shared__\s+[^;]*?\b(\w+)\s*(\[[^;]*\])?\s*;", re.MULTILINE)


def _fresh_shared(src):
    """After each __shared__ declaration, a call that refills it with garbage
    when a new block reaches it (emu_fresh_shared in the shim)."""
    return _SHARED.sub(lambda m: f"{m.group(0)} static long emu_seen_{m.group(2)} = -1; "
                                 f"emu_fresh_shared({m.group(2)}, emu_seen_{m.group(2)});", src)


def _wrapper_source(name):
    """kernels/NAME.cu (common.cuh pasted in) behind the shim, plus one C entry
    point per kernel it exports: ``symbol -> kernel expression``."""
    src = _fresh_shared(kernels.source(name))
    entries, lines = {}, []
    for i, expr in enumerate(kernels.instantiations(name) + _EXTERN_C.findall(src)):
        symbol = f"emu_kernel_{i}"
        entries[expr] = symbol
        lines.append(f'extern "C" int {symbol}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, '
                     f"unsigned by, unsigned bz, void** args, int reverse) {{\n"
                     f"    return emu_launch(&{expr}, dim3{{gx, gy, gz}}, dim3{{bx, by, bz}}, args, reverse);\n}}\n"
                     f'extern "C" int {symbol}_signature(int* sizes, int* kinds) {{\n'
                     f"    return emu_signature(&{expr}, sizes, kinds);\n}}")
    if name == "activation_backward":   # an ElementwiseKernel's preamble: one loop per variant
        for act, code in kernels.ACTIVATION_CODES.items():
            for t in ("float", "double"):
                symbol = f"emu_elementwise_{act}_{t}"
                entries[(act, t)] = symbol
                lines.append(f'extern "C" void {symbol}(const {t}* err, const {t}* a, {t}* delta, '
                             f"long long n) {{\n    for (long long i = 0; i < n; ++i) "
                             f"delta[i] = activation_backward<{code}>(err[i], a[i]);\n}}")
    return f'#include "cuda_on_cpu.h"\n{src}\n' + "\n".join(lines) + "\n", entries


_LOCK = threading.Lock()
_LIBS = {}


def _library(name):
    """The compiled emulation of kernels/NAME.cu, cached on disk by source hash."""
    with _LOCK:
        if name in _LIBS:
            return _LIBS[name]
        source, entries = _wrapper_source(name)
        digest = hashlib.sha256((source + SHIM.read_text()).encode()).hexdigest()[:16]
        folder = Path(tempfile.gettempdir()) / "gpubp-cuda-emulator"
        folder.mkdir(exist_ok=True)
        lib_path = folder / f"{name}-{digest}.so"
        if not lib_path.exists():
            unique = f"{os.getpid()}-{threading.get_ident()}"   # builds in parallel never collide
            src_path = folder / f"{name}-{digest}.{unique}.cpp"
            src_path.write_text(source)
            tmp = folder / f"{name}-{digest}.{unique}.tmp.so"
            result = subprocess.run(
                [compiler(), "-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", f"-I{SHIM.parent}",
                 str(src_path), "-o", str(tmp)], capture_output=True, text=True, timeout=300)
            if result.returncode != 0:
                raise EmulationError(f"kernels/{name}.cu does not build for the emulator:\n"
                                     f"{result.stderr[-4000:]}")
            tmp.replace(lib_path)
        _LIBS[name] = (ctypes.CDLL(str(lib_path)), entries)
        return _LIBS[name]


def _c_value(x):
    """A kernel argument as CuPy passes it: arrays by their data pointer, NumPy
    scalars as their own C type, Python ints and floats as int64 and double."""
    if isinstance(x, np.ndarray):
        return ctypes.c_void_p(x.ctypes.data)
    if isinstance(x, np.generic):
        return _C_TYPES[x.dtype](x.item())
    if isinstance(x, int):                       # bools too, as CuPy does
        return ctypes.c_int64(x)
    if isinstance(x, float):
        return ctypes.c_double(x)
    raise TypeError(f"no kernel argument of type {type(x).__name__}")


# -- CUDA graphs ----------------------------------------------------------------
# While a stream captures, launches (kernels and GEMMs) are recorded, not run:
# a graph replays them with the pointers and scalar values they were given, as
# a CUDA graph does. Other array operations during capture (NumPy's, here) run
# at once and are not recorded, where CuPy's in-place operations on a GPU would
# be captured: the training step has none (it is backend calls throughout).

_recording = None      # the launches of the capture under way, or None


def _launch(run):
    if _recording is None:
        run()
    else:
        _recording.append(run)


class EmulatedGraph:
    def __init__(self, launches):
        self.launches = launches

    def launch(self, stream=None):
        for run in self.launches:
            run()


class EmulatedStream:
    """Stands in for a non-blocking ``cupy.cuda.Stream``: current inside ``with``,
    and able to capture."""

    ptr = 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def synchronize(self):
        pass

    def begin_capture(self):
        global _recording
        if _recording is not None:
            raise EmulationError("a capture is already under way")
        _recording = []

    def end_capture(self):
        global _recording
        if _recording is None:
            raise EmulationError("no capture is under way")
        launches, _recording = _recording, None
        return EmulatedGraph(launches)


class EmulatedKernel:
    """Called like a ``cupy.RawKernel``: ``kernel(grid, block, args)``. The
    arguments are checked against the kernel's parameters (count, size, and
    pointer / integer / floating point), which a GPU would not do: there a
    mismatch reads the wrong bytes."""

    def __init__(self, lib, symbol, expression, reverse_order=False):
        self._fn, self.expression, self._reverse = getattr(lib, symbol), expression, reverse_order
        self._fn.restype = ctypes.c_int
        sizes, kinds = (ctypes.c_int * 64)(), (ctypes.c_int * 64)()
        n = getattr(lib, f"{symbol}_signature")(sizes, kinds)
        self._params = list(zip(sizes[:n], kinds[:n]))

    def _check_args(self, args, values):
        if len(values) != len(self._params):
            raise EmulationError(f"{self.expression} takes {len(self._params)} arguments; "
                                 f"got {len(values)}")
        for i, (arg, value, (size, kind)) in enumerate(zip(args, values, self._params)):
            got = (0 if isinstance(arg, np.ndarray) else
                   2 if isinstance(value, (ctypes.c_float, ctypes.c_double)) else 1)
            if got != kind or ctypes.sizeof(value) != size:
                raise EmulationError(
                    f"{self.expression}: argument {i} is {type(arg).__name__} "
                    f"({ctypes.sizeof(value)} bytes); the kernel takes "
                    f"{('a pointer', 'an integer', 'a floating point number')[kind]} of {size} bytes")

    def __call__(self, grid, block, args, shared_mem=0):
        grid, block = tuple(grid) + (1,) * (3 - len(grid)), tuple(block) + (1,) * (3 - len(block))
        if not all(isinstance(d, int) and d >= 1 for d in grid + block):
            raise EmulationError(f"{self.expression}: bad launch grid {grid} or block {block}")
        if block[0] * block[1] * block[2] > 1024:
            raise EmulationError(f"{self.expression}: more than 1024 threads in a block {block}")
        values = [_c_value(a) for a in args]       # pointers and scalars as of now
        self._check_args(args, values)
        keep = list(args)                          # the arrays stay alive with a graph

        def run():
            pointers = (ctypes.c_void_p * max(1, len(values)))(
                *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
            status = self._fn(*grid, *block, pointers, int(self._reverse))
            if status:
                raise EmulationError(f"{self.expression}: {_LAUNCH_ERRORS[status]}")
            return keep

        _launch(run)


class EmulatedElementwise:
    """Called like the ``cupy.ElementwiseKernel`` of kernels/activation_backward.cu."""

    def __init__(self, activation):
        self.activation = activation

    def __call__(self, err, a, out):
        if not (err.shape == a.shape == out.shape and err.dtype == a.dtype == out.dtype):
            raise EmulationError("activation_backward: operands differ in shape or dtype")
        for x in (err, a, out):
            if not x.flags.c_contiguous:
                raise EmulationError("activation_backward: the emulation takes contiguous operands")
        lib, entries = _library("activation_backward")
        fn = getattr(lib, entries[(self.activation, {np.float32: "float", np.float64: "double"}[
            out.dtype.type])])
        fn.restype = None
        _launch(lambda: fn(*(ctypes.c_void_p(x.ctypes.data) for x in (err, a, out)),
                           ctypes.c_longlong(out.size)))
        return out


class EmulatedKernels:
    """Stands in for :mod:`gpubp.kernels` in the CuPy backend."""

    ACTIVATION_CODES = kernels.ACTIVATION_CODES

    def __init__(self, reverse_order=False):
        self.reverse_order = reverse_order
        self._loaded = {}

    def function(self, name, expression):
        """Loaded once, as gpubp.kernels.function caches its kernels."""
        kernel = self._loaded.get((name, expression))
        if kernel is None:
            lib, entries = _library(name)
            if expression not in entries:
                raise EmulationError(f"kernels/{name}.cu exports no {expression!r} "
                                     f"(it has {sorted(e for e in entries if isinstance(e, str))})")
            kernel = self._loaded[(name, expression)] = EmulatedKernel(
                lib, entries[expression], expression, self.reverse_order)
        return kernel

    def activation_backward(self, activation):
        return EmulatedElementwise(activation)


class EmulatedCupyBackend(CupyBackend):
    """The CuPy backend's methods and launch code, on NumPy arrays, with the
    kernels emulated on the CPU (a small pretend GPU of ``sms`` SMs), the
    matrix products left to NumPy, and streams that capture graphs."""

    name = "cupy"

    def __init__(self, sms=1, reverse_order=False):
        self.xp = np
        self._cupy = None
        self._sms = sms
        self._max_blocks = 8 * sms          # fewer blocks than a GPU: more grid-stride work each
        self._unused_labels = np.zeros(1, dtype=np.int32)
        self._unused_loss = np.zeros(1, dtype=np.float64)
        self._work = WorkArrays(np)
        self._kernels = EmulatedKernels(reverse_order)
        self._local = threading.local()
        self.gemm_problem = None

    # Moving to and from the device copies, as it does on a GPU: a test cannot
    # pass here because the "device" array is the caller's own host array.
    def asarray(self, a, dtype=None):
        return np.array(a, dtype=dtype, order="C", copy=True)

    def to_numpy(self, a):
        return np.array(a, copy=True)

    def synchronize(self):
        pass

    def synchronize_device(self):
        pass

    def new_stream(self):
        return EmulatedStream()

    @staticmethod
    def address(a):
        return a.ctypes.data

    def _direct_gemm(self):
        return self.matmul                  # graphs need a capturable GEMM: this one records

    def graphs_problem(self):
        return None

    def matmul(self, a, b, out, transa=False, transb=False, precision="float32"):
        from gpubp.precision import round_to

        # The work arrays of the rounded operands are taken now, as a captured
        # graph would bake in their addresses; the rounding and product run at launch.
        rounded = (None if precision == "float32" else
                   (self._work(a, "gemm_a"), self._work(b, "gemm_b")))

        def run():
            x, y = (a, b) if rounded is None else (round_to(np, a, precision, rounded[0]),
                                                   round_to(np, b, precision, rounded[1]))
            np.matmul(x.T if transa else x, y.T if transb else y, out=out)

        _launch(run)
        return out

    def __repr__(self):
        return "EmulatedCupyBackend()"


def emulated_backend(sms=1, reverse_order=False):
    """The emulated CuPy backend; the calling test is skipped where no host C++
    compiler is found."""
    if compiler() is None:
        import pytest

        pytest.skip("no host C++ compiler to emulate the kernels with")
    return EmulatedCupyBackend(sms, reverse_order)
