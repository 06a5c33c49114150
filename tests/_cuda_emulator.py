"""gpubp's CUDA kernels run on the CPU, for the tests: the CuPy backend's own
launch code (grids, blocks, scalar types) over NumPy arrays, with each
``kernels/*.cu`` compiled by the host C++ compiler against
``tests/emulator/cuda_on_cpu.h``, the GEMMs through gpubp.cublas on a stand-in
for libcublas (``tests/_fake_cublas.py``), and CUDA graphs as recorded launches
replayed with the pointers and values they were captured with. It checks what the
kernels and the trainer's graph mode compute, not how fast: on a GPU the same
tests run on the real thing.

    backend = emulated_backend()      # skips the test where no C++20 compiler is found
    backend.bias_activation(z, b, "sigmoid")
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import itertools
import mmap
import os
import re
import shutil
import subprocess
import tempfile
import threading
import types
from pathlib import Path

import numpy as np

from _fake_cublas import fake_cublas, host, host_cupy, last_call
from gpubp import kernels
from gpubp.backends.cupy_backend import CupyBackend
from gpubp.backends.numpy_backend import WorkArrays
from gpubp.cublas import Gemm
from gpubp.graphs import CaptureAllocated
from gpubp.precision import round_to

HERE = Path(__file__).resolve().parent
SHIM = HERE / "emulator" / "cuda_on_cpu.h"
_EXTERN_C = re.compile(r'extern "C" __global__ void (\w+)\s*\(')
_C_TYPES = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double,
            np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
            np.dtype(np.uint64): ctypes.c_uint64, np.dtype(np.bool_): ctypes.c_bool}
_LAUNCH_ERRORS = {1: "a barrier was not reached by every thread it waits for (divergent "
                     "__syncthreads or shuffle)",
                  2: "a warp shuffle named a mask other than the whole warp",
                  3: "a memory access faulted"}


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
    lines.append('extern "C" void* emu_fault_info(int* was_write) {\n'
                 "    *was_write = emu_fault_was_write;\n    return emu_fault_address;\n}")
    return f'#include "cuda_on_cpu.h"\n{src}\n' + "\n".join(lines) + "\n", entries


_LOCK = threading.Lock()
_LIBS = {}


def _build_path(name):
    """(source, entries, the cached library's path) of kernels/NAME.cu's emulation."""
    source, entries = _wrapper_source(name)
    digest = hashlib.sha256((source + SHIM.read_text()).encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / "gpubp-cuda-emulator"
    folder.mkdir(exist_ok=True)
    return source, entries, folder / f"{name}-{digest}.so"


def _build(names):
    """Compiles the emulations of these kernels/*.cu that are not cached yet,
    as many at once as there are cores (a cold cache costs one build's time per core)."""
    jobs = []
    for name in names:
        source, _, lib_path = _build_path(name)
        if lib_path.exists():
            continue
        unique = f"{os.getpid()}-{threading.get_ident()}"   # builds in parallel never collide
        src_path = lib_path.with_name(f"{lib_path.stem}.{unique}.cpp")
        src_path.write_text(source)
        tmp = lib_path.with_name(f"{lib_path.stem}.{unique}.tmp.so")
        jobs.append((name, lib_path, tmp, src_path, [compiler(), "-std=c++20", "-O1", "-fPIC", "-shared",
                                           "-pthread", f"-I{SHIM.parent}", str(src_path), "-o", str(tmp)]))
    width = max(1, os.cpu_count() or 1)
    for i in range(0, len(jobs), width):
        running = [(name, lib_path, tmp, src, subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                               stderr=subprocess.PIPE, text=True))
                   for name, lib_path, tmp, src, cmd in jobs[i:i + width]]
        for name, lib_path, tmp, src, proc in running:
            _, stderr = proc.communicate(timeout=300)
            src.unlink(missing_ok=True)
            if proc.returncode != 0:
                raise EmulationError(f"kernels/{name}.cu does not build for the emulator:\n"
                                     f"{stderr[-4000:]}")
            tmp.replace(lib_path)


def _library(name):
    """The compiled emulation of kernels/NAME.cu, cached on disk by source hash.
    The first call builds every kernel file's emulation that is not cached."""
    with _LOCK:
        if name not in _LIBS:
            _build(kernels.kernel_names() if not _LIBS else [name])
            _, entries, lib_path = _build_path(name)
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
_allocated = []        # the shapes of work arrays made while it was under way


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

    _pointers = itertools.count(0x100)
    current = []                        # the streams entered, innermost last

    def __init__(self, ptr=None):
        self.ptr = next(self._pointers) if ptr is None else ptr

    def __enter__(self):
        self.current.append(self)
        return self

    def __exit__(self, *exc):
        self.current.pop()

    def synchronize(self):
        pass

    def begin_capture(self):
        global _recording
        if _recording is not None:
            raise EmulationError("a capture is already under way")
        _recording = []
        _allocated.clear()

    def end_capture(self):
        global _recording
        if _recording is None:
            raise EmulationError("no capture is under way")
        launches, _recording = _recording, None
        if _allocated:          # on a GPU, gpubp.graphs.capture's count of pool requests
            raise CaptureAllocated(f"the step made {len(_allocated)} work array(s) while "
                                   f"captured: {_allocated}")
        return EmulatedGraph(launches)


class _DeviceMemory:
    """Where the emulated backend's work arrays come from. A work array made
    while a stream captures would be a request to CuPy's pool on a GPU, which
    gpubp.graphs.capture refuses: here the capture fails the same way."""

    @staticmethod
    def empty(shape, dtype):
        if _recording is not None:
            _allocated.append(tuple(shape))
        return np.empty(shape, dtype)


NULL_STREAM = EmulatedStream(ptr=0)


class EmulatedCupy:
    """The few CuPy functions that the CuPy backend's own matmul and graph check,
    and gpubp.cublas.Gemm, call, on host arrays. ``matmul`` refuses to run while
    a stream captures, as CuPy's cuBLAS calls do; ``empty`` gives arrays with
    CuPy's ``.data.ptr``."""

    def __init__(self):
        self.cuda = types.SimpleNamespace(
            get_current_stream=lambda: (EmulatedStream.current or [NULL_STREAM])[-1])

    @staticmethod
    def matmul(a, b, out=None):
        if _recording is not None:          # as CuPy refuses its cuBLAS calls
            raise NotImplementedError("cupy.matmul while a stream captures: CuPy's cuBLAS "
                                      "calls cannot be captured")
        if out is None:
            return np.matmul(a, b)
        np.matmul(a, b, out=out)
        return out

    @staticmethod
    def empty(shape, dtype=np.float32):
        return host(_DeviceMemory.empty(shape, dtype))

    asarray, abs = staticmethod(np.asarray), staticmethod(np.abs)


class _DeferredGemms:
    """The cuBLAS stand-in (tests/_fake_cublas.py) whose GEMMs are launches like
    the emulated kernels': each call's arguments are checked when it is made,
    and its product runs at launch, recorded while a stream captures, with the
    pointers and scalars it was given."""

    def __init__(self, lib):
        self._lib = lib

    def __getattr__(self, name):
        return getattr(self._lib, name)

    def cublasGemmEx(self, *args):
        lib = self._lib
        lib.fake_cublas_defer(1)
        try:
            status = lib.cublasGemmEx(*args)
        finally:
            lib.fake_cublas_defer(0)
        if status == 0:
            call = last_call(lib)
            _launch(lambda: lib.fake_cublas_compute(ctypes.byref(call)))
        return status


# -- out-of-bounds accesses -------------------------------------------------------
# An eager launch hands the kernel copies of its arrays, each with one end
# against a page the process may not touch (PROT_NONE), so that a read or write
# past that end faults; the shim turns the fault into an error naming the array.
# CUDA would read whatever lies there, or stop the whole context.

_PAGE = mmap.PAGESIZE


@functools.cache
def _libc():
    libc = ctypes.CDLL(None, use_errno=True)             # POSIX: the emulation needs ucontext
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


def _mprotect(address, size, protection):
    if _libc().mprotect(address, size, protection) != 0:
        raise OSError(ctypes.get_errno(), "mprotect failed")


class _Guarded:
    """A copy of a C-contiguous array against a guard page: at its end
    (``at_start`` False) or at its start. Another guard page lies at the far end.

    For a packed kernel (``keep_alignment``: 16-byte accesses) the copy starts
    at the same address modulo 16 as the array, so that the backend's choice
    of that kernel holds for the copy too. At the end that can leave a gap of
    up to 15 bytes before the guard page: it is filled with a pattern, and a
    write into it is reported (a read there is not)."""

    def __init__(self, array, at_start, keep_alignment=False):
        self.array, self.at_start = array, at_start
        pages = max(1, -(-array.nbytes // _PAGE))
        self._map = mmap.mmap(-1, (pages + 2) * _PAGE)
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
        for page in (0, pages + 1):
            _mprotect(self.base + page * _PAGE, _PAGE, 0)  # PROT_NONE
        self.start = self.base + _PAGE + (0 if at_start else pages * _PAGE - array.nbytes)
        if keep_alignment and not at_start:
            self.start -= (self.start - array.ctypes.data) % 16
        self.end = self.start + array.nbytes
        gap = 0 if at_start else self.base + (pages + 1) * _PAGE - self.end
        self._gap = np.frombuffer(self._map, dtype=np.uint8, count=gap, offset=self.end - self.base)
        self._gap[...] = 0xA5
        self.copy = np.frombuffer(self._map, dtype=array.dtype, count=array.size,
                                  offset=self.start - self.base).reshape(array.shape)
        self.copy[...] = array

    def gap_written(self):
        """Whether something wrote into the gap between the copy and the guard page."""
        return bool((self._gap != 0xA5).any())

    def describe(self, address, index, was_write):
        """The fault at ``address`` as an access of argument ``index``, or None."""
        if not self.base <= address < self.base + len(self._map):
            return None
        what = {1: "a write", 0: "a read"}.get(was_write, "an access")
        return (f"{what} at byte {address - self.start} of argument {index}, "
                f"{self.array.dtype}{list(self.array.shape)} of {self.array.nbytes} bytes")


def _guardable(arrays):
    """Arrays that can be handed over as guarded copies: C-contiguous, not
    empty, and either the same array or sharing no memory."""
    if not all(a.flags.c_contiguous and a.size for a in arrays):
        return False
    for i, a in enumerate(arrays):
        for b in arrays[i + 1:]:
            same = (a.ctypes.data, a.nbytes) == (b.ctypes.data, b.nbytes) and a.dtype == b.dtype
            if not same and np.may_share_memory(a, b):
                return False
    return True


class EmulatedKernel:
    """Called like a ``cupy.RawKernel``: ``kernel(grid, block, args)``. The
    arguments are checked against the kernel's parameters (count, size, and
    pointer / integer / floating point), which a GPU would not do: there a
    mismatch reads the wrong bytes. With ``guard`` ("end" or "start") an eager
    launch faults on any access past that end of an array it was handed."""

    def __init__(self, lib, symbol, expression, reverse_order=False, guard=None):
        self._fn, self.expression, self._reverse = getattr(lib, symbol), expression, reverse_order
        self._guard, self._lib = guard, lib
        self._packs = "_packed<" in expression or "row_pack" in expression   # 16-byte accesses
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
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        if self._guard and _recording is None and _guardable(arrays):
            return self._run_guarded(grid, block, args)
        keep = list(args)                          # the arrays stay alive with a graph

        def run():
            self._invoke(grid, block, values)
            return keep

        _launch(run)

    def _invoke(self, grid, block, values, fault_ok=False):
        """Runs the kernel on these argument values (as kernelParams). A bad
        status raises, except a fault (3) where ``fault_ok``: it is returned."""
        pointers = (ctypes.c_void_p * max(1, len(values)))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        status = self._fn(*grid, *block, pointers, int(self._reverse))
        if status == 3 and fault_ok:
            return status
        if status:
            raise EmulationError(f"{self.expression}: {_LAUNCH_ERRORS[status]}")
        return status

    def _run_guarded(self, grid, block, args):
        copies = {}                                # one copy per distinct array
        for a in args:
            if isinstance(a, np.ndarray) and (a.ctypes.data, a.nbytes) not in copies:
                copies[(a.ctypes.data, a.nbytes)] = _Guarded(a, self._guard == "start", self._packs)
        values = [_c_value(copies[(a.ctypes.data, a.nbytes)].copy if isinstance(a, np.ndarray) else a)
                  for a in args]
        if self._invoke(grid, block, values, fault_ok=True) == 3:
            info = self._lib.emu_fault_info
            info.restype = ctypes.c_void_p
            was_write = ctypes.c_int()
            address = info(ctypes.byref(was_write)) or 0
            where = [d for i, a in enumerate(args) if isinstance(a, np.ndarray)
                     for d in [copies[(a.ctypes.data, a.nbytes)].describe(address, i, was_write.value)]
                     if d is not None]
            raise EmulationError(f"{self.expression}: out-of-bounds memory access: "
                                 + (where[0] if where else f"address {address:#x}, in no argument"))
        for i, a in enumerate(args):
            if isinstance(a, np.ndarray) and copies[(a.ctypes.data, a.nbytes)].gap_written():
                raise EmulationError(f"{self.expression}: out-of-bounds memory access: a write past "
                                     f"the end of argument {i}, {a.dtype}{list(a.shape)} of "
                                     f"{a.nbytes} bytes")
        for guarded in copies.values():
            guarded.array[...] = guarded.copy


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

    def __init__(self, reverse_order=False, guard=None):
        self.reverse_order, self.guard = reverse_order, guard
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
                lib, entries[expression], expression, self.reverse_order, self.guard)
        return kernel

    def activation_backward(self, activation):
        return EmulatedElementwise(activation)


class EmulatedCupyBackend(CupyBackend):
    """The CuPy backend's methods and launch code, on NumPy arrays, with the
    kernels emulated on the CPU (a small pretend GPU of ``sms`` SMs), and
    streams that capture graphs. Its matrix products take the CuPy backend's
    own route: cupy.matmul is NumPy's, and gpubp.cublas.Gemm calls a stand-in
    for libcublas built from cuBLAS's header (NumPy's products where it cannot
    be built); only bf16's rounding of the factors, while a graph is captured,
    is this class's own (deferred to the launch). Eager launches fault on an access past the end of an array (past
    its start in reverse order), where ``guard`` is on."""

    name = "cupy"

    def __init__(self, sms=1, reverse_order=False, guard=True):
        self.xp = np
        self._cupy = EmulatedCupy()
        self._sms = sms
        self._max_blocks = 8 * sms          # fewer blocks than a GPU: more grid-stride work each
        self._dl_blocks_per_sm = 6
        self._unused_labels = np.zeros(1, dtype=np.int32)
        self._unused_loss = np.zeros(1, dtype=np.float64)
        self._unused_order = np.zeros(1, dtype=np.int64)
        self._work = WorkArrays(_DeviceMemory)
        self._kernels = EmulatedKernels(reverse_order,
                                        ("start" if reverse_order else "end") if guard else None)
        self._local = threading.local()
        self.gemm_problem = None
        self._graphs_checked, self._graphs_problem = False, None

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

    def new_stream(self, step=False):
        return EmulatedStream()

    def launchable(self, graph):
        return graph            # one stream of work here: no priorities to keep

    @staticmethod
    def address(a):
        return a.ctypes.data

    # One stream of work here: what runs beside the backward pass runs in turn
    # (the tests check which ranges are updated when, and that the bits agree).
    # What is pending is kept as on a GPU: the GEMMs made meanwhile ask for
    # fewer SMs where _BESIDE_SMS is set.
    def beside(self, fn, lane="updates"):
        fn()
        token = object()
        self._local.pending = getattr(self._local, "pending", []) + [token]
        return token

    def join(self, token):
        self._local.pending.remove(token)

    def rejoin(self):
        self._local.pending = []

    def _direct_gemm(self):
        """gpubp.cublas.Gemm on the cuBLAS stand-in, or NumPy's products where
        the stand-in cannot be built (no C compiler or no cuBLAS header)."""
        gemm = getattr(self._local, "gemm", None)
        if gemm is None:
            lib = fake_cublas()
            if lib is None:
                gemm = self._numpy_gemm
            else:
                with host_cupy(self._cupy):
                    gemm = _on_host_arrays(Gemm(lib=_DeferredGemms(lib)))
            self._local.gemm = gemm
        return gemm

    def matmul(self, a, b, out, transa=False, transb=False, precision="float32"):
        if precision != "bf16" or _recording is None:
            # Eager (or not bf16): the CuPy backend's own route, its rounding included.
            return super().matmul(a, b, out, transa=transa, transb=transb, precision=precision)
        # While a graph is captured: bf16 rounds its operands with array operations,
        # which NumPy runs at once where CuPy's would be captured: here they run at
        # launch. Their work arrays are taken now, as a graph bakes in their addresses.
        rounded = self._work(a, "gemm_a"), self._work(b, "gemm_b")
        capturable = getattr(self._local, "capturable", False)
        product = self._direct_gemm() if capturable else self._numpy_gemm
        sms = self._gemm_sms(precision)

        def run():
            x, y = round_to(np, a, "bf16", rounded[0]), round_to(np, b, "bf16", rounded[1])
            product(x, y, out, transa=transa, transb=transb, sms=sms)

        _launch(run)
        return out

    @staticmethod
    def _numpy_gemm(a, b, out, transa=False, transb=False, precision="float32", sms=0):
        rounded = None if precision == "float32" else (np.empty_like(a), np.empty_like(b))

        def run():
            x, y = (a, b) if rounded is None else (round_to(np, a, precision, rounded[0]),
                                                   round_to(np, b, precision, rounded[1]))
            np.matmul(x.T if transa else x, y.T if transb else y, out=out)

        _launch(run)
        return out

    def __repr__(self):
        return "EmulatedCupyBackend()"


def _on_host_arrays(gemm):
    """gpubp.cublas.Gemm on NumPy arrays, seen with CuPy's ``.data.ptr``."""

    def call(a, b, out, transa=False, transb=False, precision="float32", sms=0):
        gemm(host(a), host(b), host(out), transa=transa, transb=transb, precision=precision,
             sms=sms)
        return out

    return call


def emulated_backend(sms=1, reverse_order=False, guard=True):
    """The emulated CuPy backend; the calling test is skipped where no host C++
    compiler is found."""
    if compiler() is None or os.name != "posix":
        import pytest

        pytest.skip("the kernels are emulated with a host C++ compiler on a POSIX system "
                    "(ucontext fibers, guard pages)")
    return EmulatedCupyBackend(sms, reverse_order, guard)
