"""Optimizers with PyTorch's update rules, each one fused kernel over the
model's flat parameter buffer (``kernels/sgd.cu``, ``kernels/adam.cu``).

An optimizer keeps its state (momentum, moments, step count) for the first
model it steps; use a new optimizer for another model.
"""

from __future__ import annotations

import numpy as np

from . import _validation as v

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


class Optimizer:
    def __init__(self, lr):
        self.lr = v.check_real("lr", lr, low=0.0, low_open=True)
        self.steps = 0
        self._model = None

    def step(self, model):
        """Update ``model.params`` along ``model.grads`` (as left by the last backward pass)."""
        self._begin_step(model)
        self._update(model, [(0, model.params.size)])

    def _begin_step(self, model):
        """Counts the step and makes whatever every part of its update reads
        (Adam's bias corrections), before any part is updated."""
        if self._model is None:
            self._model = model
            self._init_state(model)
        elif self._model is not model:
            raise ValueError("this optimizer holds state for another model; create one per model")
        self.steps += 1

    def _init_state(self, model):
        pass

    def _update(self, model, ranges):
        """Update the parameters in these ``(start, stop)`` ranges of the flat
        buffer (one launch each); the ranges of one step are disjoint."""
        raise NotImplementedError

    def _hyperparameters(self):
        """Every setting a step depends on (a CUDA graph bakes them in)."""
        return tuple(sorted((k, v) for k, v in vars(self).items()
                            if isinstance(v, (int, float, bool, tuple)) and k != "steps"))


class SGD(Optimizer):
    """Stochastic gradient descent, PyTorch's rule with dampening 0:
    ``buf = momentum * buf + g``; ``p -= lr * buf`` (or ``lr * (g + momentum * buf)``
    with ``nesterov``); plain ``p -= lr * g`` without momentum."""

    def __init__(self, lr, momentum=0.0, nesterov=False):
        super().__init__(lr)
        self.momentum = v.check_real("momentum", momentum, low=0.0, high=1.0, high_open=True)
        nesterov = v.check_flag("nesterov", nesterov)
        if nesterov and self.momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.nesterov = nesterov
        self.buf = None

    def _init_state(self, model):
        if self.momentum:
            self.buf = model.xp.zeros_like(model.params)

    def _update(self, model, ranges):
        for a, b in ranges:
            buf = None if self.buf is None else self.buf[a:b]
            model.backend.sgd(model.params[a:b], model.grads[a:b], buf, self.lr, self.momentum,
                              self.nesterov)

    def __repr__(self):
        return f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov})"


class Adam(Optimizer):
    """Adam (Kingma & Ba) with PyTorch's bias corrections:
    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``."""

    weight_decay = 0.0

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2); got {betas!r}")
        self.betas = (
            v.check_real("betas[0]", betas[0], low=0.0, high=1.0, high_open=True),
            v.check_real("betas[1]", betas[1], low=0.0, high=1.0, high_open=True),
        )
        self.eps = v.check_real("eps", eps, low=0.0, low_open=True)
        self.m = self.v = None

    def _init_state(self, model):
        xp = model.xp
        self.m = xp.zeros_like(model.params)
        self.v = xp.zeros_like(model.params)
        # The step count and the bias corrections live on the device, so that a
        # step replayed from a CUDA graph uses the right t.
        self.step_count = xp.zeros(1, dtype=np.int32)
        self.coef = xp.zeros(2, dtype=np.float64)

    def _begin_step(self, model):
        super()._begin_step(model)
        beta1, beta2 = self.betas
        model.backend.adam_schedule(self.step_count, self.coef, self.lr, beta1, beta2)

    def _update(self, model, ranges):
        beta1, beta2 = self.betas
        for a, b in ranges:
            model.backend.adam(
                model.params[a:b], model.grads[a:b], self.m[a:b], self.v[a:b], self.coef,
                decay=1.0 - self.lr * self.weight_decay, beta1=beta1, beta2=beta2, eps=self.eps,
            )

    def __repr__(self):
        return f"{type(self).__name__}(lr={self.lr}, betas={self.betas}, eps={self.eps})"


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), PyTorch's rule:
    ``p *= 1 - lr * weight_decay`` before the Adam step, on every parameter."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(lr, betas, eps)
        self.weight_decay = v.check_real("weight_decay", weight_decay, low=0.0)

    def __repr__(self):
        return (f"AdamW(lr={self.lr}, betas={self.betas}, eps={self.eps}, "
                f"weight_decay={self.weight_decay})")
