"""Backpropagation checked against central differences, in float64."""

from __future__ import annotations

import numpy as np

from . import _validation as v
from .losses import resolve_loss
from .model import MLP


def gradcheck(model, X, Y, loss=None, l2=0.0, eps=1e-5, floor=None):
    """The largest relative error between backprop's gradient and central differences.

    A float64 copy of ``model`` (same backend, same parameters) computes the
    analytic gradient of the batch objective, and for every parameter p the
    difference quotient (J(p + eps) - J(p - eps)) / 2 eps. Each error is
    ``|analytic - numeric| / max(|analytic|, |numeric|, floor)``: ``floor`` keeps
    gradients that are zero up to rounding from dividing noise by noise. The
    difference quotient's rounding noise grows with the loss J, so the default
    floor is 1e-4 * max(1, |J|).
    ``model`` itself is left untouched.
    """
    if not isinstance(model, MLP):
        raise TypeError(f"model must be a gpubp.MLP; got {type(model).__name__}")
    loss, kind = resolve_loss(model.output, loss)
    l2 = v.check_real("l2", l2, low=0.0)
    eps = v.check_real("eps", eps, low=0.0, low_open=True)
    if floor is not None:
        floor = v.check_real("floor", floor, low=0.0, low_open=True)

    ref = MLP(model.layer_sizes, model.activation, model.output, backend=model.backend,
              dtype="float64")
    ref.set_params(model.get_params())
    Xd, dense, labels = ref._device_data(X, Y, loss)
    m = Xd.shape[0]
    J, _ = ref.loss_and_grads(Xd, dense if dense is not None else labels, loss, l2)
    if floor is None:
        floor = 1e-4 * max(1.0, abs(J))
    analytic = ref.backend.to_numpy(ref.grads).copy()

    def objective():
        return float(ref._objective(Xd, dense, labels, kind, l2)[0]) / m

    p0 = ref.backend.to_numpy(ref.params).copy()
    numeric = np.empty_like(p0)
    for i in range(p0.size):
        ref.params[i] = p0[i] + eps
        up = objective()
        ref.params[i] = p0[i] - eps
        down = objective()
        ref.params[i] = p0[i]
        numeric[i] = (up - down) / (2 * eps)
    scale = np.maximum(np.maximum(np.abs(analytic), np.abs(numeric)), floor)
    return float(np.max(np.abs(analytic - numeric) / scale))
