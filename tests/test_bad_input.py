"""Bad input to every public entry point is rejected up front.

The requirement: every public entry point validates before any kernel runs,
and nothing is half-updated when it raises. Each bad input raises ValueError
or TypeError whose message names the argument and what was expected.

Every case below asserts the exception type, that the message names the
argument, and, where the call could change state (loss_and_grads, evaluate,
set_params, Trainer.fit, gradcheck), that the parameters, the gradients, the
optimizer's step count and the trainer's epoch count are exactly as they were.
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest

import gpubp
from gpubp.optim import SGD, Adam, AdamW

BACKENDS = gpubp.available_backends()
ERRORS = (ValueError, TypeError)

SIZES = [4, 5, 3]
N_IN, N_OUT = SIZES[0], SIZES[-1]


# -- helpers ------------------------------------------------------------------

def make_model(rng, backend, output="softmax", sizes=SIZES, dtype="float32"):
    return gpubp.MLP(sizes, activation="tanh", output=output, backend=backend, dtype=dtype,
                     seed=int(rng.integers(0, 2**31)))


def valid_X(rng, n=None):
    n = int(rng.integers(6, 12)) if n is None else n
    return rng.normal(size=(n, N_IN))


def valid_Y(rng, n, output="softmax", loss=None):
    """Targets that fit (output, loss): labels for cross_entropy, probabilities
    for a sigmoid output, reals for identity."""
    loss = loss or {"softmax": "cross_entropy", "sigmoid": "binary_cross_entropy",
                    "identity": "mse"}[output]
    if loss == "cross_entropy":
        return rng.integers(0, N_OUT, size=n)
    if output == "sigmoid":
        return rng.uniform(0.0, 1.0, size=(n, N_OUT))
    return rng.normal(size=(n, N_OUT))


def snapshot(model, trainer=None):
    """Everything a failing call must leave alone, as host copies."""
    state = {
        "params": model.get_params(),
        "grads": model.backend.to_numpy(model.grads).copy(),
    }
    if trainer is not None:
        opt = trainer.optimizer
        state["steps"] = opt.steps
        state["epochs_done"] = trainer.epochs_done
        state["opt_model"] = opt._model
    return state


def assert_unchanged(before, after):
    assert len(before["params"]) == len(after["params"])
    for layer, ((w0, b0), (w1, b1)) in enumerate(zip(before["params"], after["params"])):
        assert np.array_equal(w0, w1), f"layer {layer} W changed by a failing call"
        assert np.array_equal(b0, b1), f"layer {layer} b changed by a failing call"
    assert np.array_equal(before["grads"], after["grads"]), "grads changed by a failing call"
    for key in ("steps", "epochs_done", "opt_model"):
        if key in before:
            assert before[key] is after[key] or before[key] == after[key], f"{key} changed"


def with_nan(rng, a, value=np.nan):
    a = np.array(a, dtype=np.float64, copy=True)
    a.flat[int(rng.integers(0, a.size))] = value
    return a


# -- bad X -----------------------------------------------------------------------

def _ragged(rng, n):
    rows = valid_X(rng, n).tolist()
    rows[-1] = rows[-1][:2]
    return rows


BAD_X = {  # name -> X(rng, n) for a model with N_IN inputs
    "too_wide": lambda rng, n: rng.normal(size=(n, N_IN + 1)),
    "too_narrow": lambda rng, n: rng.normal(size=(n, N_IN - 1)),
    "transposed": lambda rng, n: rng.normal(size=(N_IN, n)),
    "1d": lambda rng, n: rng.normal(size=n * N_IN),
    "3d": lambda rng, n: rng.normal(size=(n, N_IN, 1)),
    "scalar": lambda rng, n: np.float64(rng.normal()),
    "empty_rows": lambda rng, n: np.empty((0, N_IN)),
    "complex": lambda rng, n: rng.normal(size=(n, N_IN)) + 1j * rng.normal(size=(n, N_IN)),
    "complex_zero_imag": lambda rng, n: rng.normal(size=(n, N_IN)).astype(np.complex128),
    "strings": lambda rng, n: rng.normal(size=(n, N_IN)).astype(str),
    "object": lambda rng, n: rng.normal(size=(n, N_IN)).astype(object),
    "none": lambda rng, n: None,
    "ragged_list": _ragged,
    "nan": lambda rng, n: with_nan(rng, rng.normal(size=(n, N_IN))),
    "inf": lambda rng, n: with_nan(rng, rng.normal(size=(n, N_IN)), np.inf),
    "neg_inf": lambda rng, n: with_nan(rng, rng.normal(size=(n, N_IN)), -np.inf),
    "nan_float32": lambda rng, n: with_nan(rng, rng.normal(size=(n, N_IN))).astype(np.float32),
}

# Each entry point taking X: call(model, X, Y) after building what it needs.
X_ENTRY_POINTS = {
    "forward": lambda model, X, Y: model.forward(X),
    "predict": lambda model, X, Y: model.predict(X),
    "loss_and_grads": lambda model, X, Y: model.loss_and_grads(X, Y),
    "evaluate": lambda model, X, Y: model.evaluate(X, Y),
    "gradcheck": lambda model, X, Y: gpubp.gradcheck(model, X, Y),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("entry", list(X_ENTRY_POINTS))
@pytest.mark.parametrize("bad", list(BAD_X))
def test_bad_X_rejected(rng, backend, entry, bad):
    model = make_model(rng, backend)
    n = int(rng.integers(6, 12))
    X = BAD_X[bad](rng, n)
    Y = valid_Y(rng, n)
    before = snapshot(model)
    with pytest.raises(ERRORS, match=r"\bX\b"):
        X_ENTRY_POINTS[entry](model, X, Y)
    assert_unchanged(before, snapshot(model))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", list(BAD_X))
def test_bad_X_rejected_by_fit(rng, backend, bad):
    model = make_model(rng, backend)
    trainer = gpubp.Trainer(model, optimizer=Adam(1e-2), batch_size=4)
    n = int(rng.integers(6, 12))
    X = BAD_X[bad](rng, n)
    before = snapshot(model, trainer)
    with pytest.raises(ERRORS, match=r"\bX\b"):
        trainer.fit(X, valid_Y(rng, n), epochs=2)
    assert_unchanged(before, snapshot(model, trainer))


def test_bad_X_messages_say_what_was_expected(rng):
    model = make_model(rng, "numpy")
    n = 7
    with pytest.raises(ValueError, match=rf"X must have {N_IN} columns.*\({n}, {N_IN + 1}\)"):
        model.forward(rng.normal(size=(n, N_IN + 1)))
    with pytest.raises(ValueError, match=r"X must be 2-D"):
        model.forward(rng.normal(size=n * N_IN))
    with pytest.raises(ValueError, match=r"X must not be empty"):
        model.forward(np.empty((0, N_IN)))
    with pytest.raises(TypeError, match=r"X must be real.*complex"):
        model.forward(rng.normal(size=(n, N_IN)) + 1j)
    with pytest.raises(ValueError, match=r"X must be finite"):
        model.forward(with_nan(rng, rng.normal(size=(n, N_IN))))


# -- bad Y -----------------------------------------------------------------------

def _labels(rng, n):
    return rng.integers(0, N_OUT, size=n)


def _with_label(rng, n, value):
    y = _labels(rng, n)
    y[int(rng.integers(0, n))] = value
    return y


def _onehot(rng, n):
    return np.eye(N_OUT)[_labels(rng, n)]


BAD_Y = {  # name -> (output, loss, Y(rng, n), what the message must name)
    "labels_as_a_column": ("softmax", "cross_entropy", lambda rng, n: _labels(rng, n)[:, None],
                           r"\bY\b.*columns.*1-D class labels: pass Y.ravel\(\)"),
    "labels_too_many_rows": ("softmax", "cross_entropy", lambda rng, n: _labels(rng, n + 1), r"\bY\b.*rows"),
    "labels_too_few_rows": ("softmax", "cross_entropy", lambda rng, n: _labels(rng, n - 1), r"\bY\b.*rows"),
    "onehot_wrong_rows": ("softmax", "cross_entropy", lambda rng, n: _onehot(rng, n + 2), r"\bY\b.*rows"),
    "onehot_too_wide": ("softmax", "cross_entropy", lambda rng, n: np.eye(N_OUT + 1)[_labels(rng, n)], r"\bY\b.*columns"),
    "onehot_too_narrow": ("softmax", "cross_entropy", lambda rng, n: _onehot(rng, n)[:, :-1], r"\bY\b.*columns"),
    "labels_negative": ("softmax", "cross_entropy", lambda rng, n: _with_label(rng, n, -1), r"\bY\b.*labels"),
    "labels_very_negative": ("softmax", "cross_entropy", lambda rng, n: _with_label(rng, n, -(2**40)), r"\bY\b.*labels"),
    "labels_eq_n_outputs": ("softmax", "cross_entropy", lambda rng, n: _with_label(rng, n, N_OUT), r"\bY\b.*labels"),
    "labels_huge": ("softmax", "cross_entropy", lambda rng, n: _with_label(rng, n, 2**40), r"\bY\b.*labels"),
    "labels_float_1d": ("softmax", "cross_entropy", lambda rng, n: _labels(rng, n).astype(np.float64), r"\bY\b.*integer"),
    "labels_bool_1d": ("softmax", "cross_entropy", lambda rng, n: _labels(rng, n) > 0, r"\bY\b.*integer"),
    "labels_strings": ("softmax", "cross_entropy", lambda rng, n: _labels(rng, n).astype(str), r"\bY\b"),
    "labels_complex": ("softmax", "cross_entropy", lambda rng, n: _labels(rng, n) + 0j, r"\bY\b"),
    "labels_object": ("softmax", "cross_entropy", lambda rng, n: _labels(rng, n).astype(object), r"\bY\b"),
    "labels_3d": ("softmax", "cross_entropy", lambda rng, n: _onehot(rng, n)[:, :, None], r"\bY\b"),
    "labels_scalar": ("softmax", "cross_entropy", lambda rng, n: np.int64(1), r"\bY\b"),
    "labels_empty": ("softmax", "cross_entropy", lambda rng, n: np.empty(0, dtype=np.int64), r"\bY\b"),
    "onehot_nan": ("softmax", "cross_entropy", lambda rng, n: with_nan(rng, _onehot(rng, n)), r"\bY\b.*finite"),
    "onehot_inf": ("softmax", "cross_entropy", lambda rng, n: with_nan(rng, _onehot(rng, n), np.inf), r"\bY\b.*finite"),
    "onehot_negative": ("softmax", "cross_entropy", lambda rng, n: with_nan(rng, _onehot(rng, n), -0.5), r"\bY\b"),
    "bce_above_one": ("sigmoid", "binary_cross_entropy", lambda rng, n: with_nan(rng, rng.uniform(0, 1, (n, N_OUT)), 1.5), r"\bY\b.*\[0, 1\]"),
    "bce_below_zero": ("sigmoid", "binary_cross_entropy", lambda rng, n: with_nan(rng, rng.uniform(0, 1, (n, N_OUT)), -0.25), r"\bY\b.*\[0, 1\]"),
    "bce_1d_for_3_outputs": ("sigmoid", "binary_cross_entropy", lambda rng, n: rng.uniform(0, 1, n), r"\bY\b"),
    "bce_wrong_width": ("sigmoid", "binary_cross_entropy", lambda rng, n: rng.uniform(0, 1, (n, N_OUT + 1)), r"\bY\b.*columns"),
    "bce_nan": ("sigmoid", "binary_cross_entropy", lambda rng, n: with_nan(rng, rng.uniform(0, 1, (n, N_OUT))), r"\bY\b.*finite"),
    "sigmoid_mse_wrong_rows": ("sigmoid", "mse", lambda rng, n: rng.uniform(0, 1, (n + 1, N_OUT)), r"\bY\b.*rows"),
    "mse_wrong_width": ("identity", "mse", lambda rng, n: rng.normal(size=(n, N_OUT - 1)), r"\bY\b.*columns"),
    "mse_wrong_rows": ("identity", "mse", lambda rng, n: rng.normal(size=(n - 1, N_OUT)), r"\bY\b.*rows"),
    "mse_int_labels_1d": ("identity", "mse", lambda rng, n: _labels(rng, n), r"\bY\b"),
    "mse_nan": ("identity", "mse", lambda rng, n: with_nan(rng, rng.normal(size=(n, N_OUT))), r"\bY\b.*finite"),
    "mse_inf": ("identity", "mse", lambda rng, n: with_nan(rng, rng.normal(size=(n, N_OUT)), np.inf), r"\bY\b.*finite"),
    "mse_neg_inf": ("identity", "mse", lambda rng, n: with_nan(rng, rng.normal(size=(n, N_OUT)), -np.inf), r"\bY\b.*finite"),
    "mse_complex": ("identity", "mse", lambda rng, n: rng.normal(size=(n, N_OUT)) * 1j, r"\bY\b.*real"),
    "mse_empty": ("identity", "mse", lambda rng, n: np.empty((0, N_OUT)), r"\bY\b.*empty"),
    "mse_none": ("identity", "mse", lambda rng, n: [None] * n, r"\bY\b"),
    "labels_missing": ("softmax", "cross_entropy", lambda rng, n: None, r"\bY\b.*got None"),
    "mse_missing": ("identity", "mse", lambda rng, n: None, r"\bY\b.*got None"),
}

Y_ENTRY_POINTS = {
    "loss_and_grads": lambda model, X, Y, loss: model.loss_and_grads(X, Y, loss=loss),
    "evaluate": lambda model, X, Y, loss: model.evaluate(X, Y, loss=loss),
    "gradcheck": lambda model, X, Y, loss: gpubp.gradcheck(model, X, Y, loss=loss),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("entry", list(Y_ENTRY_POINTS))
@pytest.mark.parametrize("bad", list(BAD_Y))
def test_bad_Y_rejected(rng, backend, entry, bad):
    output, loss, make_Y, pattern = BAD_Y[bad]
    model = make_model(rng, backend, output=output)
    n = int(rng.integers(6, 12))
    X, Y = valid_X(rng, n), make_Y(rng, n)
    before = snapshot(model)
    with pytest.raises(ERRORS, match=pattern):
        Y_ENTRY_POINTS[entry](model, X, Y, loss)
    assert_unchanged(before, snapshot(model))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", list(BAD_Y))
def test_bad_Y_rejected_by_fit(rng, backend, bad):
    output, loss, make_Y, pattern = BAD_Y[bad]
    model = make_model(rng, backend, output=output)
    trainer = gpubp.Trainer(model, loss=loss, optimizer=SGD(0.1, momentum=0.9), batch_size=3)
    n = int(rng.integers(6, 12))
    X, Y = valid_X(rng, n), make_Y(rng, n)
    before = snapshot(model, trainer)
    with pytest.raises(ERRORS, match=pattern):
        trainer.fit(X, Y, epochs=3)
    assert_unchanged(before, snapshot(model, trainer))
    assert trainer.optimizer.buf is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_Y_messages_say_what_was_expected(rng, backend):
    model = make_model(rng, backend)
    n = 8
    X = valid_X(rng, n)
    with pytest.raises(ValueError, match=rf"Y labels must lie in \[0, {N_OUT - 1}\].*-1"):
        model.loss_and_grads(X, _with_label(rng, n, -1))
    with pytest.raises(ValueError, match=rf"Y labels must lie in \[0, {N_OUT - 1}\].*{N_OUT}"):
        model.loss_and_grads(X, _with_label(rng, n, N_OUT))
    with pytest.raises(ValueError, match=rf"Y must have {n} rows"):
        model.loss_and_grads(X, _labels(rng, n + 1))
    with pytest.raises(TypeError, match=r"Y as 1-D class labels must have an integer dtype"):
        model.loss_and_grads(X, _labels(rng, n).astype(np.float32))


# -- loss names and output/loss pairs ------------------------------------------------

BAD_LOSS = [  # (output, loss)
    ("softmax", "mse"),
    ("softmax", "binary_cross_entropy"),
    ("identity", "cross_entropy"),
    ("identity", "binary_cross_entropy"),
    ("sigmoid", "cross_entropy"),
    ("softmax", "hinge"),
    ("softmax", "MSE"),
    ("identity", ""),
    ("sigmoid", 3),
    ("identity", ["mse"]),
]

LOSS_ENTRY_POINTS = {
    "Trainer": lambda model, X, Y, loss: gpubp.Trainer(model, loss=loss),
    "loss_and_grads": lambda model, X, Y, loss: model.loss_and_grads(X, Y, loss=loss),
    "evaluate": lambda model, X, Y, loss: model.evaluate(X, Y, loss=loss),
    "gradcheck": lambda model, X, Y, loss: gpubp.gradcheck(model, X, Y, loss=loss),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("entry", list(LOSS_ENTRY_POINTS))
@pytest.mark.parametrize("output,loss", BAD_LOSS)
def test_bad_loss_rejected(rng, backend, entry, output, loss):
    model = make_model(rng, backend, output=output)
    n = int(rng.integers(6, 12))
    X, Y = valid_X(rng, n), valid_Y(rng, n, output)
    before = snapshot(model)
    with pytest.raises(ERRORS, match=r"\bloss\b"):
        LOSS_ENTRY_POINTS[entry](model, X, Y, loss)
    assert_unchanged(before, snapshot(model))


def test_mismatch_message_names_the_fitting_output(rng):
    model = make_model(rng, "numpy", output="identity")
    with pytest.raises(ValueError, match=r"loss 'cross_entropy' does not fit output 'identity'.*'softmax'"):
        gpubp.Trainer(model, loss="cross_entropy")
    model = make_model(rng, "numpy", output="softmax")
    with pytest.raises(ValueError, match=r"loss 'mse' does not fit output 'softmax'.*'sigmoid' or 'identity'"):
        gpubp.Trainer(model, loss="mse")


# -- the MLP constructor --------------------------------------------------------------

BAD_MLP_ARGS = [  # (kwargs, what the message must name)
    ({"layer_sizes": [5]}, r"layer_sizes"),
    ({"layer_sizes": []}, r"layer_sizes"),
    ({"layer_sizes": [3, 0, 2]}, r"layer_sizes"),
    ({"layer_sizes": [3, -1]}, r"layer_sizes"),
    ({"layer_sizes": [0, 3]}, r"layer_sizes"),
    ({"layer_sizes": [3, 2.5]}, r"layer_sizes"),
    ({"layer_sizes": [3.0, 2]}, r"layer_sizes"),
    ({"layer_sizes": [3, "2"]}, r"layer_sizes"),
    ({"layer_sizes": [3, True]}, r"layer_sizes"),
    ({"layer_sizes": [3, None]}, r"layer_sizes"),
    ({"layer_sizes": "abc"}, r"layer_sizes"),
    ({"layer_sizes": b"ab"}, r"layer_sizes"),
    ({"layer_sizes": 5}, r"layer_sizes"),
    ({"layer_sizes": None}, r"layer_sizes"),
    ({"layer_sizes": (i for i in (4, 3))}, r"layer_sizes"),
    ({"activation": "softmax"}, r"activation"),
    ({"activation": "swish"}, r"activation"),
    ({"activation": "ReLU"}, r"activation"),
    ({"activation": ""}, r"activation"),
    ({"activation": None}, r"activation"),
    ({"activation": 1}, r"activation"),
    ({"output": "relu"}, r"output"),
    ({"output": "tanh"}, r"output"),
    ({"output": "log_softmax"}, r"output"),
    ({"output": None}, r"output"),
    ({"backend": "gpu"}, r"backend"),
    ({"backend": "torch"}, r"backend"),
    ({"backend": ""}, r"backend"),
    ({"backend": 3}, r"backend"),
    ({"backend": ["numpy"]}, r"backend"),
    ({"dtype": "int32"}, r"dtype"),
    ({"dtype": "float16"}, r"dtype"),
    ({"dtype": np.float16}, r"dtype"),
    ({"dtype": "complex64"}, r"dtype"),
    ({"dtype": "bool"}, r"dtype"),
    ({"dtype": "not-a-dtype"}, r"dtype"),
    ({"dtype": 5}, r"dtype"),
    ({"seed": -1}, r"seed"),
    ({"seed": 1.5}, r"seed"),
    ({"seed": "0"}, r"seed"),
    ({"seed": True}, r"seed"),
    ({"layer_sizes": [3, 4, 1], "output": "softmax"}, r"softmax.*at least 2 outputs"),
]


@pytest.mark.parametrize("kwargs,pattern", BAD_MLP_ARGS,
                         ids=[" ".join(f"{k}={v!r}" for k, v in kw.items())[:40] for (kw, _) in BAD_MLP_ARGS])
def test_bad_MLP_arguments_rejected(kwargs, pattern):
    args = {"layer_sizes": SIZES, "activation": "tanh", "output": "softmax",
            "backend": "numpy", "dtype": "float32", "seed": 0}
    args.update(kwargs)
    with pytest.raises(ERRORS, match=pattern):
        gpubp.MLP(**args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mlp_messages_say_what_was_expected(backend):
    with pytest.raises(ValueError, match=r"layer_sizes must name at least an input and an output"):
        gpubp.MLP([5], backend=backend)
    with pytest.raises(ValueError, match=r"layer_sizes must all be positive.*\[3, 0, 2\]"):
        gpubp.MLP([3, 0, 2], backend=backend)
    with pytest.raises(TypeError, match=r"layer_sizes must hold integers.*2\.5"):
        gpubp.MLP([3, 2.5], backend=backend)
    with pytest.raises(ValueError, match=r"activation must be one of .*tanh.*'swish'"):
        gpubp.MLP(SIZES, activation="swish", backend=backend)
    with pytest.raises(ValueError, match=r"output must be one of .*softmax.*'relu'"):
        gpubp.MLP(SIZES, output="relu", backend=backend)
    with pytest.raises(ValueError, match=r"dtype must be float32 or float64; got 'int32'"):
        gpubp.MLP(SIZES, dtype="int32", backend=backend)


def test_fake_backend_object_rejected():
    with pytest.raises(ERRORS, match=r"backend"):
        gpubp.MLP(SIZES, backend=types.SimpleNamespace(name="numpy"))


# -- get_backend and GPUBP_BACKEND ----------------------------------------------------

@pytest.mark.parametrize("name", ["gpu", "torch", "numpy2", "cuda", " numpy ", 3, 1.0, b"numpy"])
def test_get_backend_unknown_name(name):
    with pytest.raises(ERRORS, match=r"backend must be one of auto, numpy, cupy"):
        gpubp.get_backend(name)


@pytest.mark.parametrize("value", ["gpu", "torch", "numpy,cupy", "0"])
def test_unknown_backend_in_environment(monkeypatch, value):
    monkeypatch.setenv("GPUBP_BACKEND", value)
    with pytest.raises(ERRORS, match=r"GPUBP_BACKEND must be one of auto, numpy, cupy"):
        gpubp.get_backend()
    with pytest.raises(ERRORS, match=r"GPUBP_BACKEND"):
        gpubp.get_backend(None)
    with pytest.raises(ERRORS, match=r"GPUBP_BACKEND"):
        gpubp.MLP(SIZES, backend=None)


def test_known_backend_in_environment_is_used(monkeypatch):
    monkeypatch.setenv("GPUBP_BACKEND", " NumPy ")
    assert gpubp.get_backend().name == "numpy"


@pytest.mark.skipif("cupy" in BACKENDS, reason="CuPy works here")
def test_cupy_unavailable_says_why(monkeypatch, rng):
    with pytest.raises(gpubp.BackendUnavailableError, match=r"cupy.*unavailable: \S.{10,}") as info:
        gpubp.get_backend("cupy")
    assert isinstance(info.value, RuntimeError)
    with pytest.raises(gpubp.BackendUnavailableError, match=r"cupy"):
        gpubp.get_backend("CuPy")
    with pytest.raises(gpubp.BackendUnavailableError, match=r"cupy"):
        gpubp.MLP(SIZES, backend="cupy")
    monkeypatch.setenv("GPUBP_BACKEND", "cupy")
    with pytest.raises(gpubp.BackendUnavailableError, match=r"cupy"):
        gpubp.get_backend()
    with pytest.raises(gpubp.BackendUnavailableError, match=r"cupy"):
        gpubp.MLP(SIZES)
    # Without the variable, "auto" falls back to NumPy.
    monkeypatch.delenv("GPUBP_BACKEND")
    assert gpubp.get_backend("auto").name == "numpy"


# -- the Trainer constructor -------------------------------------------------------------

BAD_TRAINER_ARGS = [  # (kwargs, what the message must name)
    ({"optimizer": "adam"}, r"optimizer"),
    ({"optimizer": Adam}, r"optimizer"),
    ({"optimizer": object()}, r"optimizer"),
    ({"optimizer": 0.01}, r"optimizer"),
    ({"batch_size": 0}, r"batch_size"),
    ({"batch_size": -1}, r"batch_size"),
    ({"batch_size": 2.5}, r"batch_size"),
    ({"batch_size": 32.0}, r"batch_size"),
    ({"batch_size": "32"}, r"batch_size"),
    ({"batch_size": True}, r"batch_size"),
    ({"batch_size": None}, r"batch_size"),
    ({"l2": -1e-3}, r"l2"),
    ({"l2": math.nan}, r"l2"),
    ({"l2": math.inf}, r"l2"),
    ({"l2": "0.1"}, r"l2"),
    ({"l2": None}, r"l2"),
    ({"seed": -1}, r"seed"),
    ({"seed": 2.5}, r"seed"),
    ({"seed": None}, r"seed"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs,pattern", BAD_TRAINER_ARGS,
                         ids=[f"{k}={v!r}"[:40] for (kw, _) in BAD_TRAINER_ARGS for k, v in kw.items()])
def test_bad_Trainer_arguments_rejected(rng, backend, kwargs, pattern):
    model = make_model(rng, backend)
    with pytest.raises(ERRORS, match=pattern):
        gpubp.Trainer(model, **kwargs)


@pytest.mark.parametrize("model", ["model", None, np.eye(3), SGD(0.1)],
                         ids=["str", "None", "ndarray", "optimizer"])
def test_Trainer_rejects_a_model_that_is_not_an_MLP(model):
    with pytest.raises(TypeError, match=r"model must be a gpubp\.MLP"):
        gpubp.Trainer(model)


def test_Trainer_messages_say_what_was_expected(rng):
    model = make_model(rng, "numpy")
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer; got 0"):
        gpubp.Trainer(model, batch_size=0)
    with pytest.raises(TypeError, match=r"batch_size must be a positive integer; got 2\.5"):
        gpubp.Trainer(model, batch_size=2.5)
    with pytest.raises(TypeError, match=r"optimizer must be a gpubp\.optim optimizer.*'adam'"):
        gpubp.Trainer(model, optimizer="adam")
    with pytest.raises(ValueError, match=r"l2 must be >= 0.*-1"):
        gpubp.Trainer(model, l2=-1)


# -- Trainer.fit -------------------------------------------------------------------------

def _val(rng, n_val, X=None, Y=None):
    return (valid_X(rng, n_val) if X is None else X, _labels(rng, n_val) if Y is None else Y)


BAD_FIT_ARGS = {  # name -> (kwargs(rng), what the message must name)
    "epochs_0": (lambda rng: {"epochs": 0}, r"epochs"),
    "epochs_-1": (lambda rng: {"epochs": -1}, r"epochs"),
    "epochs_2.5": (lambda rng: {"epochs": 2.5}, r"epochs"),
    "epochs_str": (lambda rng: {"epochs": "3"}, r"epochs"),
    "epochs_True": (lambda rng: {"epochs": True}, r"epochs"),
    "epochs_None": (lambda rng: {"epochs": None}, r"epochs"),
    "shuffle_str": (lambda rng: {"shuffle": "yes"}, r"shuffle"),
    "shuffle_2": (lambda rng: {"shuffle": 2}, r"shuffle"),
    "shuffle_float": (lambda rng: {"shuffle": 1.0}, r"shuffle"),
    "verbose_2": (lambda rng: {"verbose": 2}, r"verbose"),
    "progress_str": (lambda rng: {"progress": "no"}, r"progress"),
    "shuffle_None": (lambda rng: {"shuffle": None}, r"shuffle"),
    "val_array": (lambda rng: {"validation_data": valid_X(rng, 5)}, r"validation_data"),
    "val_single": (lambda rng: {"validation_data": (valid_X(rng, 5),)}, r"validation_data"),
    "val_triple": (lambda rng: {"validation_data": _val(rng, 5) + (None,)}, r"validation_data"),
    "val_str": (lambda rng: {"validation_data": "val"}, r"validation_data"),
    "val_dict": (lambda rng: {"validation_data": {"X": 1, "Y": 2}}, r"validation_data"),
    # The validation pair itself is bad.
    "val_X_too_wide": (lambda rng: {"validation_data": _val(rng, 5, X=rng.normal(size=(5, N_IN + 1)))}, r"\bX"),
    "val_X_1d": (lambda rng: {"validation_data": _val(rng, 5, X=rng.normal(size=5 * N_IN))}, r"\bX"),
    "val_X_nan": (lambda rng: {"validation_data": _val(rng, 5, X=with_nan(rng, rng.normal(size=(5, N_IN))))}, r"\bX"),
    "val_X_empty": (lambda rng: {"validation_data": _val(rng, 5, X=np.empty((0, N_IN)))}, r"\bX"),
    "val_Y_rows": (lambda rng: {"validation_data": _val(rng, 5, Y=_labels(rng, 6))}, r"\bY"),
    "val_Y_label": (lambda rng: {"validation_data": _val(rng, 5, Y=_with_label(rng, 5, N_OUT))}, r"\bY"),
    "val_Y_inf": (lambda rng: {"validation_data": _val(rng, 5, Y=with_nan(rng, _onehot(rng, 5), np.inf))}, r"\bY"),
    "val_Y_missing": (lambda rng: {"validation_data": (valid_X(rng, 5), None)}, r"Y_val.*got None"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("opt", ["SGD", "Adam", "AdamW"])
@pytest.mark.parametrize("bad", list(BAD_FIT_ARGS))
def test_bad_fit_arguments_change_nothing(rng, backend, opt, bad):
    make_kwargs, pattern = BAD_FIT_ARGS[bad]
    model = make_model(rng, backend)
    optimizer = {"SGD": lambda: SGD(0.1, momentum=0.5), "Adam": lambda: Adam(1e-2),
                 "AdamW": lambda: AdamW(1e-2)}[opt]()
    trainer = gpubp.Trainer(model, optimizer=optimizer, batch_size=4)
    n = int(rng.integers(6, 12))
    X, Y = valid_X(rng, n), valid_Y(rng, n)
    kwargs = {"epochs": 2, **make_kwargs(rng)}
    before = snapshot(model, trainer)
    with pytest.raises(ERRORS, match=pattern):
        trainer.fit(X, Y, **kwargs)
    assert_unchanged(before, snapshot(model, trainer))
    assert optimizer.steps == 0 and trainer.epochs_done == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_fit_after_training_changes_nothing(rng, backend):
    """A trainer that has already run keeps its parameters, step and epoch counts."""
    model = make_model(rng, backend)
    trainer = gpubp.Trainer(model, optimizer=Adam(1e-2), batch_size=4)
    n = 10
    X, Y = valid_X(rng, n), valid_Y(rng, n)
    trainer.fit(X, Y, epochs=1)
    assert trainer.optimizer.steps == 3 and trainer.epochs_done == 1
    m_before = model.backend.to_numpy(trainer.optimizer.m).copy()
    before = snapshot(model, trainer)
    for bad in ({"Y": _with_label(rng, n, -1)}, {"X": rng.normal(size=(n, N_IN - 1))},
                {"epochs": 0}, {"validation_data": _val(rng, 4, X=rng.normal(size=(4, 2)))}):
        args = {"X": X, "Y": Y, **bad}
        with pytest.raises(ERRORS):
            trainer.fit(**args)
        assert_unchanged(before, snapshot(model, trainer))
        assert np.array_equal(model.backend.to_numpy(trainer.optimizer.m), m_before)


VALIDATION_NAMING = {
    "X_too_wide": lambda rng: _val(rng, 5, X=rng.normal(size=(5, N_IN + 1))),
    "X_nan": lambda rng: _val(rng, 5, X=with_nan(rng, rng.normal(size=(5, N_IN)))),
    "Y_rows": lambda rng: _val(rng, 5, Y=_labels(rng, 6)),
    "Y_label": lambda rng: _val(rng, 5, Y=_with_label(rng, 5, -1)),
}


@pytest.mark.parametrize("bad", list(VALIDATION_NAMING))
def test_bad_validation_data_message_names_validation_data(rng, bad):
    model = make_model(rng, "numpy")
    trainer = gpubp.Trainer(model, batch_size=4)
    X, Y = valid_X(rng, 8), _labels(rng, 8)
    with pytest.raises(ERRORS, match=r"validation_data|X_val|Y_val"):
        trainer.fit(X, Y, validation_data=VALIDATION_NAMING[bad](rng))


@pytest.mark.parametrize("backend", BACKENDS)
def test_optimizer_of_another_model_rejected_before_any_kernel(rng, backend):
    first, second = make_model(rng, backend), make_model(rng, backend)
    optimizer = Adam(1e-2)
    X, Y = valid_X(rng, 8), _labels(rng, 8)
    gpubp.Trainer(first, optimizer=optimizer, batch_size=4).fit(X, Y)
    before = snapshot(second)
    steps = optimizer.steps
    with pytest.raises(ERRORS, match=r"optimizer"):
        gpubp.Trainer(second, optimizer=optimizer, batch_size=4).fit(X, Y)
    assert optimizer.steps == steps
    assert_unchanged(before, snapshot(second))


# -- optimizers -------------------------------------------------------------------------

BAD_LR = [0, 0.0, -1, -1e-3, math.nan, math.inf, -math.inf, "0.1", None, True]


@pytest.mark.parametrize("lr", BAD_LR, ids=repr)
@pytest.mark.parametrize("cls", [SGD, Adam, AdamW], ids=lambda c: c.__name__)
def test_bad_learning_rate(cls, lr):
    with pytest.raises(ERRORS, match=r"\blr\b"):
        cls(lr)
    with pytest.raises(ERRORS, match=r"\blr\b"):
        cls(lr=lr)


def test_learning_rate_message_says_what_was_expected():
    with pytest.raises(ValueError, match=r"lr must be > 0.*got 0\.0"):
        SGD(0)
    with pytest.raises(ValueError, match=r"lr must be finite and > 0.*got nan"):
        Adam(math.nan)
    with pytest.raises(ValueError, match=r"lr must be finite and > 0.*got inf"):
        SGD(math.inf)
    with pytest.raises(TypeError, match=r"lr must be a real number"):
        AdamW("0.1")


BAD_OPTIMIZER_ARGS = [  # (class, kwargs, what the message must name)
    (SGD, {"momentum": 1.0}, r"momentum"),
    (SGD, {"momentum": 1.5}, r"momentum"),
    (SGD, {"momentum": -0.1}, r"momentum"),
    (SGD, {"momentum": math.nan}, r"momentum"),
    (SGD, {"momentum": "0.9"}, r"momentum"),
    (SGD, {"momentum": None}, r"momentum"),
    (SGD, {"nesterov": True}, r"nesterov"),
    (SGD, {"nesterov": True, "momentum": 0.0}, r"nesterov"),
    (SGD, {"nesterov": 2, "momentum": 0.9}, r"nesterov"),
    (SGD, {"nesterov": "yes", "momentum": 0.9}, r"nesterov"),
    (Adam, {"betas": (1.0, 0.999)}, r"betas"),
    (Adam, {"betas": (0.9, 1.0)}, r"betas"),
    (Adam, {"betas": (-0.1, 0.999)}, r"betas"),
    (Adam, {"betas": (0.9, -0.5)}, r"betas"),
    (Adam, {"betas": (0.9, 1.5)}, r"betas"),
    (Adam, {"betas": (math.nan, 0.999)}, r"betas"),
    (Adam, {"betas": ("0.9", 0.999)}, r"betas"),
    (Adam, {"betas": (0.9,)}, r"betas"),
    (Adam, {"betas": (0.9, 0.99, 0.9)}, r"betas"),
    (Adam, {"betas": 0.9}, r"betas"),
    (Adam, {"betas": "ab"}, r"betas"),
    (Adam, {"betas": None}, r"betas"),
    (Adam, {"eps": 0.0}, r"eps"),
    (Adam, {"eps": -1e-8}, r"eps"),
    (Adam, {"eps": math.nan}, r"eps"),
    (Adam, {"eps": math.inf}, r"eps"),
    (Adam, {"eps": "1e-8"}, r"eps"),
    (AdamW, {"betas": (1.0, 0.999)}, r"betas"),
    (AdamW, {"betas": (0.9, -0.1)}, r"betas"),
    (AdamW, {"eps": 0}, r"eps"),
    (AdamW, {"eps": -1.0}, r"eps"),
    (AdamW, {"weight_decay": -0.01}, r"weight_decay"),
    (AdamW, {"weight_decay": math.nan}, r"weight_decay"),
    (AdamW, {"weight_decay": math.inf}, r"weight_decay"),
    (AdamW, {"weight_decay": "0.01"}, r"weight_decay"),
    (AdamW, {"weight_decay": None}, r"weight_decay"),
]


@pytest.mark.parametrize(
    "cls,kwargs,pattern", BAD_OPTIMIZER_ARGS,
    ids=[f"{c.__name__}-" + ",".join(f"{k}={v!r}" for k, v in kw.items())
         for c, kw, _ in BAD_OPTIMIZER_ARGS])
def test_bad_optimizer_arguments(cls, kwargs, pattern):
    with pytest.raises(ERRORS, match=pattern):
        cls(0.01, **kwargs)


def test_optimizer_messages_say_what_was_expected():
    with pytest.raises(ValueError, match=r"momentum must be >= 0.*< 1.*got 1\.0"):
        SGD(0.1, momentum=1.0)
    with pytest.raises(ValueError, match=r"nesterov=True needs momentum > 0"):
        SGD(0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"betas\[0\] must be >= 0.*< 1.*got 1\.0"):
        Adam(betas=(1.0, 0.999))
    with pytest.raises(ValueError, match=r"eps must be > 0.*got 0\.0"):
        Adam(eps=0)
    with pytest.raises(ValueError, match=r"weight_decay must be >= 0.*got -0\.01"):
        AdamW(weight_decay=-0.01)


# -- l2 on the model's methods and gradcheck's own arguments ----------------------------------

L2_ENTRY_POINTS = {
    "loss_and_grads": lambda model, X, Y, l2: model.loss_and_grads(X, Y, l2=l2),
    "evaluate": lambda model, X, Y, l2: model.evaluate(X, Y, l2=l2),
    "gradcheck": lambda model, X, Y, l2: gpubp.gradcheck(model, X, Y, l2=l2),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("entry", list(L2_ENTRY_POINTS))
@pytest.mark.parametrize("l2", [-1.0, -1e-6, math.nan, math.inf, "0", None, True], ids=repr)
def test_bad_l2_rejected(rng, backend, entry, l2):
    model = make_model(rng, backend)
    n = int(rng.integers(6, 12))
    before = snapshot(model)
    with pytest.raises(ERRORS, match=r"\bl2\b"):
        L2_ENTRY_POINTS[entry](model, valid_X(rng, n), valid_Y(rng, n), l2)
    assert_unchanged(before, snapshot(model))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs,pattern", [
    ({"eps": 0.0}, r"\beps\b"),
    ({"eps": -1e-5}, r"\beps\b"),
    ({"eps": math.nan}, r"\beps\b"),
    ({"eps": "1e-5"}, r"\beps\b"),
    ({"floor": 0.0}, r"\bfloor\b"),
    ({"floor": -1.0}, r"\bfloor\b"),
    ({"floor": math.inf}, r"\bfloor\b"),
], ids=lambda x: repr(x) if isinstance(x, dict) else None)
def test_bad_gradcheck_arguments(rng, backend, kwargs, pattern):
    model = make_model(rng, backend)
    n = int(rng.integers(6, 12))
    before = snapshot(model)
    with pytest.raises(ERRORS, match=pattern):
        gpubp.gradcheck(model, valid_X(rng, n), valid_Y(rng, n), **kwargs)
    assert_unchanged(before, snapshot(model))


@pytest.mark.parametrize("model", ["model", None, SGD(0.1)], ids=["str", "None", "optimizer"])
def test_gradcheck_rejects_a_model_that_is_not_an_MLP(rng, model):
    with pytest.raises(TypeError, match=r"model must be a gpubp\.MLP"):
        gpubp.gradcheck(model, valid_X(rng, 5), _labels(rng, 5))


# -- set_params --------------------------------------------------------------------------

def _fresh_params(rng, sizes=SIZES):
    """A full, valid, random parameter list different from the model's."""
    return [(rng.normal(size=(i, o)), rng.normal(size=o)) for i, o in zip(sizes[:-1], sizes[1:])]


