"""Capturing a step into a CUDA graph with CuPy, keeping the first error."""

from __future__ import annotations


def capture(stream, fn):
    """Run ``fn`` under stream capture on ``stream`` (the current stream inside
    it) and return the CUDA graph. If ``fn`` fails, or the capture does, the
    capture is ended and the first error is raised; nothing of ``fn`` ran."""
    failure = None
    stream.begin_capture()
    try:
        fn()
    except Exception as exc:
        failure = exc
    try:
        graph = stream.end_capture()
    except Exception as exc:
        failure = failure or exc
    if failure is not None:
        raise failure
    return graph
