"""The MLP: parameter layout, initialisation, forward, predict, get/set params."""

import numpy as np
import pytest

import gpubp


def test_params_live_in_one_flat_buffer(backend):
    model = gpubp.MLP([5, 4, 3], backend=backend)
    n = 5 * 4 + 4 * 3 + 4 + 3
    assert model.params.shape == (n,) and model.grads.shape == (n,)
    # Every W and b is a view: writing the flat buffer shows in them, and back.
    model.params[...] = model.xp.arange(n, dtype=model.dtype)
    W0, b0 = model.get_params()[0]
    np.testing.assert_array_equal(W0, np.arange(20).reshape(5, 4))
    np.testing.assert_array_equal(model.get_params()[1][1], np.arange(n - 3, n))
    model.weights[1][...] = -1
    assert float(model.params[20]) == -1.0
    # Weights first, then biases: the L2 kernel runs over one prefix.
    assert model.n_weights == 32


def test_gradients_live_in_one_flat_buffer(backend, rng):
    model = gpubp.MLP([3, 4, 2], backend=backend, dtype="float64")
    _, grads = model.loss_and_grads(rng.normal(size=(5, 3)), rng.integers(0, 2, size=5))
    flat = np.concatenate([g.ravel() for g, _ in grads] + [b for _, b in grads])
    np.testing.assert_array_equal(model.backend.to_numpy(model.grads), flat)


@pytest.mark.parametrize("activation,kind", [("sigmoid", "glorot"), ("tanh", "glorot"),
                                              ("relu", "he"), ("leaky_relu", "he")])
def test_initialisation_suits_the_activation(activation, kind):
    model = gpubp.MLP([400, 300, 10], activation=activation, backend="numpy", dtype="float64",
                      seed=7)
    (W1, b1), (W2, b2) = model.get_params()
    assert not b1.any() and not b2.any()
    if kind == "glorot":
        limit = np.sqrt(6 / 700)
        assert np.abs(W1).max() <= limit and np.abs(W1).max() > 0.99 * limit
        assert W1.std() == pytest.approx(limit / np.sqrt(3), rel=0.02)
    else:
        assert W1.std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    # The output layer is Glorot whatever the hidden activation.
    assert np.abs(W2).max() <= np.sqrt(6 / 310)


def test_initialisation_is_seeded_and_the_same_on_every_backend(backend):
    a = gpubp.MLP([6, 5, 2], backend=backend, seed=3).get_params()
    b = gpubp.MLP([6, 5, 2], backend="numpy", seed=3).get_params()
    c = gpubp.MLP([6, 5, 2], backend="numpy", seed=4).get_params()
    for (wa, ba), (wb, bb), (wc, _) in zip(a, b, c):
        np.testing.assert_array_equal(wa, wb)
        np.testing.assert_array_equal(ba, bb)
        assert not np.array_equal(wa, wc)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_set_params_round_trip_and_casts(backend, rng, dtype):
    model = gpubp.MLP([3, 4, 2], backend=backend, dtype=dtype)
    new = [(rng.normal(size=(3, 4)), rng.normal(size=4)), (rng.normal(size=(4, 2)), rng.normal(size=2))]
    model.set_params(new)
    for (w, b), (w0, b0) in zip(model.get_params(), new):
        assert w.dtype == np.dtype(dtype) and b.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(w, w0.astype(dtype))
        np.testing.assert_array_equal(b, b0.astype(dtype))
    # get_params hands out copies.
    got = model.get_params()
    got[0][0][...] = 123.0
    assert not (model.get_params()[0][0] == 123.0).any()


def test_forward_and_predict(backend, rng):
    X = rng.normal(size=(11, 6))
    for output in ("softmax", "sigmoid", "identity"):
        model = gpubp.MLP([6, 8, 4], activation="relu", output=output, backend=backend,
                          dtype="float64", seed=2)
        model.set_params([(w * 5, rng.normal(size=b.shape)) for w, b in model.get_params()])
        out = model.forward(X)
        assert isinstance(out, model.xp.ndarray)
        P = model.predict(X)
        assert isinstance(P, np.ndarray) and P.shape == (11, 4)
        np.testing.assert_allclose(model.backend.to_numpy(out), P)
        (W1, b1), (W2, b2) = model.get_params()
        z = np.maximum(X @ W1 + b1, 0) @ W2 + b2
        expected = {"softmax": np.exp(z) / np.exp(z).sum(1, keepdims=True),
                    "sigmoid": 1 / (1 + np.exp(-z)), "identity": z}[output]
        np.testing.assert_allclose(P, expected, rtol=1e-12, atol=1e-15)


