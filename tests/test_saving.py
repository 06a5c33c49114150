"""MLP.save / MLP.load: a model written to an .npz and read back, on any backend."""

import json
import os

import numpy as np
import pytest

import gpubp
from _helpers import BACKENDS


# Outputs of the same parameters through the two backends' kernels agree within float32's
# rounding; with tf32 or bf16, the factors of a product can round to neighbours one unit
# apart where the two backends' sums differ in their last bits (1e-4 seen for tf32).
_TOL = {"float32": 1e-5, "tf32": 2e-3, "bf16": 1e-2}


def _trained(backend, rng, **kwargs):
    model = gpubp.MLP([6, 5, 4, 3], backend=backend, seed=int(rng.integers(1000)), **kwargs)
    X, y = rng.normal(size=(40, 6)), rng.integers(0, 3, size=40)
    loss = "cross_entropy" if model.output == "softmax" else "mse"
    Y = y if loss == "cross_entropy" else rng.normal(size=(40, 3))
    gpubp.Trainer(model, loss=loss, optimizer=gpubp.optim.Adam(1e-2), batch_size=16).fit(X, Y, epochs=2)
    return model


@pytest.mark.parametrize("load_on", BACKENDS)
@pytest.mark.parametrize("kwargs", [
    {},
    {"activation": "tanh", "output": "sigmoid", "dtype": "float64"},
    {"activation": "leaky_relu", "output": "identity", "precision": "bf16"},
])
def test_a_saved_model_loads_with_the_same_parameters_and_outputs(tmp_path, rng, backend, load_on,
                                                                   kwargs):
    model = _trained(backend, rng, **kwargs)
    path = model.save(tmp_path / "model.npz")
    loaded = gpubp.MLP.load(path, backend=load_on)
    assert loaded.backend.name == load_on
    for attr in ("layer_sizes", "activation", "output", "dtype", "precision"):
        assert getattr(loaded, attr) == getattr(model, attr)
    for (w, b), (w2, b2) in zip(model.get_params(), loaded.get_params()):
        np.testing.assert_array_equal(w2, w)
        np.testing.assert_array_equal(b2, b)
        assert w2.dtype == w.dtype == model.dtype
    X = rng.normal(size=(7, 6))
    if load_on == backend:
        np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    else:   # the same parameters through the other backend's kernels
        tol = _TOL[model.precision] if model.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(loaded.predict(X), model.predict(X), rtol=tol, atol=tol)


@pytest.mark.parametrize("saved_on", ["numpy", "emulated"])
@pytest.mark.parametrize("kwargs", [
    {},
    {"activation": "tanh", "output": "sigmoid", "dtype": "float64"},
    {"activation": "leaky_relu", "output": "identity", "precision": "bf16"},
    {"activation": "relu", "output": "softmax", "precision": "tf32"},
])
def test_a_model_moves_between_the_backends_through_a_file(tmp_path, rng, saved_on, kwargs):
    """Saved on one backend and loaded on the other (the CuPy backend's code, its
    kernels emulated on the CPU where no GPU is): the same parameters, and outputs
    within the dtype's rounding (the mode's, for tf32 and bf16), and, in float32 and
    float64, still so after more training on each."""
    from _cuda_emulator import emulated_backend

    backends = {"numpy": "numpy", "emulated": emulated_backend()}
    model = _trained(backends[saved_on], rng, **kwargs)
    other = backends["numpy" if saved_on == "emulated" else "emulated"]
    loaded = gpubp.MLP.load(model.save(tmp_path / "m.npz"), backend=other)
    assert loaded.backend is not model.backend and loaded.precision == model.precision
    for (w, b), (w2, b2) in zip(model.get_params(), loaded.get_params()):
        np.testing.assert_array_equal(w2, w)
        np.testing.assert_array_equal(b2, b)
    tol = _TOL[model.precision] if model.dtype == np.float32 else 1e-12
    X, Y = rng.normal(size=(40, 6)), rng.integers(0, 3, size=40)
    np.testing.assert_allclose(loaded.predict(X), model.predict(X), rtol=tol, atol=tol)
    if model.output != "softmax":
        Y = rng.uniform(size=(40, 3)) if model.output == "sigmoid" else rng.normal(size=(40, 3))
    loss = {"softmax": "cross_entropy", "sigmoid": "mse", "identity": "mse"}[model.output]
    for m in (model, loaded):
        gpubp.Trainer(m, loss=loss, optimizer=gpubp.optim.SGD(0.05), batch_size=8,
                      seed=4).fit(X, Y, epochs=2)
    if model.precision == "float32":
        np.testing.assert_allclose(loaded.predict(X), model.predict(X), rtol=10 * tol, atol=10 * tol)


def test_the_file_is_a_plain_npz_that_numpy_reads(tmp_path, rng):
    model = _trained("numpy", rng)
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as data:
        assert sorted(data.files) == ["W0", "W1", "W2", "b0", "b1", "b2", "gpubp_model"]
        config = json.loads(str(data["gpubp_model"]))
        params = [(data[f"W{i}"], data[f"b{i}"]) for i in range(3)]
    assert config == {"format": "gpubp.MLP/1", "layer_sizes": [6, 5, 4, 3], "activation": "sigmoid",
                      "output": "softmax", "dtype": "float32", "precision": "float32"}
    for (w, b), (w2, b2) in zip(model.get_params(), params):
        np.testing.assert_array_equal(w2, w)
        np.testing.assert_array_equal(b2, b)


