"""Capturing a step into a CUDA graph with CuPy, keeping the first error."""

from __future__ import annotations

import contextlib


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
