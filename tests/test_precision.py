"""Precision modes of the matrix products (float32, tf32, bf16): the rounding,
the seam, and the gradients against the float64 reference with stated tolerances."""

import numpy as np
import pytest

import gpubp
from _helpers import PAIRS, random_targets, reference_backprop
from gpubp.backends import get_backend
from gpubp.precision import MANTISSA_BITS, round_to

# Relative error of the whole gradient (2-norm over every parameter) and of the loss,
# against the float64 per-example reference. float32's rounding is ~1e-7 here;
# tf32 keeps 10 mantissa bits (unit roundoff 4.9e-4), bf16 7 (3.9e-3). Observed
# over 60 draws x 12 cases: tf32 worst 2.2e-3, bf16 worst 1.2e-2.
TOL = {"float32": 1e-5, "tf32": 1e-2, "bf16": 5e-2}
# Smooth activations only: with relu, a rounding error can move z across the
# kink at 0 and flip g'(z), a true difference of the mode rather than an error.
SMOOTH = ["sigmoid", "tanh", "identity"]


def _reference_round(x, bits):
    """Round to ``bits`` explicit mantissa bits in float64 arithmetic, ties to even."""
    m, e = np.frexp(x.astype(np.float64))
    return np.ldexp(np.round(m * 2.0 ** (bits + 1)) / 2.0 ** (bits + 1), e).astype(np.float32)


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_rounding_matches_an_independent_reference(backend, rng, precision):
    b = get_backend(backend)
    x = (rng.normal(size=5000) * 10.0 ** rng.uniform(-30, 30, size=5000)).astype(np.float32)
    bits = MANTISSA_BITS[precision]
    ulp = np.float32(2.0 ** -(bits + 1))                  # half an ulp at 1.0
    ties = np.array([1 + ulp, 1 + 3 * ulp, -(1 + ulp), 2 + 2 * ulp * 5], dtype=np.float32)
    x = np.concatenate([x, ties])
    got = b.to_numpy(round_to(b.xp, b.asarray(x), precision, b.xp.empty(x.shape, np.float32)))
    np.testing.assert_array_equal(got, _reference_round(x, bits))
    assert got[-4] == 1.0 and got[-3] == np.float32(1 + 4 * ulp)   # ties go to the even neighbour


def test_round_to_refuses_to_work_in_place():
    x = np.ones(4, np.float32)
    with pytest.raises(ValueError):
        round_to(np, x, "tf32", x)


@pytest.mark.parametrize("where", ["numpy", "emulated", "emulated, capturable"])
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_matmul_seam_rounds_the_operands(rng, precision, where):
    """On NumPy; and on the CuPy backend's own route, emulated: tf32 through
    gpubp.cublas (CUBLAS_COMPUTE_32F_FAST_TF32, on the stand-in for libcublas),
    bf16 rounded first, then cupy.matmul or, while capturable, gpubp.cublas."""
    if where == "numpy":
        b = get_backend("numpy")
    else:
        from _cuda_emulator import emulated_backend

        b = emulated_backend()
    A = rng.normal(size=(13, 7)).astype(np.float32)
    B = rng.normal(size=(11, 7)).astype(np.float32)
    out = np.empty((13, 11), np.float32)
    if where.endswith("capturable"):
        with b.capturable():
            b.matmul(A, B, out=out, transb=True, precision=precision)
    else:
        b.matmul(A, B, out=out, transb=True, precision=precision)
    bits = MANTISSA_BITS[precision]
    expected = _reference_round(A, bits).astype(np.float64) @ _reference_round(B, bits).T.astype(np.float64)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(out - A.astype(np.float64) @ B.T.astype(np.float64)).max() > 1e-5  # it did round


@pytest.mark.parametrize("precision", ["float32", "tf32", "bf16"])
@pytest.mark.parametrize("activation", SMOOTH)
@pytest.mark.parametrize("output,loss", PAIRS)
def test_gradients_within_the_modes_tolerance(backend, rng, precision, activation, output, loss):
    model = gpubp.MLP([6, 5, 4, 3], activation=activation, output=output, backend=backend,
                      precision=precision, seed=int(rng.integers(1 << 30)))
    model.set_params([(W, rng.normal(scale=0.5, size=b.shape)) for W, b in model.get_params()])
    X = rng.normal(size=(9, 6))
    Y = random_targets(rng, 9, 3, output, loss)
    J, grads = model.loss_and_grads(X, Y, loss=loss, l2=0.3)
    J_ref, grads_ref = reference_backprop(model.get_params(), activation, output, loss, X, Y, 0.3)
    flat = np.concatenate([np.r_[dW.ravel(), db] for dW, db in grads])
    ref = np.concatenate([np.r_[dW.ravel(), db] for dW, db in grads_ref])
    assert np.linalg.norm(flat - ref) / np.linalg.norm(ref) < TOL[precision]
    assert abs(J - J_ref) / abs(J_ref) < TOL[precision]