def test_sigmoid_and_softmax_are_stable_for_any_logit(backend):
    model = gpubp.MLP([1, 3], activation="identity", output="sigmoid", backend=backend)
    model.set_params([(np.array([[1.0, -1.0, 1e-3]]), np.zeros(3))])
    X = np.array([[1e5], [-1e5], [0.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        P = model.predict(X)
    np.testing.assert_allclose(P, [[1, 0, 1 / (1 + np.exp(-100))], [0, 1, 1 / (1 + np.exp(100))],
                                   [0.5, 0.5, 0.5]], rtol=1e-6, atol=1e-37)
    soft = gpubp.MLP([1, 3], activation="identity", output="softmax", backend=backend)
    soft.set_params([(np.array([[1e4, -1e4, 0.0]]), np.zeros(3))])
    P = soft.predict(np.array([[1.0], [-1.0]]))
    np.testing.assert_allclose(P, [[1, 0, 0], [0, 1, 0]], atol=1e-7)


def test_loss_and_grads_changes_nothing(backend, rng):
    model = gpubp.MLP([4, 5, 3], backend=backend)
    before = model.get_params()
    model.loss_and_grads(rng.normal(size=(6, 4)), rng.integers(0, 3, size=6), l2=0.5)
    for (w0, b0), (w1, b1) in zip(before, model.get_params()):
        np.testing.assert_array_equal(w0, w1)
        np.testing.assert_array_equal(b0, b1)


def test_loss_and_grads_of_many_batch_sizes_keeps_one_set_of_work_arrays(backend, rng):
    """Calls with many batch sizes do not pile up memory: the model keeps the
    latest size's work arrays only, and each call's result is as from a fresh model."""
    model = gpubp.MLP([4, 5, 3], backend=backend, dtype="float64", seed=3)
    for m in rng.permutation(np.arange(1, 30))[:12]:
        X, y = rng.normal(size=(m, 4)), rng.integers(0, 3, size=m)
        J, grads = model.loss_and_grads(X, y, l2=0.2)
        fresh = gpubp.MLP([4, 5, 3], backend=backend, dtype="float64", seed=3)
        J_fresh, grads_fresh = fresh.loss_and_grads(X, y, l2=0.2)
        assert J == J_fresh
        for (dW, db), (dW_f, db_f) in zip(grads, grads_fresh):
            np.testing.assert_array_equal(dW, dW_f)
            np.testing.assert_array_equal(db, db_f)
        assert model._buffers == {} and model._spare_buffers[0] == m


def test_evaluate_agrees_with_loss_and_grads(backend, rng):
    model = gpubp.MLP([4, 5, 3], backend=backend, dtype="float64", seed=9)
    X, y = rng.normal(size=(20, 4)), rng.integers(0, 3, size=20)
    result = model.evaluate(X, y, l2=0.4)
    assert result["loss"] == pytest.approx(model.loss_and_grads(X, y, l2=0.4)[0], rel=1e-12)
    assert result["accuracy"] == pytest.approx(np.mean(model.predict(X).argmax(1) == y))
    regression = gpubp.MLP([4, 2], output="identity", backend=backend)
    assert set(regression.evaluate(X, rng.normal(size=(20, 2)))) == {"loss"}


def test_loss_defaults_to_the_outputs_natural_loss(backend, rng):
    X = rng.normal(size=(5, 3))
    Y = rng.uniform(size=(5, 2))
    model = gpubp.MLP([3, 2], output="sigmoid", backend=backend, dtype="float64")
    assert model.loss_and_grads(X, Y)[0] == model.loss_and_grads(X, Y, loss="binary_cross_entropy")[0]
    assert model.loss_and_grads(X, Y)[0] != model.loss_and_grads(X, Y, loss="mse")[0]


def test_one_output_regression_takes_1d_targets(backend, rng):
    model = gpubp.MLP([3, 4, 1], output="identity", backend=backend, dtype="float64")
    X, y = rng.normal(size=(6, 3)), rng.normal(size=6)
    assert model.loss_and_grads(X, y)[0] == model.loss_and_grads(X, y[:, None])[0]


def _chunk_backends():
    from _helpers import BACKENDS

    return list(BACKENDS) + ["emulated"]


@pytest.mark.parametrize("which", _chunk_backends())
@pytest.mark.parametrize("output,loss", [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy"),
                                         ("identity", "mse")])
def test_large_inputs_are_evaluated_in_chunks_with_the_same_results(rng, monkeypatch, which,
                                                                    output, loss):
    """forward, predict, evaluate and fit's validation run inputs whose
    activations exceed gpubp.model.EVAL_BYTES in chunks of rows (here 7 rows,
    50 rows in all: 8 chunks, the last of 1), with the results of one pass."""
    import gpubp.model
    from _cuda_emulator import emulated_backend

    backend = emulated_backend() if which == "emulated" else which
    sizes = [5, 9, 4]
    model = gpubp.MLP(sizes, activation="tanh", output=output, backend=backend,
                      seed=int(rng.integers(100)))
    X = rng.normal(size=(50, 5)).astype(np.float32)
    Y = (rng.integers(0, 4, size=50) if output == "softmax"
         else (rng.random((50, 4)) > 0.5).astype(np.float32) if output == "sigmoid"
         else rng.normal(size=(50, 4)).astype(np.float32))
    whole = (model.predict(X), model.evaluate(X, Y, l2=0.1))
    trainer = gpubp.Trainer(model, loss=loss, batch_size=16, seed=1)
    state = model.get_params()
    h_whole = trainer.fit(X, Y, epochs=2, validation_data=(X, Y))

    monkeypatch.setattr(gpubp.model, "EVAL_BYTES", 7 * 2 * 4 * sum(sizes[1:]))
    _, chunks = model._chunks(50)
    assert len(chunks) == 8 and chunks[-1] == (49, 50)
    model.set_params(state)
    trainer = gpubp.Trainer(model, loss=loss, batch_size=16, seed=1)
    h_chunked = trainer.fit(X, Y, epochs=2, validation_data=(X, Y))
    model.set_params(state)
    chunked = (model.predict(X), model.evaluate(X, Y, l2=0.1))
    assert chunked[0].shape == (50, 4)
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-5, atol=1e-6)
    assert chunked[1].keys() == whole[1].keys()
    for key in whole[1]:
        np.testing.assert_allclose(chunked[1][key], whole[1][key], rtol=1e-5)
    np.testing.assert_allclose(h_chunked["loss"], h_whole["loss"], rtol=1e-5)
    for key in h_whole:
        np.testing.assert_allclose(h_chunked[key], h_whole[key], rtol=1e-5)