def _replace(params, layer, which, value):
    params = [list(p) for p in params]
    params[layer][which] = value
    return [tuple(p) for p in params]


BAD_SET_PARAMS = {  # name -> params(rng, good params) for a [4, 5, 3] model
    "none": lambda rng, p: None,
    "dict": lambda rng, p: dict(enumerate(p)),
    "ndarray": lambda rng, p: np.zeros(2),
    "empty_list": lambda rng, p: [],
    "one_layer": lambda rng, p: p[:1],
    "three_layers": lambda rng, p: p + p[-1:],
    "pair_of_one": lambda rng, p: [p[0], (p[1][0],)],
    "pair_of_three": lambda rng, p: [p[0], p[1] + (p[1][1],)],
    "pair_not_sequence": lambda rng, p: [p[0], p[1][0]],
    "W_transposed": lambda rng, p: _replace(p, 1, 0, p[1][0].T),
    "W_extra_row": lambda rng, p: _replace(p, 1, 0, rng.normal(size=(SIZES[1] + 1, SIZES[2]))),
    "W_flat": lambda rng, p: _replace(p, 1, 0, p[1][0].ravel()),
    "W_3d": lambda rng, p: _replace(p, 1, 0, p[1][0][None]),
    "b_column": lambda rng, p: _replace(p, 1, 1, p[1][1][:, None]),
    "b_too_long": lambda rng, p: _replace(p, 1, 1, rng.normal(size=SIZES[2] + 1)),
    "b_scalar": lambda rng, p: _replace(p, 1, 1, 0.5),
    "W_nan": lambda rng, p: _replace(p, 1, 0, with_nan(rng, p[1][0])),
    "W_inf": lambda rng, p: _replace(p, 1, 0, with_nan(rng, p[1][0], np.inf)),
    "b_nan": lambda rng, p: _replace(p, 1, 1, with_nan(rng, p[1][1])),
    "b_neg_inf": lambda rng, p: _replace(p, 1, 1, with_nan(rng, p[1][1], -np.inf)),
    "W_complex": lambda rng, p: _replace(p, 1, 0, p[1][0] + 1j),
    "W_strings": lambda rng, p: _replace(p, 1, 0, p[1][0].astype(str)),
    "W_object": lambda rng, p: _replace(p, 1, 0, p[1][0].astype(object)),
    "W_none": lambda rng, p: _replace(p, 1, 0, None),
    "W_empty": lambda rng, p: _replace(p, 1, 0, np.empty((0, SIZES[2]))),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bad", list(BAD_SET_PARAMS))
def test_bad_set_params_writes_nothing(rng, backend, dtype, bad):
    model = make_model(rng, backend, dtype=dtype)
    before = snapshot(model)
    # Layer 0 of the new list is valid and differs from the model's, so a
    # half-applied call would show up as a changed first layer.
    params = BAD_SET_PARAMS[bad](rng, _fresh_params(rng))
    with pytest.raises(ERRORS, match=r"\bparams\b"):
        model.set_params(params)
    assert_unchanged(before, snapshot(model))


@pytest.mark.parametrize("backend", BACKENDS)
def test_set_params_first_layer_not_written_when_second_is_bad(rng, backend):
    model = make_model(rng, backend)
    (w0, b0), _ = model.get_params()
    new = _fresh_params(rng)
    assert not np.array_equal(new[0][0].astype(np.float32), w0)
    bad = [new[0], (rng.normal(size=(SIZES[2], SIZES[1])), new[1][1])]
    with pytest.raises(ValueError, match=r"params\[1\]\[0\] \(W\) must have shape \(5, 3\); got \(3, 5\)"):
        model.set_params(bad)
    (w0_after, b0_after), _ = model.get_params()
    assert np.array_equal(w0_after, w0) and np.array_equal(b0_after, b0)
    # Also through the flat buffer the optimizers see.
    n_w0 = SIZES[0] * SIZES[1]
    assert np.array_equal(model.backend.to_numpy(model.params)[:n_w0], w0.ravel())


@pytest.mark.parametrize("backend", BACKENDS)
def test_set_params_messages_say_what_was_expected(rng, backend):
    model = make_model(rng, backend)
    p = _fresh_params(rng)
    with pytest.raises(ValueError, match=r"params must be a list of 2 \(W, b\) pairs; got 1"):
        model.set_params(p[:1])
    with pytest.raises(ValueError, match=r"params\[1\]\[1\] \(b\) must have shape \(3,\); got \(4,\)"):
        model.set_params(_replace(p, 1, 1, rng.normal(size=4)))
    with pytest.raises(ValueError, match=r"params\[1\]\[0\] \(W\) must be finite"):
        model.set_params(_replace(p, 1, 0, with_nan(rng, p[1][0])))


# -- finite in float64, infinite in the model's float32 ----------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_X_overflowing_float32_rejected(rng, backend):
    model = make_model(rng, backend, dtype="float32")
    X = with_nan(rng, valid_X(rng, 6), 1e39)
    with np.errstate(all="ignore"):
        with pytest.raises(ERRORS, match=r"\bX\b"):
            model.predict(X)


@pytest.mark.parametrize("backend", BACKENDS)
def test_set_params_overflowing_float32_rejected(rng, backend):
    model = make_model(rng, backend, dtype="float32")
    before = snapshot(model)
    params = _fresh_params(rng)
    params = _replace(params, 1, 0, with_nan(rng, params[1][0], 1e39))
    with np.errstate(all="ignore"):
        with pytest.raises(ERRORS, match=r"\bparams\b"):
            model.set_params(params)
    assert_unchanged(before, snapshot(model))
