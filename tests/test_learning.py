"""It learns: XOR with a small sigmoid net, and scikit-learn's digits to >= 96% held-out."""

import numpy as np
import pytest

import gpubp


def test_xor(backend):
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    y = np.array([[0], [1], [1], [0]], dtype=np.float32)
    model = gpubp.MLP([2, 4, 1], activation="sigmoid", output="sigmoid", backend=backend, seed=1)
    trainer = gpubp.Trainer(model, optimizer=gpubp.optim.Adam(0.1), batch_size=4)
    history = trainer.fit(X, y, epochs=400)
    assert history["loss"][-1] < 0.05 < history["loss"][0]
    np.testing.assert_array_equal(model.predict(X) > 0.5, y > 0.5)


def test_xor_with_plain_sgd_and_mse(backend):
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    y = np.array([0, 1, 1, 0], dtype=np.float64)
    model = gpubp.MLP([2, 3, 1], activation="tanh", output="identity", backend=backend,
                      dtype="float64", seed=0)
    trainer = gpubp.Trainer(model, optimizer=gpubp.optim.SGD(0.2, momentum=0.9), batch_size=4)
    history = trainer.fit(X, y, epochs=300)
    assert history["loss"][-1] < 1e-3
    np.testing.assert_array_equal(model.predict(X)[:, 0] > 0.5, y > 0.5)


def test_digits_to_96_percent(backend):
    pytest.importorskip("sklearn")
    from gpubp.demo import run_digits

    model, history, accuracy, _ = run_digits(backend=backend, epochs=30)
    assert accuracy >= 0.96
    assert history["val_accuracy"][-1] == pytest.approx(accuracy)
    assert history["loss"][-1] < history["loss"][0] / 10
