"""Graphs launched with their kernels' own priorities (gpubp.graphs.NodePriorityGraph):
without a GPU, against a stand-in for the CUDA driver built from cuda.h
(tests/_fake_cublas.py); on a GPU, a graph captured on two streams of
different priorities computes what CuPy's own instantiation does."""

import types

import numpy as np
import pytest

from _fake_cublas import FakeCupy, fake_cuda_driver, host_cupy
from _helpers import requires_cupy
from gpubp import graphs


@pytest.fixture
def driver():
    lib = fake_cuda_driver()
    if lib is None:
        pytest.skip("the CUDA driver stand-in needs a C compiler and the toolkit's cuda.h")
    return lib


class FakeRuntime:
    """What NodePriorityGraph asks of cupy.cuda.runtime: launches and destroys, recorded."""

    def __init__(self):
        self.launches, self.destroyed = [], []

    def graphLaunch(self, exec_, stream):  # noqa: N802 - CuPy's name
        self.launches.append((exec_, stream))

    def graphExecDestroy(self, exec_):  # noqa: N802 - CuPy's name
        self.destroyed.append(exec_)


def test_the_flag_equals_that_of_cuda_h(driver):
    assert graphs.USE_NODE_PRIORITY == driver.fake_cuda_constant(b"USE_NODE_PRIORITY")


def test_a_graph_is_instantiated_with_node_priorities_and_launched_on_the_current_stream(driver):
    """cuGraphInstantiateWithFlags gets CuPy's graph handle and USE_NODE_PRIORITY;
    each launch goes to the current stream (or the one given); the executable
    graph is destroyed with its wrapper, and the CuPy graph is kept until then."""
    runtime, fake = FakeRuntime(), FakeCupy()
    captured = types.SimpleNamespace(graph=0x7A000)
    before = driver.fake_cuda_instantiations()
    with host_cupy(fake):
        graph = graphs.NodePriorityGraph(captured, lib=driver, runtime=runtime)
    assert driver.fake_cuda_instantiations() == before + 1
    assert (driver.fake_cuda_last_graph(), driver.fake_cuda_last_flags()) == (0x7A000, 8)
    handle = graph._exec
    assert handle and graph._graph is captured
    fake.stream = types.SimpleNamespace(ptr=0x30)
    graph.launch()
    graph.launch(types.SimpleNamespace(ptr=0x40))
    fake.stream = types.SimpleNamespace(ptr=0x50)
    graph.launch()
    assert runtime.launches == [(handle, 0x30), (handle, 0x40), (handle, 0x50)]
    assert runtime.destroyed == []
    del graph
    assert runtime.destroyed == [handle]


def test_a_failed_instantiation_raises_the_drivers_reason(driver):
    runtime = FakeRuntime()
    with host_cupy(FakeCupy()), pytest.raises(RuntimeError, match="CUDA error 1: invalid argument"):
        graphs.NodePriorityGraph(types.SimpleNamespace(graph=0), lib=driver, runtime=runtime)
    assert runtime.destroyed == []


@requires_cupy
def test_node_priorities_leave_the_results_as_they_are(rng):
    """A graph captured on a main stream of the highest priority with a branch
    on one of the lowest, launched through NodePriorityGraph: the same results
    as CuPy's own graph of the same capture, replay after replay."""
    import cupy

    main = cupy.cuda.Stream(non_blocking=True, priority=-1000)
    side = cupy.cuda.Stream(non_blocking=True)
    with main:
        x = cupy.asarray(rng.normal(size=(1 << 16,)).astype(np.float32))
        y, z = cupy.empty_like(x), cupy.empty_like(x)

        def step():
            fork = cupy.cuda.Event(disable_timing=True)
            fork.record(main)
            side.wait_event(fork)
            with side:
                cupy.multiply(x, 2.0, out=z)
            join = cupy.cuda.Event(disable_timing=True)
            join.record(side)
            cupy.sin(x, out=y)
            main.wait_event(join)
            cupy.add(y, z, out=y)

        step()
        main.synchronize()
        captured = graphs.capture(main, step)
        ours = graphs.NodePriorityGraph(captured)
        for launch in (captured.launch, ours.launch):
            for _ in range(2):
                x[...] = cupy.asarray(rng.normal(size=x.shape).astype(np.float32))
                y.fill(np.nan)
                launch()
                main.synchronize()
                host = cupy.asnumpy(x)
                np.testing.assert_allclose(cupy.asnumpy(y), np.sin(host) + 2 * host, rtol=1e-6,
                                           atol=1e-6)
