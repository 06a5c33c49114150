"""CupyBackend.beside, join and rejoin (the work run beside the backward pass) with
a stand-in for ``cupy.cuda`` that keeps CUDA's rules for events and stream capture:
a stream that waits on an event recorded in a capture joins that capture, and a
stream outside the capture may not wait on such an event. The emulated backend
runs this work in turn, so it checks which work runs when; this checks the events.
On a GPU, tests/test_trainer.py trains with the work beside, graphs included."""

import threading
import types

import pytest

from gpubp.backends.cupy_backend import CupyBackend


class CaptureIsolation(RuntimeError):
    """cudaErrorStreamCaptureIsolation: a dependency across a capture's boundary."""


class FakeEvent:
    def __init__(self, disable_timing=False):
        self.recorded_in = None         # the capture it was recorded in, if any

    def record(self, stream):
        self.recorded_in = stream.capture


class FakeStream:
    def __init__(self, cuda, non_blocking=False, priority=0):
        self.cuda, self.capture, self.waited = cuda, None, []

    def __enter__(self):
        self.cuda.current.append(self)
        return self

    def __exit__(self, *exc):
        self.cuda.current.pop()

    def is_capturing(self):
        return self.capture is not None

    def wait_event(self, event):
        capture = event.recorded_in
        if capture is not None:
            if capture["ended"]:
                raise CaptureIsolation("waiting on an event of a capture that has ended")
            if self.capture is None:
                self.capture = capture          # the stream joins the capture
            elif self.capture is not capture:
                raise CaptureIsolation("waiting on an event of another capture")
        self.waited.append(event)


class FakeCuda:
    """cupy.cuda as the three methods use it."""

    def __init__(self):
        self.main = FakeStream(self)
        self.current = [self.main]
        self.Event = FakeEvent
        self.Stream = lambda **kw: FakeStream(self, **kw)

    def get_current_stream(self):
        return self.current[-1]

    def begin_capture(self):
        self.main.capture = {"ended": False}

    def end_capture(self, streams):
        """The capture ends (or fails): every stream that joined it leaves it."""
        self.main.capture["ended"] = True
        for stream in (self.main, *streams):
            stream.capture = None


class Backend(CupyBackend):
    def __init__(self, cuda):                   # no device: only what beside needs
        self._cupy = types.SimpleNamespace(cuda=cuda)
        self._local = threading.local()


@pytest.fixture
def cuda():
    return FakeCuda()


def _sides(backend):
    return list(backend._local.sides.values())


def test_rejoin_waits_for_the_work_beside(cuda):
    backend = Backend(cuda)
    ran = []
    first = backend.beside(lambda: ran.append(cuda.get_current_stream()))
    second = backend.beside(lambda: ran.append(cuda.get_current_stream()), lane="backward")
    assert ran[0] is not cuda.main and ran[1] not in (cuda.main, ran[0])   # a stream per lane
    backend.join(first)
    assert cuda.main.waited == [first] and backend._local.pending == [(second, False)]
    backend.rejoin()
    assert cuda.main.waited == [first, second] and backend._local.pending == []


def test_inside_a_capture_the_work_beside_is_joined_into_the_graph(cuda):
    backend = Backend(cuda)
    backend.beside(lambda: None)                # an eager warm-up step makes the streams
    backend.rejoin()
    cuda.begin_capture()
    token = backend.beside(lambda: None)
    backend.join(token)
    last = backend.beside(lambda: None, lane="backward")
    backend.rejoin()                            # before the capture ends, as _train_step does
    assert cuda.main.waited[-2:] == [token, last]
    cuda.end_capture(_sides(backend))


def test_a_capture_that_fails_leaves_nothing_for_the_eager_step_to_wait_on(cuda):
    """The trainer's fall-back: a step raises while captured, after some work was put
    beside it and before its rejoin; the capture is ended, and the step runs again
    eagerly. Its rejoin must not wait on the dropped graph's events."""
    backend = Backend(cuda)
    backend.beside(lambda: None)
    backend.rejoin()
    cuda.begin_capture()
    backend.beside(lambda: None)
    backend.beside(lambda: None, lane="backward")
    cuda.end_capture(_sides(backend))           # the step raised: capture() ends it
    eager = backend.beside(lambda: None)        # the same step, eagerly
    backend.rejoin()
    assert cuda.main.waited[-1] is eager and backend._local.pending == []
    # Without forgetting them, the wait is what CUDA refuses:
    stale = FakeEvent()
    stale.recorded_in = {"ended": True}
    with pytest.raises(CaptureIsolation):
        cuda.main.wait_event(stale)
