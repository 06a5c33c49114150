"""What the benchmark times: gpubp's forward pass, training step and epoch on
a backend, and the floor, the step's GEMMs alone through the same matmul seam."""

from __future__ import annotations

import numpy as np

from ..graphs import capture
from ..model import MLP
from ..optim import Adam
from ..trainer import Trainer


def synthetic_data(config, n, seed=0):
    """A fixed random data set that fits the config's loss (never zeros)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, config.layers[0])).astype(np.float32)
    k = config.layers[-1]
    if config.loss == "cross_entropy":
        Y = rng.integers(0, k, size=n)
    elif config.output == "sigmoid":
        Y = rng.uniform(size=(n, k)).astype(np.float32)
    else:
        Y = rng.normal(size=(n, k)).astype(np.float32)
    return X, Y


def _captured(backend, fn):
    """``fn`` captured once as a CUDA graph (after a warm-up call that compiles and
    allocates), as the trainer does, and what the graph needs kept alive. Where
    graphs cannot work (the trainer's reasons: gpubp.cublas missing or failing its
    check, a failed capture) it raises, and the benchmark lists the row as skipped."""
    problem = backend.graphs_problem()
    if problem is not None:
        raise RuntimeError(f"no CUDA graphs: {problem}")
    stream = backend.new_stream(step=True)
    backend.synchronize_device()
    try:
        with stream, backend.capturable():
            fn()
            graph = backend.launchable(capture(stream, fn))
    finally:
        stream.synchronize()
    # The arrays the graph writes, and its stream: a later capture's stream cannot
    # take its address, and with it the cuBLAS handle's binding and workspace.
    return graph, (backend._work.live(), stream)


class GpubpWorkload:
    """An MLP with Adam on one backend, its data on the device."""

    def __init__(self, config, backend, n_batches, precision="float32", graphs=False):
        self.model = MLP(config.layers, config.activation, config.output, backend=backend,
                         dtype="float32", seed=0, precision=precision)
        self.trainer = Trainer(self.model, loss=config.loss, optimizer=Adam(1e-3),
                               batch_size=config.batch, seed=0, cuda_graphs=graphs)
        X, Y = synthetic_data(config, config.batch * n_batches)
        self.X, self.dense, self.labels = self.model._device_data(X, Y, config.loss)
        m = config.batch
        self.xb = self.X[:m]
        self.batch_dense = None if self.dense is None else self.dense[:m]
        self.batch_labels = None if self.labels is None else self.labels[:m]
        self.bufs = self.model._buffers_for(m)
        self.loss_sum = self.model.xp.zeros((), dtype=np.float64)
        self.graph = self._capture_step() if graphs else None

    def _capture_step(self):
        """The step captured once as a CUDA graph, replayed by ``step``."""
        graph, self._keep = _captured(self.model.backend, self._eager_step)
        return graph

    def forward(self):
        """Forward propagation of one batch to the logits."""
        self.model._forward(self.xb, self.bufs)

    def step(self):
        """One training step: forward, loss, backward, Adam update (replayed
        from its CUDA graph in graph mode)."""
        if self.graph is not None:
            self.graph.launch()
        else:
            self._eager_step()

    def _eager_step(self):
        self.model._train_step(self.xb, self.batch_dense, self.batch_labels, self.trainer._kind,
                               0.0, self.bufs, self.loss_sum, self.trainer.optimizer)

    def epoch(self):
        """One epoch of Trainer.fit over the device data set: device shuffle,
        gathers, steps, and the one read-back (validation and upload excluded)."""
        self.trainer._train(self.X, self.dense, self.labels, None, 1, True)


class GemmFloor:
    """The GEMMs of a forward pass or training step alone, on random operands.
    With ``graphs``, the step's GEMMs are captured once as a CUDA graph through
    gpubp.cublas and replayed, as the graph-replayed training step's are: the
    floor under ``gpubp-cupy-graph``, with no launch from Python in it."""

    def __init__(self, config, backend, precision="float32", graphs=False):
        self.backend = backend
        self.config = config
        self.precision = precision
        xp = backend.xp
        rng = np.random.default_rng(1)

        def rand(*shape):
            return backend.asarray(rng.standard_normal(shape, dtype=np.float32))

        m, sizes = config.batch, config.layers
        self.acts = [rand(m, n) for n in sizes]                 # A(0) .. A(L)
        self.deltas = [None] + [rand(m, n) for n in sizes[1:]]  # D(1) .. D(L)
        self.errs = [rand(m, n) for n in sizes]
        self.W = [rand(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
        self.dW = [xp.empty_like(w) for w in self.W]
        self.graph = None
        if graphs:
            self.graph, self._keep = _captured(backend, self._step)

    def forward(self):
        mm, p = self.backend.matmul, self.precision
        for i, w in enumerate(self.W):
            mm(self.acts[i], w, out=self.acts[i + 1], precision=p)

    def step(self):
        if self.graph is not None:
            self.graph.launch()
        else:
            self._step()

    def _step(self):
        mm, p = self.backend.matmul, self.precision
        for kind, i, _ in self.config.gemm_shapes():
            if kind == "forward":
                mm(self.acts[i], self.W[i], out=self.acts[i + 1], precision=p)
            elif kind == "dW":
                mm(self.acts[i], self.deltas[i + 1], out=self.dW[i], transa=True, precision=p)
            else:
                mm(self.deltas[i + 1], self.W[i], out=self.errs[i], transb=True, precision=p)
