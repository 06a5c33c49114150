"""Backprop against central differences and against the per-example textbook algorithm."""

import numpy as np
import pytest

import gpubp
from _helpers import ACTIVATIONS, KINKED, PAIRS, max_rel_error, random_targets, reference_backprop

# float64 gradients must match central differences to this relative error.
GRADCHECK_TOL = 1e-6
# Batched against per-example reference: float64 to rounding, float32 to its precision.
REFERENCE_TOL = {"float64": 1e-10, "float32": 1e-4}


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("output,loss", PAIRS)
@pytest.mark.parametrize("l2", [0.0, 0.7])
def test_gradients_match_central_differences(backend, rng, activation, output, loss, l2):
    model = gpubp.MLP([4, 5, 4, 3], activation=activation, output=output, backend=backend,
                      dtype="float64", seed=int(rng.integers(1 << 30)))
    # Random biases: with zero biases a dead relu row puts the next layer's z
    # exactly on the kink at 0, where no derivative exists to compare with.
    model.set_params([(W, rng.normal(scale=0.5, size=b.shape)) for W, b in model.get_params()])
    X = _away_from_kinks(rng, model, activation, size=(7, 4))
    Y = random_targets(rng, 7, 3, output, loss)
    assert gpubp.gradcheck(model, X, Y, loss=loss, l2=l2) < GRADCHECK_TOL


def _away_from_kinks(rng, model, activation, size):
    """Random X whose hidden pre-activations all lie 1e-3 or more from relu's kink,
    so that no central difference (step 1e-5) straddles it; any X for smooth g."""
    for _ in range(100):
        X = rng.normal(size=size)
        if activation not in KINKED:
            return X
        a, nearest = X, np.inf
        for W, b in model.get_params()[:-1]:
            z = a @ W + b
            nearest = min(nearest, np.abs(z).min())
            a = np.maximum(z, 0) if activation == "relu" else np.where(z > 0, z, 0.01 * z)
        if nearest > 1e-3:
            return X
    raise AssertionError("no X away from the kinks in 100 draws")


def test_gradcheck_of_float32_model_runs_in_float64(backend, rng):
    model = gpubp.MLP([3, 4, 2], activation="tanh", backend=backend, seed=1)
    before = model.get_params()
    X = rng.normal(size=(5, 3))
    y = rng.integers(0, 2, size=5)
    assert gpubp.gradcheck(model, X, y) < GRADCHECK_TOL
    for (w0, b0), (w1, b1) in zip(before, model.get_params()):
        assert np.array_equal(w0, w1) and np.array_equal(b0, b1)


def test_gradcheck_detects_a_wrong_gradient(rng, monkeypatch):
    """The checker must fail a backward pass that is off, or it proves nothing."""
    model = gpubp.MLP([3, 4, 2], activation="sigmoid", backend="numpy", dtype="float64")
    X, y = rng.normal(size=(5, 3)), rng.integers(0, 2, size=5)
    original = model.backend.bias_grad

    def wrong_bias_grad(delta, out):
        original(delta, out)
        out *= 1.01
        return out

    monkeypatch.setattr(model.backend, "bias_grad", wrong_bias_grad)
    assert gpubp.gradcheck(model, X, y) > 1e-3


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("output,loss", PAIRS)
def test_batched_backprop_equals_per_example_reference(backend, rng, dtype, activation, output,
                                                       loss):
    sizes = [6, 5, 4, 3]
    l2 = float(rng.uniform(0.1, 1.0))
    model = gpubp.MLP(sizes, activation=activation, output=output, backend=backend, dtype=dtype,
                      seed=int(rng.integers(1 << 30)))
    # Random biases too, so that bias handling is exercised.
    model.set_params([(W, rng.normal(scale=0.5, size=b.shape)) for W, b in model.get_params()])
    X = rng.normal(size=(9, 6))
    Y = random_targets(rng, 9, 3, output, loss)
    J, grads = model.loss_and_grads(X, Y, loss=loss, l2=l2)
    J_ref, grads_ref = reference_backprop(model.get_params(), activation, output, loss, X, Y, l2)
    tol = REFERENCE_TOL[dtype]
    assert abs(J - J_ref) <= tol * abs(J_ref)
    for (dW, db), (dW_ref, db_ref) in zip(grads, grads_ref):
        assert dW.dtype == np.dtype(dtype) and db.dtype == np.dtype(dtype)
        assert max_rel_error(dW, dW_ref) < tol
        assert max_rel_error(db, db_ref) < tol


