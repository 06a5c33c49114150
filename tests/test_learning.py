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


def test_demo_command_trains_reports_and_saves(tmp_path, capsys):
    """`gpubp demo` (the README's main job on the CPU) end to end, briefly,
    and --save writes a model that gpubp.MLP.load reads back to the same accuracy."""
    pytest.importorskip("sklearn")
    from gpubp.__main__ import main
    from gpubp.demo import load_digits_split

    path = tmp_path / "digits.npz"
    assert main(["demo", "--backend", "numpy", "--epochs", "3", "--save", str(path)]) == 0
    out = capsys.readouterr().out
    assert "backend numpy, 3 epochs in" in out and f"saved the model to {path}" in out
    printed = float(out.split("held-out accuracy ")[1].split()[0])
    _, X_test, _, y_test = load_digits_split(0)
    loaded = gpubp.MLP.load(path, backend="numpy")
    assert loaded.evaluate(X_test, y_test)["accuracy"] == pytest.approx(printed, abs=1e-4)
    with pytest.raises(SystemExit) as info:
        main(["demo", "--epochs", "1", "--save", str(tmp_path / "absent" / "m.npz")])
    assert info.value.code == 2 and "its folder does not exist" in capsys.readouterr().err
    for bad, said in ((["--seed", "-1"], "seed must be a non-negative integer"),
                      (["--batch-size", "0"], "batch_size"), (["--activation", "swish"], "activation")):
        with pytest.raises(SystemExit) as info:
            main(["demo", "--backend", "numpy", *bad])
        assert info.value.code == 2 and said in capsys.readouterr().err      # gpubp's own words
