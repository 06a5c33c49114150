"""Optimizers against steps computed by hand in float64, and against PyTorch where installed."""

import math

import numpy as np
import pytest

import gpubp
from gpubp.optim import SGD, Adam, AdamW

TOL = {"float64": 1e-12, "float32": 1e-5}


def _model(backend, dtype, rng):
    model = gpubp.MLP([3, 4, 2], backend=backend, dtype=dtype, seed=int(rng.integers(1 << 30)))
    return model


def _run(model, opt, grads):
    """Apply opt for each gradient vector; return the flat parameters after each step."""
    out = []
    for g in grads:
        model.grads[...] = model.backend.asarray(g, dtype=model.dtype)
        opt.step(model)
        out.append(model.backend.to_numpy(model.params).astype(np.float64))
    return out


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.8, True)])
def test_sgd_matches_hand_computed_steps(backend, rng, dtype, momentum, nesterov):
    model = _model(backend, dtype, rng)
    p = model.backend.to_numpy(model.params).astype(np.float64)
    grads = [rng.normal(size=p.size) for _ in range(4)]
    lr = 0.05
    got = _run(model, SGD(lr, momentum=momentum, nesterov=nesterov), grads)
    buf = None
    for g, after in zip(grads, got):
        g = g.astype(dtype).astype(np.float64)
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + g   # torch: first buf = g
            p = p - lr * (g + momentum * buf if nesterov else buf)
        else:
            p = p - lr * g
        np.testing.assert_allclose(after, p, rtol=TOL[dtype], atol=TOL[dtype] * np.abs(p).max())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("weight_decay", [None, 0.0, 0.1])
def test_adam_and_adamw_match_hand_computed_steps(backend, rng, dtype, weight_decay):
    model = _model(backend, dtype, rng)
    p = model.backend.to_numpy(model.params).astype(np.float64)
    grads = [rng.normal(size=p.size) * 10.0 ** rng.uniform(-3, 1) for _ in range(5)]
    lr, b1, b2, eps = 0.01, 0.8, 0.95, 1e-6
    opt = (Adam(lr, betas=(b1, b2), eps=eps) if weight_decay is None
           else AdamW(lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay))
    got = _run(model, opt, grads)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, (g, after) in enumerate(zip(grads, got), start=1):
        g = g.astype(dtype).astype(np.float64)
        p = p * (1 - lr * (weight_decay or 0.0))       # decoupled decay (AdamW)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        # PyTorch's arrangement of lr * m_hat / (sqrt(v_hat) + eps).
        p = p - (lr / (1 - b1 ** t)) * m / (np.sqrt(v) / math.sqrt(1 - b2 ** t) + eps)
        np.testing.assert_allclose(after, p, rtol=TOL[dtype], atol=TOL[dtype] * np.abs(p).max())
    assert opt.steps == len(grads)


def test_adam_first_step_moves_every_parameter_by_about_lr(rng):
    """With bias correction, Adam's first step is lr * g / (|g| + eps) = +-lr."""
    model = gpubp.MLP([3, 4, 2], backend="numpy", dtype="float64")
    p0 = model.params.copy()
    # |g| >= 0.5, so that eps / |g| stays far below the tolerance.
    g = rng.choice([-1.0, 1.0], size=p0.size) * rng.uniform(0.5, 2.0, size=p0.size)
    model.grads[...] = g
    Adam(lr=0.01, eps=1e-12).step(model)
    np.testing.assert_allclose(p0 - model.params, 0.01 * np.sign(g), rtol=1e-9)


def test_an_optimizer_belongs_to_one_model():
    a = gpubp.MLP([2, 2], backend="numpy")
    b = gpubp.MLP([2, 2], backend="numpy")
    opt = SGD(0.1)
    opt.step(a)
    with pytest.raises(ValueError, match="another model"):
        opt.step(b)


@pytest.mark.parametrize("name", ["sgd", "nesterov", "adam", "adamw"])
def test_updates_match_pytorch(backend, rng, name):
    torch = pytest.importorskip("torch")
    model = gpubp.MLP([3, 4, 2], backend=backend, dtype="float64", seed=3)
    p = torch.tensor(model.backend.to_numpy(model.params).copy(), requires_grad=True)
    ours, theirs = {
        "sgd": (SGD(0.1, momentum=0.9), lambda: torch.optim.SGD([p], lr=0.1, momentum=0.9)),
        "nesterov": (SGD(0.1, momentum=0.9, nesterov=True),
                     lambda: torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True)),
        "adam": (Adam(0.01), lambda: torch.optim.Adam([p], lr=0.01)),
        "adamw": (AdamW(0.01, weight_decay=0.1),
                  lambda: torch.optim.AdamW([p], lr=0.01, weight_decay=0.1)),
    }[name]
    theirs = theirs()
    for _ in range(5):
        g = rng.normal(size=p.shape[0])
        model.grads[...] = model.backend.asarray(g)
        ours.step(model)
        p.grad = torch.tensor(g)
        theirs.step()
    np.testing.assert_allclose(model.backend.to_numpy(model.params), p.detach().numpy(),
                               rtol=1e-12, atol=1e-14)


def test_adam_keeps_its_step_count_on_the_device(backend):
    model = gpubp.MLP([3, 2], backend=backend, dtype="float64")
    opt = Adam(0.01, betas=(0.8, 0.9))
    for _ in range(4):
        opt.step(model)
    assert int(opt.step_count[0]) == opt.steps == 4
    coef = model.backend.to_numpy(opt.coef)
    np.testing.assert_allclose(coef, [0.01 / (1 - 0.8 ** 4), math.sqrt(1 - 0.9 ** 4)], rtol=1e-15)