def test_integer_labels_and_one_hot_give_the_same_result(backend, rng):
    model = gpubp.MLP([5, 6, 4], backend=backend, dtype="float64", seed=2)
    X = rng.normal(size=(8, 5))
    y = rng.integers(0, 4, size=8)
    J1, g1 = model.loss_and_grads(X, y, l2=0.3)
    J2, g2 = model.loss_and_grads(X, np.eye(4)[y], l2=0.3)
    assert J1 == pytest.approx(J2, rel=1e-13)
    for (a, b), (c, d) in zip(g1, g2):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(b, d, rtol=1e-12, atol=1e-15)


def test_soft_targets_use_the_exact_gradient(backend, rng):
    """Cross-entropy against rows that do not sum to one: delta is p * sum(y) - y."""
    model = gpubp.MLP([3, 4, 5], backend=backend, dtype="float64", seed=4)
    X = rng.normal(size=(6, 3))
    Y = rng.uniform(0.0, 2.0, size=(6, 5))
    assert gpubp.gradcheck(model, X, Y) < GRADCHECK_TOL


def test_biases_are_never_regularized(backend, rng):
    model = gpubp.MLP([4, 3, 2], backend=backend, dtype="float64", seed=5)
    # Biases drawn away from their initial zeros, where any penalty on them would vanish.
    model.set_params([(W, rng.normal(size=b.shape)) for W, b in model.get_params()])
    X, y = rng.normal(size=(6, 4)), rng.integers(0, 2, size=6)
    J0, g0 = model.loss_and_grads(X, y)
    J1, g1 = model.loss_and_grads(X, y, l2=2.0)
    weights = [W for W, _ in model.get_params()]
    assert J1 - J0 == pytest.approx(2.0 / (2 * 6) * sum(np.sum(W * W) for W in weights), rel=1e-12)
    for (dW0, db0), (dW1, db1), W in zip(g0, g1, weights):
        np.testing.assert_allclose(dW1 - dW0, 2.0 / 6 * W, rtol=1e-10, atol=1e-14)
        np.testing.assert_array_equal(db0, db1)


def _loss_from_logits(z, Y, output, loss):
    """The mean per-example loss from logits z, in float64, in the forms that
    cannot overflow (log-sum-exp, softplus)."""
    if loss == "cross_entropy":
        top = z.max(axis=1, keepdims=True)
        log_softmax = z - top - np.log(np.exp(z - top).sum(axis=1, keepdims=True))
        return float(-(Y * log_softmax).sum(axis=1).mean())
    if loss == "binary_cross_entropy":
        softplus = np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))
        return float((softplus - Y * z).sum(axis=1).mean())
    yhat = 0.5 * (1 + np.tanh(z / 2)) if output == "sigmoid" else z
    return float(0.5 * ((yhat - Y) ** 2).sum(axis=1).mean())


def test_loss_is_finite_for_huge_logits(backend, rng):
    """Losses are computed from the logits: no log(0), no overflow, and the value
    of a float64 reference. (With logits of 1e4 a cross-entropy can be exactly 0:
    every row's label the largest logit by far.)"""
    for output, loss in PAIRS:
        model = gpubp.MLP([2, 3], activation="identity", output=output, backend=backend,
                          dtype="float32", seed=0)
        model.set_params([(rng.normal(size=(2, 3)) * 1e4, rng.normal(size=3) * 1e4)])
        X = rng.normal(size=(5, 2))
        Y = random_targets(rng, 5, 3, output, loss)
        J, grads = model.loss_and_grads(X, Y, loss=loss)
        (W, b), = model.get_params()
        z = X.astype(np.float32).astype(np.float64) @ W.astype(np.float64) + b
        # float32 logits of 1e4 are off by up to ~5e-3 each: so is a loss near 0.
        assert np.isfinite(J) and J == pytest.approx(_loss_from_logits(z, Y, output, loss),
                                                     rel=1e-4, abs=5e-2)
        assert all(np.isfinite(dW).all() and np.isfinite(db).all() for dW, db in grads)
        # And the gradient's value: delta from the logits in float64 (saturated, mostly).
        delta = _delta_from_logits(z, Y, output, loss) / X.shape[0]
        (dW, db), = grads
        Xf = X.astype(np.float32).astype(np.float64)
        np.testing.assert_allclose(dW, Xf.T @ delta, rtol=1e-3, atol=2e-2)
        np.testing.assert_allclose(db, delta.sum(axis=0), rtol=1e-3, atol=2e-2)


def _delta_from_logits(z, Y, output, loss):
    """The output layer's delta per example, dJ/dz, in float64 forms that cannot overflow."""
    sigmoid = 0.5 * (1 + np.tanh(z / 2))
    if loss == "cross_entropy":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True) * Y.sum(axis=1, keepdims=True) - Y
    if loss == "binary_cross_entropy":
        return sigmoid - Y
    if output == "sigmoid":
        return (sigmoid - Y) * sigmoid * (1 - sigmoid)
    return z - Y
