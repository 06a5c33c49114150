"""The main job: train a small network on scikit-learn's digits and report."""

from __future__ import annotations

import time

import numpy as np

from .model import MLP
from .optim import Adam
from .trainer import Trainer


def load_digits_split(seed=0, test_fraction=0.25):
    """scikit-learn's 8x8 digits (1797 images, shipped with the package), pixels
    scaled to [0, 1], split into a stratified train and test set."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise SystemExit(
            "the digits demo needs scikit-learn: pip install 'gpubp[datasets]'"
        ) from exc
    data = load_digits()
    X = (data.data / 16.0).astype(np.float32)
    return train_test_split(X, data.target, test_size=test_fraction, random_state=seed,
                            stratify=data.target)


def run_digits(backend="auto", epochs=30, batch_size=32, hidden=64, activation="sigmoid",
               lr=1e-2, dtype="float32", seed=0, verbose=False, progress=False):
    # The model and trainer first: they check every setting, seed included, in gpubp's words.
    model = MLP([64, hidden, 10], activation=activation, output="softmax", backend=backend,
                dtype=dtype, seed=seed)
    trainer = Trainer(model, optimizer=Adam(lr), batch_size=batch_size, seed=seed)
    X_train, X_test, y_train, y_test = load_digits_split(seed)
    start = time.perf_counter()
    history = trainer.fit(X_train, y_train, epochs=epochs, validation_data=(X_test, y_test),
                          verbose=verbose, progress=progress)
    seconds = time.perf_counter() - start
    accuracy = model.evaluate(X_test, y_test)["accuracy"]
    return model, history, accuracy, seconds
