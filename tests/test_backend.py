"""Backend selection: auto, numpy, cupy, the environment variable, clear errors."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gpubp
from gpubp.backends import get_backend


def test_numpy_is_always_available():
    assert gpubp.available_backends()[0] == "numpy"
    b = gpubp.get_backend("numpy")
    assert b.name == "numpy" and b.xp is np


def test_auto_picks_cupy_exactly_when_it_is_usable():
    expected = "cupy" if "cupy" in gpubp.available_backends() else "numpy"
    assert gpubp.get_backend("auto").name == expected


def test_environment_variable_sets_the_default(monkeypatch):
    monkeypatch.setenv("GPUBP_BACKEND", "numpy")
    assert gpubp.get_backend().name == "numpy"
    assert gpubp.MLP([2, 2]).backend.name == "numpy"
    monkeypatch.setenv("GPUBP_BACKEND", "auto")
    assert gpubp.get_backend().name == gpubp.get_backend("auto").name
    monkeypatch.setenv("GPUBP_BACKEND", "tpu")
    with pytest.raises(ValueError, match="GPUBP_BACKEND"):
        gpubp.get_backend()
    with pytest.raises(ValueError, match="GPUBP_BACKEND"):
        gpubp.MLP([2, 2])


def test_an_explicit_name_beats_the_environment(monkeypatch):
    monkeypatch.setenv("GPUBP_BACKEND", "cupy")
    assert gpubp.get_backend("numpy").name == "numpy"


@pytest.mark.skipif("cupy" in gpubp.available_backends(), reason="a GPU is usable here")
def test_asking_for_cupy_without_a_gpu_says_why():
    with pytest.raises(gpubp.BackendUnavailableError, match="cupy.*unavailable: .+"):
        gpubp.get_backend("cupy")
    with pytest.raises(gpubp.BackendUnavailableError):
        gpubp.MLP([2, 2], backend="cupy")


def _run(code):
    return subprocess.run([sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)


def test_import_never_warns_or_touches_cuda():
    result = _run("""
        import sys, gpubp
        assert 'cupy' not in sys.modules, 'importing gpubp imported cupy'
        print(gpubp.available_backends())
    """)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_works_without_cupy_installed():
    result = _run("""
        import sys
        sys.modules['cupy'] = None          # as if CuPy were not installed
        import numpy as np, gpubp
        assert gpubp.available_backends() == ['numpy']
        assert gpubp.get_backend().name == 'numpy'
        try:
            gpubp.get_backend('cupy')
        except gpubp.BackendUnavailableError as e:
            assert 'not installed' in str(e) and 'gpubp[cuda1' in str(e), e
        else:
            raise AssertionError('no error')
        m = gpubp.MLP([3, 4, 2])
        gpubp.Trainer(m, batch_size=2).fit(np.random.rand(6, 3), np.array([0, 1, 0, 1, 1, 0]))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_backend_objects_pass_through():
    b = get_backend("numpy")
    assert get_backend(b) is b


def test_round_trip_and_contiguity(backend, rng):
    b = get_backend(backend)
    a = rng.normal(size=(5, 4))[:, ::2]           # not contiguous
    d = b.asarray(a, dtype=np.float32)
    assert d.flags.c_contiguous and d.dtype == np.float32
    host = b.to_numpy(d)
    assert isinstance(host, np.ndarray)
    np.testing.assert_array_equal(host, a.astype(np.float32))


def test_work_arrays_are_reused_and_the_least_recently_used_is_dropped():
    from gpubp.backends.numpy_backend import WorkArrays

    work = WorkArrays(np)
    work.LIMIT = 3
    a = work.empty((2, 3), np.float32)
    assert work.empty((2, 3), np.float32) is a                 # same shape, dtype, slot
    assert work.empty((2, 3), np.float64) is not a
    assert work.empty((2, 3), np.float32, slot=1) is not a
    work.empty((2, 3), np.float32)                             # a is now the most recent
    work.empty((4,), np.float32)                               # drops the float64 array
    assert len(work.live()) == 3 and any(x is a for x in work.live())
    assert all(x.dtype == np.float32 for x in work.live())


def test_pinned_work_arrays_are_never_dropped():
    """A CUDA graph being captured records the addresses of its work arrays."""
    from gpubp.backends.numpy_backend import WorkArrays

    work = WorkArrays(np)
    work.LIMIT = 2
    with work.pinned():
        handed = [work.empty((n,), np.float32) for n in range(1, 6)]
        assert all(work.empty((n,), np.float32) is h for n, h in zip(range(1, 6), handed))
    assert {id(x) for x in work.live()} == {id(h) for h in handed}
    newest = work.empty((9,), np.float32)                      # unpinned: bounded again
    assert len(work.live()) == 2 and work.live()[-1] is newest


def test_every_array_function_the_shared_code_calls_exists_in_cupy():
    """Code written once for both backends calls NumPy or CuPy through ``xp``
    (the NumPy backend's code also runs on CuPy arrays, as the benchmark's
    unfused path). Each function it names must exist in CuPy too: checked here
    on any machine where CuPy imports, GPU or not."""
    import ast
    from pathlib import Path

    cupy = pytest.importorskip("cupy")
    called = {}
    for path in Path(gpubp.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                owner = node.value
                if (isinstance(owner, ast.Name) and owner.id == "xp") or \
                        (isinstance(owner, ast.Attribute) and owner.attr == "xp"):
                    called.setdefault(node.attr, path.name)
    assert len(called) > 20                     # the walk found the shared code
    assert {name: where for name, where in called.items() if not hasattr(cupy, name)} == {}