def _rounding(precision):
    """A precision mode's rounding of one (float32) factor of a product, as float64:
    the independent reference above, not gpubp's own round_to."""
    return lambda x: _reference_round(np.asarray(x, np.float32), MANTISSA_BITS[precision]).astype(np.float64)


def _on(where):
    if where == "numpy":
        return "numpy"
    from _cuda_emulator import emulated_backend

    return emulated_backend()


@pytest.mark.parametrize("where", ["numpy", "emulated"])
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("activation", SMOOTH)
@pytest.mark.parametrize("output,loss", PAIRS)
def test_every_product_rounds_both_factors(rng, where, precision, activation, output, loss):
    """Each product of the step (forward, error, dW) rounds both its factors: against
    the float64 reference whose every product does the same, only float32's error is
    left (median ~5e-8 over draws), where one product left unrounded gives 1e-4 (tf32)
    to 1e-3 (bf16) or more. The median over draws, as the reference's float64 factors
    can, rarely, round to the other neighbour of the model's float32 ones (up to 1e-4
    seen for one draw). 8 rows: the loss's 1/m in delta is then a power of two, which
    commutes with the rounding. On the emulated CuPy backend too: tf32 through
    gpubp.cublas (the stand-in for libcublas), bf16 rounded by the backend first, and
    layers under 64 wide taking the products rather than the fused fp32 kernels."""
    errors = []
    for _ in range(7):
        model = gpubp.MLP([6, 5, 4, 3], activation=activation, output=output, backend=_on(where),
                          precision=precision, seed=int(rng.integers(1 << 30)))
        model.set_params([(W, rng.normal(scale=0.5, size=b.shape)) for W, b in model.get_params()])
        X = rng.normal(size=(8, 6))
        Y = random_targets(rng, 8, 3, output, loss)
        _, grads = model.loss_and_grads(X, Y, loss=loss, l2=0.3)
        _, grads_ref = reference_backprop(model.get_params(), activation, output, loss, X, Y, 0.3,
                                          operand=_rounding(precision))
        flat = np.concatenate([np.r_[dW.ravel(), db] for dW, db in grads])
        ref = np.concatenate([np.r_[dW.ravel(), db] for dW, db in grads_ref])
        errors.append(np.linalg.norm(flat - ref) / np.linalg.norm(ref))
    assert np.median(errors) < 1e-6, errors


def test_lower_precision_is_really_lower(rng):
    """The modes do something: over many draws, float32 < tf32 < bf16 in error."""
    errors = {p: [] for p in ("float32", "tf32", "bf16")}
    for _ in range(20):
        X, y = rng.normal(size=(16, 8)), rng.integers(0, 4, size=16)
        params = gpubp.MLP([8, 16, 4], activation="tanh", backend="numpy",
                           seed=int(rng.integers(1 << 30))).get_params()
        _, ref = reference_backprop(params, "tanh", "softmax", "cross_entropy", X, np.eye(4)[y], 0.0)
        ref = np.concatenate([g.ravel() for pair in ref for g in pair])
        for p in errors:
            model = gpubp.MLP([8, 16, 4], activation="tanh", backend="numpy", precision=p)
            model.set_params(params)
            flat = np.concatenate([g.ravel() for pair in model.loss_and_grads(X, y)[1] for g in pair])
            errors[p].append(np.linalg.norm(flat - ref) / np.linalg.norm(ref))
    med = {p: np.median(e) for p, e in errors.items()}
    assert med["float32"] * 10 < med["tf32"] < med["bf16"]


def test_bf16_training_still_learns_digits(backend):
    pytest.importorskip("sklearn")
    from gpubp.demo import load_digits_split

    X_train, X_test, y_train, y_test = load_digits_split(0)
    model = gpubp.MLP([64, 64, 10], backend=backend, precision="bf16")
    gpubp.Trainer(model, optimizer=gpubp.optim.Adam(1e-2)).fit(X_train, y_train, epochs=30)
    assert model.evaluate(X_test, y_test)["accuracy"] >= 0.95


def test_precision_is_validated():
    with pytest.raises(ValueError, match="precision must be one of"):
        gpubp.MLP([2, 2], precision="fp16", backend="numpy")
    with pytest.raises(ValueError, match="needs dtype float32"):
        gpubp.MLP([2, 2], precision="tf32", dtype="float64", backend="numpy")
    assert "precision='bf16'" in repr(gpubp.MLP([2, 2], precision="bf16", backend="numpy"))
