"""Capturing a step into a CUDA graph with CuPy, keeping the first error; and
launching one with its kernels' own priorities."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys


class CaptureAllocated(RuntimeError):
    """The captured function asked CuPy's memory pool for memory. A graph keeps
    the addresses it was captured with, and the pool knows nothing of graphs: it
    would hand that memory to someone else once the array is freed, while every
    replay still writes there. So such a graph is refused."""


def _pool_requests():
    """A context counting requests to CuPy's memory pool on this thread (every
    ``cupy.empty``, cached or not), as ``.n``; counts nothing without CuPy."""
    try:
        from cupy.cuda.memory_hook import MemoryHook
    except ImportError:
        counter = contextlib.nullcontext()
        counter.n = 0
        return counter

    class PoolRequests(MemoryHook):
        name = "gpubp_capture_allocations"

        def __init__(self):
            self.n = 0

        def malloc_preprocess(self, **kwargs):
            self.n += 1

    return PoolRequests()


def capture(stream, fn):
    """Run ``fn`` under stream capture on ``stream``, made the current stream,
    and return the CUDA graph. If ``fn`` fails (an interrupt included), or the
    capture does, the capture is ended and the first error is raised; nothing of
    ``fn`` ran. If ``fn`` allocated from CuPy's pool, :class:`CaptureAllocated`."""
    failure = graph = None
    requests = _pool_requests()
    with stream:
        stream.begin_capture()
        try:
            with requests:
                fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the capture ends
            failure = exc
        finally:
            try:
                graph = stream.end_capture()
            except Exception as exc:
                failure = failure or exc
    if failure is not None:
        raise failure
    if requests.n:
        raise CaptureAllocated(
            f"the step asked CuPy's memory pool for memory {requests.n} time(s) while captured")
    return graph


# cuda.h: CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY. A graph otherwise runs
# every kernel at the priority of the stream it is launched into; with it, each
# kernel keeps the priority of the stream it was captured from.
USE_NODE_PRIORITY = 8


@functools.cache
def driver():
    """The CUDA driver (its soname is fixed by the driver's installation), with
    the signatures of cuda.h this module calls."""
    return declare_driver(ctypes.CDLL("libcuda.so.1"))


def declare_driver(lib):
    """Give ``lib``'s functions cuda.h's signatures (the tests give them to a
    stand-in compiled against cuda.h, ``tests/emulator/fake_cuda_driver.c``)."""
    lib.cuGraphInstantiateWithFlags.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p,
                                                ctypes.c_ulonglong]
    lib.cuGraphInstantiateWithFlags.restype = ctypes.c_int
    lib.cuGetErrorString.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    lib.cuGetErrorString.restype = ctypes.c_int
    return lib


class NodePriorityGraph:
    """A captured CuPy graph, instantiated to run each kernel at the priority
    of the stream it was captured from (``cuGraphInstantiateWithFlags`` with
    USE_NODE_PRIORITY; CuPy instantiates without flags). ``launch()`` launches
    it on the current stream, as CuPy's ``Graph.launch`` does. It keeps the
    CuPy graph, which owns the captured nodes, alive with it."""

    def __init__(self, graph, lib=None, runtime=None):
        import cupy

        self._cupy = cupy
        self._runtime = cupy.cuda.runtime if runtime is None else runtime
        lib = driver() if lib is None else lib
        self._graph, self._exec = graph, None
        handle = ctypes.c_void_p()
        status = lib.cuGraphInstantiateWithFlags(ctypes.byref(handle), graph.graph,
                                                 USE_NODE_PRIORITY)
        if status != 0:
            reason = ctypes.c_char_p()
            lib.cuGetErrorString(status, ctypes.byref(reason))
            raise RuntimeError(f"cuGraphInstantiateWithFlags failed with CUDA error {status}: "
                               f"{(reason.value or b'unknown').decode()}")
        self._exec = handle.value

    def launch(self, stream=None):
        stream = self._cupy.cuda.get_current_stream() if stream is None else stream
        self._runtime.graphLaunch(self._exec, stream.ptr)

    def __del__(self):
        handle, self._exec = getattr(self, "_exec", None), None
        if handle and not sys.is_finalizing():
            try:
                self._runtime.graphExecDestroy(handle)
            except Exception:
                pass
