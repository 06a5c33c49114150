"""A stand-in for libcublas on the CPU (``tests/emulator/fake_cublas.c``), and
what gpubp.cublas needs of CuPy to run on it: host arrays with a ``.data.ptr``
and a current stream.

The stand-in is compiled against cuBLAS's own ``cublas_api.h`` (found by
cuda-pathfinder, as gpubp finds libcublas) and called through the ctypes
signatures ``gpubp.cublas.declare`` gives the real library, so the binding, the
row-major to column-major argument mapping and the stream and workspace
handling of ``gpubp.cublas.Gemm`` run without a GPU.

    lib = fake_cublas()               # None where no C compiler or no usable cuBLAS header is found
    with host_cupy(FakeCupy()):
        gemm = Gemm(lib=lib)
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).resolve().parent / "emulator" / "fake_cublas.c"


class FakeGemmCall(ctypes.Structure):
    """The arguments of the stand-in's last cublasGemmEx, as ``fake_cublas_last()`` keeps them."""

    _fields_ = ([(name, ctypes.c_int) for name in
                 ("transa", "transb", "m", "n", "k", "lda", "ldb", "ldc", "atype", "btype",
                  "ctype", "compute", "algo")]
                + [("alpha", ctypes.c_double), ("beta", ctypes.c_double),
                   ("A", ctypes.c_void_p), ("B", ctypes.c_void_p), ("C", ctypes.c_void_p),
                   ("stream", ctypes.c_void_p), ("workspace", ctypes.c_void_p),
                   ("workspace_bytes", ctypes.c_size_t), ("sm_count_target", ctypes.c_int)])


def _candidate_header_folders():
    try:
        from cuda.pathfinder import find_nvidia_header_directory

        folders = [find_nvidia_header_directory(name) for name in ("cublas", "cudart")]
        if all(folders):
            yield folders
    except Exception:
        pass
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cublas_api.h").exists():
            yield [str(Path(root) / "include")]


@functools.cache
def header_folders():
    """The folders of cublas_api.h and of the CUDA runtime headers it includes, or
    None. A set that does not compile on its own (a wheel that ships part of the
    runtime's headers, say) is passed over: that is the machine's, not the stand-in's."""
    cc = c_compiler()
    if cc is None:
        return None
    for folders in _candidate_header_folders():
        with tempfile.TemporaryDirectory() as tmp:
            probe = Path(tmp) / "probe.c"
            probe.write_text("#define CUBLASAPI\n#include <cublas_api.h>\nint main(void) { return 0; }\n")
            done = subprocess.run([cc, "-std=c11", "-fsyntax-only",
                                   *(f"-I{folder}" for folder in folders), str(probe)],
                                  capture_output=True, text=True, timeout=60)
        if done.returncode == 0:
            return folders
    return None


def c_compiler():
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def build(source_text, out_path):
    """Compile a stand-in from ``source_text``; (return code, compiler's messages)."""
    cc, folders = c_compiler(), header_folders()
    if cc is None or folders is None:
        return None, "no C compiler or no cuBLAS header"
    src = out_path.with_suffix(".c")
    src.write_text(source_text)
    cmd = [cc, "-std=c11", "-O2", "-Wall", "-Werror", "-fPIC", "-shared",
           *(f"-I{folder}" for folder in folders), str(src), "-o", str(out_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    src.unlink(missing_ok=True)
    return done.returncode, done.stderr


def _built(source, header):
    """The shared library built from ``source`` (tests/emulator/*.c), cached on
    disk by its text and the header it is held to."""
    digest = hashlib.sha256(source.read_bytes() + header.read_bytes()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / "gpubp-cuda-emulator"
    folder.mkdir(exist_ok=True)
    path = folder / f"{source.stem}-{digest}.so"
    if not path.exists():
        tmp = folder / f"{source.stem}-{digest}.{os.getpid()}.tmp.so"
        code, messages = build(source.read_text(), tmp)
        if code != 0:
            raise RuntimeError(f"tests/emulator/{source.name} does not build:\n{messages}")
        tmp.replace(path)
    return path


@functools.cache
def fake_cublas():
    """The stand-in, built once and cached on disk by its source and the header,
    with gpubp.cublas's signatures and its own; None where it cannot be built."""
    from gpubp import cublas

    folders = header_folders()
    if folders is None or c_compiler() is None:
        return None
    lib = cublas.declare(ctypes.CDLL(str(_built(SOURCE, Path(folders[0]) / "cublas_api.h"))))
    lib.fake_cublas_last.restype = ctypes.POINTER(FakeGemmCall)
    lib.fake_cublas_problem.restype = ctypes.c_char_p
    lib.fake_cublas_constant.argtypes = [ctypes.c_char_p]
    lib.fake_cublas_constant.restype = ctypes.c_longlong
    lib.fake_cublas_compute.argtypes = [ctypes.POINTER(FakeGemmCall)]
    return lib


def last_call(lib):
    """A copy of the stand-in's last cublasGemmEx arguments."""
    return FakeGemmCall.from_buffer_copy(lib.fake_cublas_last().contents)


def counts(lib):
    """(cublasGemmEx calls, products computed) so far: a replayed graph computes
    products without a call."""
    return lib.fake_cublas_gemm_calls(), lib.fake_cublas_products()


class HostArray(np.ndarray):
    """A NumPy array with CuPy's ``.data.ptr``, the address gpubp.cublas passes on."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])


def host(a):
    return a.view(HostArray)


class FakeCupy:
    """What gpubp.cublas.Gemm asks of CuPy: ``empty`` (its workspaces, counted in
    ``.allocations``) and the current stream, which ``.stream`` sets."""

    def __init__(self):
        self.allocations = 0
        self.stream = types.SimpleNamespace(ptr=0)        # the legacy default stream
        self.cuda = types.SimpleNamespace(get_current_stream=lambda: self.stream)

    def empty(self, shape, dtype):
        self.allocations += 1
        return host(np.empty(shape, dtype))


@contextlib.contextmanager
def host_cupy(fake):
    """``import cupy`` gives ``fake`` within the block (gpubp.cublas.Gemm imports it)."""
    saved = sys.modules.get("cupy")
    sys.modules["cupy"] = fake
    try:
        yield fake
    finally:
        if saved is None:
            del sys.modules["cupy"]
        else:
            sys.modules["cupy"] = saved


DRIVER_SOURCE = Path(__file__).resolve().parent / "emulator" / "fake_cuda_driver.c"


@functools.cache
def fake_cuda_driver():
    """The stand-in for the CUDA driver's graph instantiation, built against the
    toolkit's cuda.h (beside cublas_api.h's runtime headers) and cached on disk,
    with gpubp.graphs's signatures and its own; None where it cannot be built."""
    from gpubp import graphs

    folders = header_folders()
    header = next((Path(f) / "cuda.h" for f in folders or [] if (Path(f) / "cuda.h").exists()), None)
    if header is None or c_compiler() is None:
        return None
    lib = graphs.declare_driver(ctypes.CDLL(str(_built(DRIVER_SOURCE, header))))
    lib.fake_cuda_last_graph.restype = ctypes.c_void_p
    lib.fake_cuda_last_flags.restype = ctypes.c_ulonglong
    lib.fake_cuda_constant.argtypes = [ctypes.c_char_p]
    lib.fake_cuda_constant.restype = ctypes.c_longlong
    return lib
