"""Matrix products through the cuBLAS C API on CuPy arrays, capturable in a CUDA graph.

CuPy refuses every cuBLAS call while a stream is capturing (its ``setStream``
raises ``NotImplementedError``). This module calls cuBLAS itself: a handle of
its own bound to the current stream, a preallocated workspace per stream (so
that cuBLAS allocates nothing while capturing; ``cublasSetStream`` resets the
workspace, so it is set again after every stream change, as PyTorch does), and
``cublasGemmEx`` on the arrays' device pointers. libcublas is found by ``cuda-pathfinder``, the locator CuPy itself
depends on. Row-major ``C = op(A) op(B)`` is computed as the column-major
``C^T = op(B)^T op(A)^T``, so no operand is copied or transposed.

The CuPy backend uses it for TF32 products and inside ``capturable()`` (the
trainer's CUDA-graph mode); eager float32 products stay with cupy.matmul (to
move them here is measured first: benchmarks/NOTES.md). A graph captured with a Gemm holds
its workspace pointers: keep the Gemm alive as long as the graph.
"""

from __future__ import annotations

import ctypes
import functools
import sys

import numpy as np

# cublas_api.h and library_types.h
STATUS_SUCCESS = 0
OP_N, OP_T = 0, 1
CUDA_R_32F, CUDA_R_64F = 0, 1
COMPUTE_32F, COMPUTE_32F_FAST_TF32, COMPUTE_64F = 68, 77, 70
GEMM_DEFAULT = -1
# cuBLAS asks for 32 MiB of workspace on Hopper.
WORKSPACE_BYTES = 32 << 20

# (array dtype, precision) -> (cudaDataType, cublasComputeType_t, ctypes scalar)
_MODES = {
    ("float32", "float32"): (CUDA_R_32F, COMPUTE_32F, ctypes.c_float),
    ("float32", "tf32"): (CUDA_R_32F, COMPUTE_32F_FAST_TF32, ctypes.c_float),
    ("float64", "float32"): (CUDA_R_64F, COMPUTE_64F, ctypes.c_double),
}
PRECISIONS = ("float32", "tf32")


class CublasError(RuntimeError):
    """A cuBLAS call failed; the message names the call and cuBLAS's reason."""


@functools.cache
def library():
    """libcublas, loaded once, with the signatures this module calls."""
    from cuda.pathfinder import load_nvidia_dynamic_lib

    return declare(ctypes.CDLL(load_nvidia_dynamic_lib("cublas").abs_path))


def declare(lib):
    """Give ``lib``'s functions the C signatures of cublas_api.h. The tests give
    them also to a stand-in for libcublas compiled against that header
    (``tests/emulator/fake_cublas.c``), and call it through them."""
    vp, i = ctypes.c_void_p, ctypes.c_int
    lib.cublasCreate_v2.argtypes = [ctypes.POINTER(vp)]
    lib.cublasDestroy_v2.argtypes = [vp]
    lib.cublasSetStream_v2.argtypes = [vp, vp]
    lib.cublasSetWorkspace_v2.argtypes = [vp, vp, ctypes.c_size_t]
    lib.cublasGetStatusString.argtypes = [i]
    lib.cublasGetStatusString.restype = ctypes.c_char_p
    lib.cublasSetSmCountTarget.argtypes = [vp, i]
    lib.cublasGemmEx.argtypes = [vp, i, i, i, i, i, vp, vp, i, i, vp, i, i, vp, vp, i, i, i, i]
    for name in ("cublasCreate_v2", "cublasDestroy_v2", "cublasSetStream_v2",
                 "cublasSetWorkspace_v2", "cublasSetSmCountTarget", "cublasGemmEx"):
        getattr(lib, name).restype = i
    return lib


def _call(lib, name, *args):
    """Call ``lib``'s function ``name``; a status other than success raises CublasError."""
    status = getattr(lib, name)(*args)
    if status != STATUS_SUCCESS:
        reason = lib.cublasGetStatusString(status).decode()
        raise CublasError(f"{name} failed with cuBLAS status {status}: {reason}")


def _row_stride(name, x):
    """Elements from one row of the matrix ``x`` to the next (cuBLAS's leading
    dimension of the row-major matrix taken as column-major): its columns
    where it is C-contiguous; else its rows must each be contiguous, as in a
    slice of columns ``x[:, lo:hi]``."""
    if x.ndim != 2:
        raise ValueError(f"gemm operand {name} must be a matrix")
    if x.flags.c_contiguous:
        return max(1, x.shape[1])
    step, item = x.strides, x.dtype.itemsize
    if step[1] != item or step[0] % item or step[0] // item < x.shape[1]:
        raise ValueError(f"gemm operand {name} must be a matrix whose rows are each contiguous "
                         f"(C-contiguous, or a slice of its columns); got strides {step}")
    return step[0] // item


