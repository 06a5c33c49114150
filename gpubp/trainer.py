"""Mini-batch training on the device, reading back to the host once per epoch."""

from __future__ import annotations

import numbers
import time

import numpy as np

from . import _validation as v
from .losses import resolve_loss
from .model import MLP
from .optim import Adam, Optimizer

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


class Trainer:
    """Trains an :class:`MLP` by mini-batch backpropagation.

    ``loss`` defaults to the model's natural loss (cross_entropy for softmax,
    binary_cross_entropy for sigmoid, mse for identity); ``optimizer`` to
    ``Adam()``; ``l2`` adds (l2 / 2m) sum ||W||^2 to each batch's loss (biases
    are never regularized); ``seed`` fixes the shuffling, identically on every
    backend.
    """

    def __init__(self, model, loss=None, optimizer=None, batch_size=32, l2=0.0, seed=0):
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
        self.epochs_done = 0
        self._gathered = {}                 # batch shape -> (X rows, target rows), reused

    def fit(self, X, Y, epochs=1, shuffle=True, validation_data=None, verbose=False):
        """Train for ``epochs`` passes over (X, Y); returns the history dict.

        ``history["loss"]`` holds each epoch's mean training objective (each
        batch's loss, taken before its update, weighted by its size); with
        ``validation_data=(X_val, Y_val)`` also ``val_loss`` and, for softmax and
        sigmoid outputs, ``val_accuracy``. A last partial batch is trained on as
        a batch of its own size. Everything is validated before training starts.
        """
        model = self.model
        epochs = v.check_positive_int("epochs", epochs)
        if not isinstance(shuffle, bool):
            raise TypeError(f"shuffle must be True or False; got {shuffle!r}")
        X, dense, labels = model._device_data(X, Y, self.loss)
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (X_val, Y_val)")
            val = model._device_data(validation_data[0], validation_data[1], self.loss,
                                     names=("validation_data[0] (X_val)", "validation_data[1] (Y_val)"))

        return self._train(X, dense, labels, val, epochs, shuffle, verbose)

    def _train(self, X, dense, labels, val, epochs, shuffle, verbose=False):
        """The epochs themselves, on validated device data."""
        model = self.model
        xp = model.xp
        n = X.shape[0]
        targets = dense if dense is not None else labels
        bounds = [(s, min(s + self.batch_size, n)) for s in range(0, n, self.batch_size)]
        loss_sum = xp.zeros((), dtype=np.float64)
        history = {"loss": []}
        if val is not None:
            history["val_loss"] = []
            if model.output in ("softmax", "sigmoid"):
                history["val_accuracy"] = []

        for _ in range(epochs):
            start = time.perf_counter()
            loss_sum.fill(0)
            order = epoch_permutation(xp, n, self.seed, self.epochs_done) if shuffle else None
            for s, e in bounds:
                m = e - s
                if order is None:
                    xb, tb = X[s:e], targets[s:e]
                else:
                    key = (m, X.shape[1:], X.dtype, targets.shape[1:], targets.dtype)
                    if key not in self._gathered:
                        self._gathered[key] = (xp.empty((m,) + X.shape[1:], X.dtype),
                                               xp.empty((m,) + targets.shape[1:], targets.dtype))
                    xb, tb = self._gathered[key]
                    xp.take(X, order[s:e], axis=0, out=xb)
                    xp.take(targets, order[s:e], axis=0, out=tb)
                batch_dense, batch_labels = (tb, None) if dense is not None else (None, tb)
                model._backprop(xb, batch_dense, batch_labels, self._kind, self.l2,
                                model._buffers_for(m), loss_sum)
                self.optimizer.step(model)
            self.epochs_done += 1

            figures = [loss_sum]
            if val is not None:
                total, correct = model._objective(*val, self._kind, self.l2)
                figures += [total] + ([] if correct is None else [correct])
            # The one read-back of the epoch.
            host = model.backend.to_numpy(xp.stack([xp.asarray(f, dtype=np.float64) for f in figures]))
            history["loss"].append(float(host[0]) / n)
            if val is not None:
                n_val = val[0].shape[0]
                history["val_loss"].append(float(host[1]) / n_val)
                if len(host) > 2:
                    history["val_accuracy"].append(float(host[2]) / n_val)
            if verbose:
                shown = ", ".join(f"{k} {vals[-1]:.4f}" for k, vals in history.items())
                print(f"epoch {self.epochs_done}: {shown} ({time.perf_counter() - start:.2f} s)")
        return history