def test_save_writes_exactly_the_name_given_and_replaces_an_old_file(tmp_path, rng):
    first, second = _trained("numpy", rng), _trained("numpy", rng)
    path = tmp_path / "checkpoint"                 # no .npz appended
    assert first.save(str(path)) == path
    second.save(path)
    assert os.listdir(tmp_path) == ["checkpoint"]  # no temporary file left
    np.testing.assert_array_equal(gpubp.MLP.load(path).get_params()[0][0],
                                  second.get_params()[0][0])


def test_a_failed_save_leaves_the_old_file_and_no_temporary(tmp_path, rng, monkeypatch):
    model = _trained("numpy", rng)
    path = model.save(tmp_path / "m.npz")
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        _trained("numpy", rng).save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.npz"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_diverged_model_is_not_saved_over_a_good_checkpoint(tmp_path, rng, backend, bad):
    """MLP.load refuses parameters that are not finite, so save refuses to write
    them, before the file is touched: the last good checkpoint stays."""
    model = _trained(backend, rng)
    path = model.save(tmp_path / "m.npz")
    before = path.read_bytes()
    layer = int(rng.integers(model.n_layers))
    hit = model.biases[layer] if rng.random() < 0.5 else model.weights[layer]   # views of params
    hit[tuple(int(rng.integers(d)) for d in hit.shape)] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.npz"]


def test_save_and_load_reject_a_path_that_is_not_one(rng):
    model = gpubp.MLP([2, 2])
    for bad in (None, 3, 3.5, ["m.npz"]):
        with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
            model.save(bad)
        with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
            gpubp.MLP.load(bad)


def test_load_says_what_is_wrong_with_a_file(tmp_path, rng):
    with pytest.raises(FileNotFoundError):
        gpubp.MLP.load(tmp_path / "absent.npz")

    (tmp_path / "text").write_text("not a model")
    np.save(tmp_path / "one.npy", rng.normal(size=3))
    np.savez(tmp_path / "other.npz", x=rng.normal(size=3))
    (tmp_path / "cut.npz").write_bytes((_saved(tmp_path, rng)).read_bytes()[:200])
    for name in ("text", "one.npy", "other.npz", "cut.npz"):
        with pytest.raises(ValueError, match="is not a model saved by gpubp") as info:
            gpubp.MLP.load(tmp_path / name)
        assert "pickle" not in str(info.value)          # no advice to unpickle a stranger's file
    with pytest.raises(ValueError, match=r"is not a model saved by gpubp \(not an .npz archive\)"):
        gpubp.MLP.load(tmp_path / "text")
    if os.path.isdir("/proc/self/fd"):        # a refused file is closed, not left to the collector
        held = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                if os.path.exists(f"/proc/self/fd/{fd}")]
        assert not [h for h in held if h.startswith(str(tmp_path))], held

    model = gpubp.MLP([3, 2], seed=1)
    w, b = model.get_params()[0]
    config = {"format": "gpubp.MLP/1", "layer_sizes": [3, 2], "activation": "sigmoid",
              "output": "softmax", "dtype": "float32", "precision": "float32"}

    def write(name, config=config, **arrays):
        np.savez(tmp_path / name, gpubp_model=np.array(json.dumps(config)), **arrays)
        return tmp_path / name

    with pytest.raises(ValueError, match="holds format 'gpubp.MLP/2'"):
        gpubp.MLP.load(write("v2.npz", dict(config, format="gpubp.MLP/2"), W0=w, b0=b))
    with pytest.raises(ValueError, match=r"lacks \['dtype'\]"):
        gpubp.MLP.load(write("nodtype.npz", {k: x for k, x in config.items() if k != "dtype"},
                             W0=w, b0=b))
    with pytest.raises(ValueError, match=r"holds arrays \['W0'\]"):
        gpubp.MLP.load(write("nob.npz", W0=w))
    with pytest.raises(ValueError, match=r"params\[0\]\[0\] \(W\) must have shape \(3, 2\)"):
        gpubp.MLP.load(write("shape.npz", W0=w.T, b0=b))
    w_nan = w.copy()
    w_nan[rng.integers(3), rng.integers(2)] = np.nan
    with pytest.raises(ValueError, match="must be finite"):
        gpubp.MLP.load(write("nan.npz", W0=w_nan, b0=b))
    with pytest.raises(ValueError, match="activation must be one of"):
        gpubp.MLP.load(write("act.npz", dict(config, activation="swish"), W0=w, b0=b))
    with pytest.raises(ValueError, match="backend"):
        gpubp.MLP.load(write("ok.npz", W0=w, b0=b), backend="tpu")


def _saved(tmp_path, rng):
    return _trained("numpy", rng).save(tmp_path / "whole.npz")


def test_saving_into_a_missing_folder_names_that_folder(tmp_path):
    model = gpubp.MLP([3, 2])
    with pytest.raises(FileNotFoundError, match=r"the folder '.*/absent' does not exist"):
        model.save(tmp_path / "absent" / "m.npz")
    assert os.listdir(tmp_path) == []