class Gemm:
    """``gemm(a, b, out, transa=False, transb=False, precision="float32", sms=0)``
    writes ``op(a) @ op(b)`` into ``out`` on the current CuPy stream.

    a, b and out are CuPy matrices of one dtype (float32, or float64 with
    precision "float32"): out C-contiguous, a and b C-contiguous or a slice of
    a C-contiguous matrix's columns. "tf32" runs float32 products on the
    tensor cores in TF32 with float32 accumulation. ``sms`` > 0 asks cuBLAS for a kernel
    made for that many SMs (``cublasSetSmCountTarget``), leaving the others to
    work on another stream; 0 is every SM. ``lib`` is the cuBLAS library to call:
    libcublas as :func:`library` loads it, unless given (the tests give a
    stand-in, with :func:`declare`'s signatures).
    """

    def __init__(self, workspace_bytes=WORKSPACE_BYTES, lib=None):
        lib = library() if lib is None else lib
        handle = ctypes.c_void_p()
        _call(lib, "cublasCreate_v2", ctypes.byref(handle))
        self._lib, self._handle = lib, handle
        import cupy

        self._cupy = cupy
        self._workspace_bytes = workspace_bytes
        self._workspaces = {}   # stream pointer -> workspace; graphs captured with
        self._stream = None     # this Gemm hold these pointers: keep it alive with them
        self._sms = 0           # the handle's SM count target (0: every SM)
        self._scalars = {t: (t(1.0), t(0.0)) for t in (ctypes.c_float, ctypes.c_double)}

    def _bind(self, stream):
        _call(self._lib, "cublasSetStream_v2", self._handle, stream)
        ws = self._workspaces.get(stream)
        if ws is None:
            ws = self._workspaces[stream] = self._cupy.empty(self._workspace_bytes, dtype=np.uint8)
        _call(self._lib, "cublasSetWorkspace_v2", self._handle, ws.data.ptr, self._workspace_bytes)
        self._stream = stream
        self._sms = None        # set the SM count target again: cuBLAS does not say if it stays

    def __call__(self, a, b, out, transa=False, transb=False, precision="float32", sms=0):
        if self._handle is None:
            raise RuntimeError("this Gemm is closed")
        if isinstance(sms, bool) or not (isinstance(sms, (int, np.integer)) and 0 <= sms < 2**31):
            raise ValueError(f"sms must be an int >= 0 (0: every SM); got {sms!r}")
        mode = _MODES.get((out.dtype.name, precision))
        if mode is None:
            raise ValueError(f"no GEMM for dtype {out.dtype} with precision {precision!r}")
        if not (a.dtype == b.dtype == out.dtype):
            raise TypeError(f"gemm operands must share a dtype; got {a.dtype}, {b.dtype}, {out.dtype}")
        if out.ndim != 2 or not out.flags.c_contiguous:
            raise ValueError("gemm operand out must be a C-contiguous matrix")
        lda, ldb = _row_stride("a", a), _row_stride("b", b)
        M, N = out.shape
        K = a.shape[0] if transa else a.shape[1]
        if (a.shape[1] if transa else a.shape[0]) != M or (b.shape[1] if transb else b.shape[0]) != K \
                or (b.shape[0] if transb else b.shape[1]) != N:
            raise ValueError(f"gemm shapes do not chain: {a.shape}{'T' if transa else ''} @ "
                             f"{b.shape}{'T' if transb else ''} -> {out.shape}")
        if max(M, N, K) >= 2**31:
            raise ValueError(f"gemm dimensions must be below 2**31; got M={M}, N={N}, K={K}")
        if M == 0 or N == 0:
            return out
        if K == 0:
            out.fill(0)
            return out
        stream = self._cupy.cuda.get_current_stream().ptr
        if stream != self._stream:
            self._bind(stream)
        if sms != self._sms:
            _call(self._lib, "cublasSetSmCountTarget", self._handle, int(sms))
            self._sms = int(sms)
        dtype, compute, scalar = mode
        one, zero = self._scalars[scalar]
        _call(self._lib, "cublasGemmEx",
              self._handle, OP_T if transb else OP_N, OP_T if transa else OP_N, N, M, K,
              ctypes.byref(one), b.data.ptr, dtype, ldb, a.data.ptr, dtype, lda,
              ctypes.byref(zero), out.data.ptr, dtype, N, compute, GEMM_DEFAULT)
        return out

    def close(self):
        """Destroy the handle (it synchronises the device: never while capturing)."""
        handle, self._handle = getattr(self, "_handle", None), None
        if handle is not None and handle.value:
            _call(self._lib, "cublasDestroy_v2", handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if not sys.is_finalizing():
            try:
                self.close()
            except Exception:
                pass
