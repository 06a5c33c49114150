"""Mini-batch training on the device, reading back to the host once per epoch."""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import time

import numpy as np

from . import _validation as v
from .graphs import capture
from .losses import resolve_loss
from .model import MLP
from .optim import Adam, Optimizer

logger = logging.getLogger("gpubp")

# splitmix64 constants (Steele, Lea & Flood 2014).
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def epoch_permutation(xp, n: int, seed: int, epoch: int):
    """A permutation of ``range(n)`` made on the device, the same on every backend.

    Each index gets the key splitmix64(i * golden + key(seed, epoch)); sorting the
    keys gives the order. The map from i to its key is a bijection of uint64, so
    no two keys tie and the result does not depend on the sort's stability.
    """
    key = (seed * 0x9E3779B97F4A7C15 + (epoch + 1) * 0xD1B54A32D192ED03) % 2**64
    z = xp.arange(n, dtype=np.uint64)
    z *= xp.uint64(_GOLDEN)
    z += xp.uint64(key)
    z ^= z >> xp.uint64(30)
    z *= xp.uint64(_MIX1)
    z ^= z >> xp.uint64(27)
    z *= xp.uint64(_MIX2)
    z ^= z >> xp.uint64(31)
    return xp.argsort(z)


def _tqdm():
    """tqdm's progress bar class, or a clear error before any training."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("progress=True draws its bar with tqdm, which is not installed: "
                          "pip install tqdm (or gpubp's progress extra)") from None
    return tqdm


class Trainer:
    """Trains an :class:`MLP` by mini-batch backpropagation.

    ``loss`` defaults to the model's natural loss (cross_entropy for softmax,
    binary_cross_entropy for sigmoid, mse for identity); ``optimizer`` to
    ``Adam()``; ``l2`` adds (l2 / 2m) sum ||W||^2 to each batch's loss (biases
    are never regularized); ``seed`` fixes the shuffling, identically on every
    backend. On the CuPy backend the step of each batch shape is captured once
    as a CUDA graph and replayed (gather, forward, loss, backward and update in
    one launch); where capture cannot work the trainer logs why
    (``graphs_off_reason``) and launches eagerly. ``cuda_graphs=False`` turns
    graphs off; elsewhere than on the CuPy backend the option does nothing.
    """

    def __init__(self, model, loss=None, optimizer=None, batch_size=32, l2=0.0, seed=0,
                 cuda_graphs=True):
        if not isinstance(model, MLP):
            raise TypeError(f"model must be a gpubp.MLP; got {type(model).__name__}")
        self.model = model
        self.loss, self._kind = resolve_loss(model.output, loss)
        if optimizer is None:
            optimizer = Adam()
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"optimizer must be a gpubp.optim optimizer (SGD, Adam, AdamW); got {optimizer!r}"
            )
        if optimizer._model is not None and optimizer._model is not model:
            raise ValueError("optimizer already holds state for another model; create one per model")
        self.optimizer = optimizer
        self.batch_size = v.check_positive_int("batch_size", batch_size)
        self.l2 = v.check_real("l2", l2, low=0.0)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
        self.seed = int(seed)
        self.cuda_graphs = v.check_flag("cuda_graphs", cuda_graphs)
        self.graphs_off_reason = None       # why replay fell back to eager launches
        self.epochs_done = 0
        self._state = {}                    # persistent device buffers of the step
        self._graph_cache = {}              # data set -> {batch size: "warm" | CUDA graph}
        self._stream = None

    def fit(self, X, Y, epochs=1, shuffle=True, validation_data=None, verbose=False,
            progress=False):
        """Train for ``epochs`` passes over (X, Y); returns the history dict.

        ``history["loss"]`` holds each epoch's mean training objective (each
        batch's loss, taken before its update, weighted by its size); with
        ``validation_data=(X_val, Y_val)`` also ``val_loss`` and, for softmax and
        sigmoid outputs, ``val_accuracy``. A last partial batch is trained on as
        a batch of its own size. ``verbose=True`` prints each epoch's figures;
        ``progress=True`` shows a tqdm progress bar over the epochs with the
        latest figures (the ``progress`` extra installs tqdm). Both update once
        per epoch, when the host reads the figures back anyway. Everything is
        validated before training starts. A loss that turns NaN or Inf (the
        run diverged) is logged as a warning on the ``gpubp`` logger, once.
        """
        model = self.model
        epochs = v.check_positive_int("epochs", epochs)
        shuffle, verbose, progress = (v.check_flag(name, flag) for name, flag in
                                      (("shuffle", shuffle), ("verbose", verbose), ("progress", progress)))
        bar_class = _tqdm() if progress else None
        X, dense, labels = model._device_data(X, Y, self.loss)
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (X_val, Y_val)")
            val = model._device_data(validation_data[0], validation_data[1], self.loss,
                                     names=("validation_data[0] (X_val)", "validation_data[1] (Y_val)"))

        bar = None
        if bar_class is not None:
            bar = bar_class(total=epochs, unit="epoch", desc=f"gpubp {model.backend.name}")
        try:
            return self._train(X, dense, labels, val, epochs, shuffle, verbose, bar)
        finally:
            if bar is not None:
                bar.close()

    def _train(self, X, dense, labels, val, epochs, shuffle, verbose=False, bar=None):
        """The epochs themselves, on validated device data."""
        model = self.model
        xp = model.xp
        n = X.shape[0]
        targets = dense if dense is not None else labels
        sizes = [min(self.batch_size, n - s) for s in range(0, n, self.batch_size)]
        # Persistent device state that a captured step reads: the epoch's order,
        # the offset of the next batch in it, the loss sum, the gathered batch.
        order = self._persistent("order", (n,), np.int64)
        offset = self._persistent("offset", (1,), np.int64)
        loss_sum = self._persistent("loss_sum", (), np.float64)
        graphs = self._graphs_for(X, targets)
        steps = {m: self._step_fn(X, targets, dense is not None, m, order, offset, loss_sum)
                 for m in set(sizes)}
        history = {"loss": []}
        if val is not None:
            history["val_loss"] = []
            if model.output in ("softmax", "sigmoid"):
                history["val_accuracy"] = []

        diverged = False
        with self._graph_mode():
            for _ in range(epochs):
                start = time.perf_counter()
                loss_sum.fill(0)
                offset.fill(0)
                if shuffle:
                    order[...] = epoch_permutation(xp, n, self.seed, self.epochs_done)
                else:
                    order[...] = xp.arange(n, dtype=np.int64)
                for m in sizes:
                    if graphs is None:
                        steps[m]()
                    else:
                        self._replay(graphs, m, steps[m])
                self.epochs_done += 1

                figures = [loss_sum]
                if val is not None:
                    total, correct = model._objective(*val, self._kind, self.l2)
                    figures += [total] + ([] if correct is None else [correct])
                # The one read-back of the epoch.
                host = model.backend.to_numpy(
                    xp.stack([xp.asarray(f, dtype=np.float64) for f in figures]))
                history["loss"].append(float(host[0]) / n)
                if not diverged and not math.isfinite(history["loss"][-1]):
                    diverged = True
                    logger.warning("gpubp: the training loss is %s at epoch %d: training has "
                                   "diverged (a smaller learning rate?)", history["loss"][-1],
                                   self.epochs_done)
                if val is not None:
                    n_val = val[0].shape[0]
                    history["val_loss"].append(float(host[1]) / n_val)
                    if len(host) > 2:
                        history["val_accuracy"].append(float(host[2]) / n_val)
                if bar is not None:
                    bar.set_postfix({k: f"{vals[-1]:.4g}" for k, vals in history.items()},
                                    refresh=False)
                    bar.update()
                if verbose:
                    shown = ", ".join(f"{k} {vals[-1]:.4f}" for k, vals in history.items())
                    line = f"epoch {self.epochs_done}: {shown} ({time.perf_counter() - start:.2f} s)"
                    bar.write(line) if bar is not None else print(line)
        return history

    # -- one step ----------------------------------------------------------------
    def _persistent(self, name, shape, dtype):
        key = (name, shape, np.dtype(dtype).str)
        buf = self._state.get(key)
        if buf is None:
            buf = self._state[key] = self.model.xp.zeros(shape, dtype=dtype)
        return buf

    def _step_fn(self, X, targets, is_dense, m, order, offset, loss_sum):
        """The training step for a batch of m rows: gather at the device offset,
        forward, loss, backward, update, advance the offset. It reads nothing back,
        so it can run eagerly or be captured into a CUDA graph."""
        model, backend = self.model, self.model.backend
        xb = self._persistent("xb", (m,) + X.shape[1:], X.dtype)
        bufs = model._buffers_for(m)
        # An elementwise loss reads its targets' rows in place (no gathered copy).
        in_place = is_dense and self._kind != "softmax_ce"
        tb = None if in_place else self._persistent("tb", (m,) + targets.shape[1:], targets.dtype)
        batch_targets = targets if in_place else tb
        dense, labels = (batch_targets, None) if is_dense else (None, batch_targets)
        rows = (order, offset) if in_place else None

        def step():
            backend.gather_rows(X, order, offset, xb)
            if not in_place:
                backend.gather_rows(targets, order, offset, tb)
            model._train_step(xb, dense, labels, self._kind, self.l2, bufs, loss_sum,
                              self.optimizer, rows)
            backend.advance_offset(offset, m)

        return step

    # -- CUDA graphs -------------------------------------------------------------
    def _graphs_on(self):
        return (self.cuda_graphs and self.model.backend.name == "cupy"
                and self.graphs_off_reason is None)

    def _graphs_for(self, X, targets):
        """The captured steps for this data set and these settings: a graph holds
        the data's device pointers and bakes in every scalar argument (lr, betas,
        l2, ...), so any change gets graphs of its own. Only the latest set is kept."""
        if not self._graphs_on():
            return None
        address = self.model.backend.address
        key = (address(X), X.shape, address(targets), targets.shape, id(self.optimizer),
               self.optimizer._hyperparameters(), self.l2, self._kind, self.model.precision)
        if key not in self._graph_cache:
            self._graph_cache = {key: {}}
            # The graphs write into this optimizer's state: hold it, so that its
            # id (in the key) cannot pass to another optimizer while they live.
            self._graph_optimizer = self.optimizer
        return self._graph_cache[key]

    @contextlib.contextmanager
    def _graph_mode(self):
        """Graph mode runs on a stream of its own (CuPy cannot capture the default
        one), with every product through gpubp.cublas (which capture allows)."""
        if not self._graphs_on():
            yield
            return
        backend = self.model.backend
        problem = backend.graphs_problem()
        if problem is not None:
            self._graphs_off(problem)
            yield
            return
        if self._stream is None:
            self._stream = backend.new_stream(step=True)
        # Uploads and initialisation were queued on other streams: let them finish.
        backend.synchronize_device()
        try:
            with self._stream, self.model.backend.capturable():
                yield
        finally:
            self._stream.synchronize()      # also when an exception leaves mid-epoch

    def _replay(self, graphs, m, step):
        """Run the step for batch size m: eagerly the first time (it allocates
        and compiles), captured and launched the second, launched after that."""
        entry = graphs.get(m) if self.graphs_off_reason is None else "off"
        if entry in (None, "off"):
            step()
            if entry is None:
                graphs[m] = "warm"
            return
        if entry == "warm":
            steps_before = self.optimizer.steps
            try:
                graph = self.model.backend.launchable(capture(self._stream, step))
            except Exception as failure:
                self.optimizer.steps = steps_before
                self._graphs_off(f"{type(failure).__name__}: {failure}")
                step()                      # the capture did not run it
                return
            # The graph writes into the backend's work arrays: keep them alive with it.
            graphs[m] = (graph, self.model.backend._work.live())
            graph.launch()                  # this step is the one just captured
            return
        entry[0].launch()
        self.optimizer.steps += 1

    def _graphs_off(self, reason):
        self.graphs_off_reason = reason
        self._graph_cache.clear()
        logger.warning("gpubp: CUDA graphs off, training with eager launches: %s", reason)
