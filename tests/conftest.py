import os

import numpy as np
import pytest

from _helpers import BACKENDS


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each backend usable here: numpy always, cupy where a GPU is."""
    return request.param


@pytest.fixture
def rng():
    """Fresh random inputs for every test; the seed is printed for a failing run,
    and GPUBP_TEST_SEED=<that seed> draws the same inputs again."""
    seed = int(os.environ.get("GPUBP_TEST_SEED") or np.random.SeedSequence().entropy)
    print(f"rng seed: {seed}")
    return np.random.default_rng(seed)
