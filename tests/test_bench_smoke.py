"""The benchmark suite, once at tiny sizes on the NumPy backend: every code
path runs (table, JSON, plot, skipped peers, pytest-benchmark); nothing is measured."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gpubp import get_backend
from gpubp.__main__ import main
from gpubp.bench import CONFIGS, Settings
from gpubp.bench.configs import Config
from gpubp.bench.report import fmt
from gpubp.bench.run import plan, run

ROOT = Path(__file__).resolve().parents[1]


def _bench(tmp_path, capsys, *extra):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    args = ["bench", "--quick", "--repeat", "2", "--json", str(out_json), *extra]
    plotting = True
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        plotting = False
    if plotting:
        args += ["--plot", str(out_png)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    results = json.loads(out_json.read_text())
    if plotting:
        assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return printed, results


def _loops():
    """Whether the NumPy backend runs Numba's loops here (then the bench also
    times its passes, as gpubp-numpy-passes)."""
    return get_backend("numpy").loops is not None


def test_cli_runs_every_numpy_path_and_the_json_holds_every_printed_figure(tmp_path, capsys):
    printed, results = _bench(tmp_path, capsys, "--config", "tiny", "--backend", "all")
    assert results["complete"] and not list(tmp_path.glob("*.tmp"))
    timed = {(m["subject"], m["workload"]) for m in results["measurements"]}
    assert {("gpubp-numpy", w) for w in ("forward", "step", "epoch")} <= timed
    assert {("floor-numpy", "forward"), ("floor-numpy", "step")} <= timed
    reported = {s for s, _ in timed} | {s["subject"] for s in results["skipped"]}
    assert reported >= {"gpubp-numpy", "gpubp-numpy-passes", "floor-numpy", "torch-cpu", "floor-torch-cpu", "gpubp-cupy",
                        "gpubp-cupy-graph", "gpubp-cupy-unfused", "floor-cupy", "torch-cuda",
                        "torch-cuda-graph", "floor-torch-cuda"}
    for m in results["measurements"]:
        assert 0 < m["min_us"] <= m["median_us"] <= m["max_us"] and m["repeats"] >= 2
    # Every row the table prints comes from the JSON, figure for figure.
    rows = {m["subject"]: {} for m in results["measurements"]}
    for m in results["measurements"]:
        rows[m["subject"]][m["workload"]] = m
    for subject, r in rows.items():
        line = next(l for l in printed.splitlines() if l.strip().startswith(subject + " "))
        step = r["step"]
        expected = [fmt(r["forward"]["median_us"]) if "forward" in r else "-", fmt(step["median_us"]),
                    f"{fmt(step['min_us'])}-{fmt(step['max_us'])}",
                    fmt(r["epoch"]["median_us"] / 1e3) if "epoch" in r else "-", fmt(step["tflops"])]
        assert line.split()[1:] == expected
    for name, value in results["ratios"]["tiny"]["step"].items():
        assert re.search(rf"{name} {re.escape(fmt(value))}\b", printed)
    assert results["meta"]["date"] and results["meta"]["numpy"] and results["meta"]["cpu_cores"]
    from gpubp.backends.numpy_backend import numba_loops
    assert results["meta"]["numba"] == getattr(numba_loops(), "VERSION", None)   # which CPU path ran
    if results["meta"]["numba"]:                     # the loops against NumPy's passes, side by side
        assert {("gpubp-numpy-passes", "forward"), ("gpubp-numpy-passes", "step")} <= timed
        assert "loops_speedup_over_passes" in results["ratios"]["tiny"]["step"]


def test_cli_takes_a_network_of_your_own(tmp_path, capsys):
    printed, results = _bench(tmp_path, capsys, "--layers", "10,7,3", "--batch", "5",
                              "--output", "identity", "--activation", "relu", "--backend", "numpy",
                              "--no-torch")
    assert list(results["configs"]) == ["custom-10-7-3"]
    assert results["configs"]["custom-10-7-3"]["loss"] == "mse"
    assert any(s["subject"] == "torch-cpu" and s["reason"] == "--no-torch" for s in results["skipped"])
    # subjects skipped for one reason share a line; the JSON keeps one record each
    no_torch = [s["subject"] for s in results["skipped"] if s["reason"] == "--no-torch"]
    assert len(no_torch) >= 2 and f"  {', '.join(no_torch)}: skipped: --no-torch" in printed


def test_cli_prints_its_version(capsys):
    import gpubp

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"gpubp {gpubp.__version__}"


def test_cli_rejects_unknown_configs(capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", "--config", "huge"])
    assert info.value.code == 2
    assert "unknown --config huge" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--layers", "10", "--batch", "4"], "--layers needs at least an input and an output size"),
    (["--layers", "10,0,5", "--batch", "4"], "all positive; got 10,0,5"),
    (["--layers", "10,abc", "--batch", "4"], "--layers must be comma-separated integers"),
    (["--layers", "10,5", "--batch", "0"], "--batch must be at least 1; got 0"),
    (["--layers", "10,5", "--batch", "-3"], "--batch must be at least 1; got -3"),
    (["--layers", "10,5"], "--layers and --batch go together"),
    (["--batch", "5"], "--layers and --batch go together"),
    (["--layers", "10,5", "--batch", "4", "--activation", "swish"], "--activation must be one of"),
    (["--layers", "10,5", "--batch", "4", "--output", "foo"], "--output must be one of"),
    (["--layers", "10,1", "--batch", "4"], "--output softmax needs at least 2 outputs"),
    (["--config", "tiny", "--repeat", "0"], "--repeat must be at least 1"),
    (["--config", "tiny", "--json", "/nonexistent-gpubp/o.json"], "the folder /nonexistent-gpubp does not exist"),
    (["--kernels", "--json", "/nonexistent-gpubp/k.json"], "the folder /nonexistent-gpubp does not exist"),
])
def test_cli_checks_its_arguments_before_timing_anything(capsys, monkeypatch, args, message):
    import importlib

    def never(*a, **k):
        raise AssertionError("ran before the arguments were checked")

    for module in ("gpubp.bench.run", "gpubp.bench.kernels"):
        monkeypatch.setattr(importlib.import_module(module), "measure", never)
    with pytest.raises(SystemExit) as info:
        main(["bench", "--quick", *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("usage: gpubp bench") or err.startswith("gpubp bench"), err  # its own usage


def test_cli_says_plot_needs_matplotlib_before_timing_anything(capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *a, **k):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("no matplotlib here")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(SystemExit) as info:
        main(["bench", "--quick", "--config", "tiny", "--plot", "out.png"])
    assert info.value.code == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err


def test_the_passes_are_timed_beside_the_loops_only_where_the_loops_run(monkeypatch):
    """With Numba's loops, gpubp-numpy-passes times the same step on NumPy's passes;
    without them (no Numba, GPUBP_NUMBA=0) it is listed as skipped, saying why."""
    numpy = get_backend("numpy")
    tiny = CONFIGS["tiny"]
    for loops in (None, "loops"):
        monkeypatch.setattr(numpy, "loops", loops)
        (entry,) = [e for e in plan(tiny, "numpy", Settings(quick=True, use_torch=False))
                    if e[0] == "gpubp-numpy-passes"]
        if loops is None:
            assert entry == ("gpubp-numpy-passes", "gpubp-numpy makes NumPy's passes itself "
                             "(Numba is not installed or does not import, or GPUBP_NUMBA=0)")
        else:
            assert entry[2]().model.backend.loops is None and entry[4] == ("forward", "step")


def test_large_runs_on_the_cpu_only_when_named():
    large = CONFIGS["large"]
    skipped = plan(large, "numpy", Settings(quick=True))
    assert all(len(e) == 2 and "only when asked" in e[1] for e in skipped)
    assert any(len(e) == 5 for e in plan(large, "numpy", Settings(quick=True), explicit={"large"}))


def test_flop_count_of_a_step():
    c = Config("x", (3, 4, 2), 5)
    # forward 2*5*3*4 + 2*5*4*2; dW the same; dX only for the second layer: 2*5*2*4.
    assert c.flops("forward") == 120 + 80
    assert c.flops("step") == 2 * (120 + 80) + 80


@pytest.mark.parametrize("floor_kind", ["numpy", "torch"])
def test_the_floors_compute_the_steps_products(floor_kind):
    """Each floor does the step's GEMMs, shape for shape: checked against float64."""
    import numpy as np

    from gpubp import get_backend
    from gpubp.bench.workloads import GemmFloor

    c = Config("x", (7, 5, 6, 3), 4)
    if floor_kind == "torch":
        pytest.importorskip("torch")
        from gpubp.bench.torch_peer import TorchGemmFloor

        floor = TorchGemmFloor(c, "cpu")
        host = lambda a: a.numpy().astype(np.float64)  # noqa: E731
    else:
        floor = GemmFloor(c, get_backend("numpy"))
        host = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    acts = [host(a) for a in floor.acts]
    deltas = [None] + [host(d) for d in floor.deltas[1:]]
    W = [host(w) for w in floor.W]
    floor.step()
    for i, w in enumerate(W):                      # the forward products chain
        acts[i + 1] = acts[i] @ w
        np.testing.assert_allclose(host(floor.acts[i + 1]), acts[i + 1], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(host(floor.dW[i]), acts[i].T @ deltas[i + 1], rtol=1e-5, atol=1e-5)
        if i > 0:
            np.testing.assert_allclose(host(floor.errs[i]), deltas[i + 1] @ w.T, rtol=1e-5, atol=1e-5)


def test_a_run_hands_over_what_it_measured_after_each_config():
    """So that a run cut short (a time limit on a lent GPU) still leaves its figures."""
    import copy

    snapshots = []
    configs = [Config("a", (5, 4, 3), 4), Config("b", (6, 3), 2)]
    results = run(configs, ["numpy"], Settings(quick=True, repeat=1, use_torch=False),
                  log=lambda s: None, on_config=lambda r: snapshots.append(copy.deepcopy(r)))
    assert [s["complete"] for s in snapshots] == [False, True] and results["complete"]
    assert {m["config"] for m in snapshots[0]["measurements"]} == {"a"}
    assert snapshots[1]["measurements"] == results["measurements"]


def test_each_cpu_subject_is_timed_after_the_threads_of_the_one_before_went_idle(monkeypatch):
    """A pause of settle_s before each CPU subject's first timing, none between its
    workloads: OpenBLAS's threads spin after a product and would slow the next subject."""
    import importlib

    run_module = importlib.import_module("gpubp.bench.run")   # the module, not gpubp.bench.run()
    events = []
    monkeypatch.setattr(run_module.time, "sleep", lambda s: events.append(("sleep", s)))
    real_measure = run_module.measure

    def measure(fn, clock, **kw):
        events.append(("measure", fn.__self__.__class__.__name__, fn.__name__))
        return real_measure(fn, clock, **kw)

    monkeypatch.setattr(run_module, "measure", measure)
    run([Config("a", (5, 4, 3), 4)], ["numpy"], Settings(quick=True, repeat=1, use_torch=False,
                                                         settle_s=0.25), log=lambda s: None)
    passes = [("sleep", 0.25), ("measure", "GpubpWorkload", "forward"),   # gpubp-numpy-passes
              ("measure", "GpubpWorkload", "step")] if _loops() else []
    assert events == [("sleep", 0.25), ("measure", "GpubpWorkload", "forward"),
                      ("measure", "GpubpWorkload", "step"), ("measure", "GpubpWorkload", "epoch"),
                      *passes,
                      ("sleep", 0.25), ("measure", "GemmFloor", "forward"),
                      ("measure", "GemmFloor", "step")]


def test_a_workload_that_fails_is_reported_and_the_run_goes_on(monkeypatch):
    """On a lent GPU one failing path (a peer, the unfused CuPy step) must not
    cost the rest of the run: the failure is listed with its reason, the other
    workloads and configs are still timed."""
    from gpubp.bench import workloads
    from gpubp.bench.report import table

    def broken_step(self):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(workloads.GpubpWorkload, "step", broken_step)
    configs = [Config("a", (5, 4, 3), 4), Config("b", (6, 3), 2)]
    results = run(configs, ["numpy"], Settings(quick=True, repeat=1, use_torch=False),
                  log=lambda s: None)
    assert results["complete"]
    timed = {(m["config"], m["subject"], m["workload"]) for m in results["measurements"]}
    for name in ("a", "b"):
        assert {(name, "gpubp-numpy", "forward"), (name, "gpubp-numpy", "epoch"),
                (name, "floor-numpy", "step")} <= timed
        assert (name, "gpubp-numpy", "step") not in timed
        (failed,) = [s for s in results["skipped"]
                     if s["config"] == name and s["subject"] == "gpubp-numpy"]
        assert failed["workload"] == "step"
        assert failed["reason"] == "step failed: RuntimeError: planted failure"
    shown = "gpubp-numpy, gpubp-numpy-passes: skipped" if _loops() else "gpubp-numpy         skipped"
    assert f"{shown}: step failed: RuntimeError: planted failure" in table(results)


def test_every_config_in_the_matrix_runs_on_numpy():
    tiny = Config("t", (6, 5, 5, 3), 4, activation="relu", output="sigmoid", loss="mse")
    results = run([tiny], ["numpy"], Settings(quick=True, repeat=1, use_torch=True), log=lambda s: None)
    assert {m["workload"] for m in results["measurements"] if m["subject"] == "gpubp-numpy"} == \
        {"forward", "step", "epoch"}


def test_pytest_benchmark_suite_runs(tmp_path):
    pytest.importorskip("pytest_benchmark")
    import gpubp

    # The same gpubp as this test process imports, installed or from the checkout.
    path = os.pathsep.join([str(Path(gpubp.__file__).resolve().parents[1]),
                            os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, GPUBP_BENCH_CONFIGS="tiny", GPUBP_BENCH_QUICK="1", PYTHONPATH=path)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "benchmarks"),
         "--benchmark-disable"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\d+ passed", result.stdout)


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_cli_runs_the_precision_modes(tmp_path, capsys, precision):
    printed, results = _bench(tmp_path, capsys, "--config", "tiny", "--backend", "numpy",
                              "--precision", precision, "--no-torch")
    assert results["settings"]["precision"] == precision
    assert f"{precision} products" in printed
    assert {m["subject"] for m in results["measurements"]} == \
        {"gpubp-numpy", "floor-numpy"} | ({"gpubp-numpy-passes"} if _loops() else set())


def test_pytorch_is_compared_at_the_same_precision_or_said_to_differ(monkeypatch, tmp_path, capsys):
    """tf32 leaves PyTorch's CPU rows out (its CPU products are float32 whatever it is
    told); bf16 keeps PyTorch's own autocast and says what it is, in the table and JSON."""
    import importlib

    run_module = importlib.import_module("gpubp.bench.run")  # (gpubp.bench.run is also a function)
    monkeypatch.setattr(run_module, "torch_version", lambda: "2.x")     # as if installed
    tiny = CONFIGS["tiny"]
    tf32 = {e[0]: e for e in plan(tiny, "numpy", Settings(quick=True, precision="tf32"))}
    assert tf32["torch-cpu"] == ("torch-cpu", "PyTorch has no TF32 products on the CPU")
    assert tf32["floor-torch-cpu"] == ("floor-torch-cpu", "PyTorch has no TF32 products on the CPU")
    bf16 = {e[0]: e for e in plan(tiny, "numpy", Settings(quick=True, precision="bf16"))}
    assert len(bf16["torch-cpu"]) == 5 and len(bf16["floor-torch-cpu"]) == 5
    monkeypatch.undo()
    printed, results = _bench(tmp_path, capsys, "--config", "tiny", "--backend", "numpy",
                              "--precision", "bf16", "--no-torch")
    assert results["settings"]["torch_precision"] == run_module.TORCH_BF16
    assert f"({run_module.TORCH_BF16})" in printed


def test_the_json_says_how_the_run_was_made(tmp_path, capsys):
    """Each config's epoch as run (2 batches with --quick), NumPy's BLAS and the
    thread settings; a config named twice is timed once."""
    printed, results = _bench(tmp_path, capsys, "--config", "tiny", "--config", "tiny",
                              "--backend", "numpy", "--no-torch")
    assert results["configs"]["tiny"]["epoch_batches"] == 2
    subjects = [m["subject"] for m in results["measurements"] if m["workload"] == "step"]
    assert len(subjects) == len(set(subjects))
    assert printed.count("\ntiny: ") == 1
    meta = results["meta"]
    assert "blas" in meta and "threads_env" in meta and "torch_threads" in meta
    assert meta["blas"] is None or meta["blas"] in printed


def test_spread_interpolates_the_deciles():
    """(p90 - p10) / median: with 5 samples one outlier moves it by a share, not all of it."""
    from gpubp.bench.timing import Timing

    t = Timing([100.0, 101.0, 102.0, 103.0, 900.0])
    # deciles, inclusive: p10 = 100 + 0.4 * 1, p90 = 103 + 0.6 * 797
    assert t.spread == pytest.approx((103 + 0.6 * 797 - 100.4) / 102)
    assert Timing([5.0] * 30).spread == 0 and Timing([7.0]).spread == 0
    many = Timing(list(range(1, 102)))                  # 1..101: p10 = 11, p90 = 91
    assert many.spread == pytest.approx(80 / 51)


def test_kernel_table_runs_every_case():
    """gpubp bench --kernels, its code paths at small sizes: the CuPy backend's
    kernels emulated on the CPU against the NumPy definitions (no timing meant)."""
    from _cuda_emulator import emulated_backend

    from gpubp import get_backend
    from gpubp.bench.kernels import (COLUMN_SUM_VARIANTS, DENSE_VARIANTS, PACKED_CASES,
                                     PACKED_VARIANTS, kernel_table, run_kernels)
    from gpubp.bench.run import environment
    from gpubp.bench.timing import HostClock

    emulated = emulated_backend()
    rows = run_kernels(emulated, get_backend("numpy"), HostClock(), quick=True, log=lambda s: None,
                       scale=256)
    assert len(rows) >= 10 and all("fused" in r and "unfused" in r and r["speedup"] > 0 for r in rows)
    printed = kernel_table(rows, environment())
    assert all(r["kernel"] in printed for r in rows)
    # The narrow-layer kernels and the packed ones, also as the backend's own
    # variants, which leave it as it was.
    dense = [r for r in rows if r["kernel"].startswith("dense_")]
    packed = [r for r in rows if r["kernel"] in PACKED_CASES]
    sums = [r for r in packed if "bias_grad" in r["kernel"]]
    assert len(dense) == 4 and len(packed) == len(PACKED_CASES) == 8 and len(sums) == 3
    assert all("variants" not in r for r in rows if r not in dense + packed)
    for group, variants in ((dense, DENSE_VARIANTS), (sums, COLUMN_SUM_VARIANTS),
                            ([r for r in packed if r not in sums], PACKED_VARIANTS)):
        for r in group:
            assert list(r["variants"]) == [label for label, _ in variants]
            assert all(v["median_us"] > 0 for v in r["variants"].values())
    assert printed.count("composed ") == 4 and printed.count("one element at a time ") == 8
    assert printed.count("256 rows per block row ") == 3
    assert emulated._dl_blocks_per_sm == 6
    assert not {"_DL_MAX", "_DL_FORWARD_MIN_N", "_packed", "_BG_BLOCK_ROWS"} & set(emulated.__dict__)


def test_a_kernel_that_fails_to_run_is_reported_and_the_table_goes_on():
    from gpubp import get_backend
    from gpubp.bench.kernels import kernel_table, run_kernels
    from gpubp.bench.run import environment
    from gpubp.bench.timing import HostClock

    numpy = get_backend("numpy")

    class Broken(type(numpy)):
        def adam(self, *args, **kwargs):
            raise RuntimeError("planted failure")

    rows = run_kernels(Broken(), numpy, HostClock(), quick=True, log=lambda s: None, scale=64)
    (adam,) = [r for r in rows if r["kernel"].startswith("adam")]
    assert adam["fused_error"] == "RuntimeError: planted failure" and "unfused" in adam
    assert all("fused" in r for r in rows if r is not adam)
    printed = kernel_table(rows, environment())
    assert "fused: RuntimeError: planted failure" in printed


def test_kernel_table_needs_the_gpu_and_says_so(capsys):
    from gpubp import available_backends

    if "cupy" in available_backends():
        pytest.skip("a GPU is here")
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--kernels"])
    assert exit_.value.code == 2 and "CuPy backend" in capsys.readouterr().err


def test_pytorch_peer_sets_tf32_through_the_current_api():
    """precision "tf32" lets PyTorch's CUDA matmuls use TF32 and "float32"
    forbids it, through fp32_precision where PyTorch has it (2.9 deprecates
    allow_tf32)."""
    torch = pytest.importorskip("torch")
    from gpubp.bench.torch_peer import _cuda_matmul_tf32

    matmul = torch.backends.cuda.matmul
    name = "fp32_precision" if hasattr(matmul, "fp32_precision") else "allow_tf32"
    before = getattr(matmul, name)
    try:
        _cuda_matmul_tf32(torch, True)
        assert getattr(matmul, name) in ("tf32", True)
        _cuda_matmul_tf32(torch, False)
        assert getattr(matmul, name) in ("ieee", False)
    finally:
        setattr(matmul, name, before)


def test_the_graph_workload_replays_the_step_on_emulated_kernels():
    """gpubp-cupy-graph's step, captured once and replayed, on the CPU emulation
    of the kernels (its products through gpubp.cublas on the stand-in): replays
    end where as many eager steps through the same GEMMs do, and its epoch runs
    the trainer's graphs."""
    import numpy as np
    from _cuda_emulator import emulated_backend

    from gpubp.bench.workloads import GpubpWorkload

    backend = emulated_backend()
    config = Config("t", (6, 70, 5, 3), 8)            # a layer of GEMMs, and narrow ones
    graphed = GpubpWorkload(config, backend, 3, graphs=True)   # one warm-up step, then captured
    with backend.capturable():
        eager = GpubpWorkload(config, backend, 3)
        for _ in range(4):
            eager.step()
    for _ in range(3):
        graphed.step()
    np.testing.assert_array_equal(graphed.model.params, eager.model.params)
    assert float(graphed.loss_sum) == float(eager.loss_sum)
    graphed.epoch()
    assert graphed.trainer.graphs_off_reason is None and graphed.trainer._graph_cache


@pytest.mark.parametrize("precision", ["float32", "tf32", "bf16"])
def test_the_graph_floor_replays_the_steps_products(precision):
    """floor-cupy-graph, on the emulated CuPy backend: the step's products captured
    once through gpubp.cublas and replayed, each launch writing what the eager
    floor's products write, with no product called from Python after capture."""
    import numpy as np
    from _cuda_emulator import emulated_backend
    from _fake_cublas import counts, fake_cublas

    from gpubp.bench.workloads import GemmFloor

    backend = emulated_backend()
    config = Config("t", (6, 70, 5, 3), 8)
    graphed = GemmFloor(config, backend, precision, graphs=True)
    with backend.capturable():
        eager = GemmFloor(config, backend, precision)
        eager.step()
    lib = fake_cublas()
    before = lib and counts(lib)
    for out in graphed.dW + graphed.errs:
        out[...] = np.nan                              # the replay must write them again
    calls = []
    real_matmul = backend.matmul
    backend.matmul = lambda *a, **k: calls.append(a) or real_matmul(*a, **k)
    try:
        graphed.step()
    finally:
        del backend.matmul
    assert calls == []                                 # nothing called from Python
    # dW of every layer, the error of every layer but the first (and none for the output)
    for got, want in zip(graphed.dW + graphed.errs[1:-1], eager.dW + eager.errs[1:-1], strict=True):
        np.testing.assert_array_equal(got, want)
    if lib is not None:
        replayed_calls, products = np.subtract(counts(lib), before)
        assert products == len(config.gemm_shapes())
        # (the emulator defers bf16's rounding, and so its products' calls, to the launch)
        assert replayed_calls == (products if precision == "bf16" else 0)


def test_the_graph_workload_is_skipped_where_gpubp_cublas_fails_its_check():
    from _cuda_emulator import emulated_backend
    from _fake_cublas import fake_cublas

    from gpubp.bench.workloads import GpubpWorkload

    lib = fake_cublas()
    if lib is None:
        pytest.skip("needs the cuBLAS stand-in (a C compiler and cuBLAS's headers)")
    lib.fake_cublas_fail_next(13)
    with pytest.raises(RuntimeError, match="no CUDA graphs: gpubp.cublas failed its check"):
        GpubpWorkload(Config("t", (6, 70, 3), 8), emulated_backend(), 2, graphs=True)


def test_profile_accounts_for_the_step_operation_by_operation(tmp_path, capsys):
    """gpubp bench --profile: every operation of the trainer's step once per
    call it makes (tiny has 3 layers: 8 products), exclusive times that add up
    to no more than the step, and the backend left without its wrappers."""
    from gpubp import get_backend

    out_json = tmp_path / "profile.json"
    assert main(["bench", "--profile", "--config", "tiny", "--backend", "numpy", "--repeat", "3",
                 "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    (profile,) = json.loads(out_json.read_text())["profiles"]
    calls = {r["op"]: r["calls"] for r in profile["ops"]}
    assert calls == {"gather_rows": 2, "matmul": 8, "dense_forward": 3, "dense_backward": 2,
                     "bias_activation": 3, "activation_backward": 2, "bias_grad": 3,
                     "softmax_cross_entropy": 1, "adam": 1, "advance_offset": 1}
    assert all(r["median_us"] >= 0 for r in profile["ops"])
    assert sum(r["median_us"] for r in profile["ops"]) <= profile["step_us"] * 1.05
    assert "tiny: 16-12-12-4, batch 8, numpy" in printed and "between operations" in printed
    assert not set(get_backend("numpy").__dict__) & {"matmul", "adam", "gather_rows"}
    with pytest.raises(SystemExit):
        main(["bench", "--profile", "--config", "tiny", "--backend", "all"])


def test_profile_lists_what_runs_beside_the_backward_pass_apart(monkeypatch):
    """The updates MLP._train_step runs on a second stream are named '(beside)'
    and left out of the step's sum (their time overlaps the backward pass).
    Here on the NumPy backend with a pretend second stream."""
    from gpubp import get_backend
    from gpubp.bench import CONFIGS
    from gpubp.bench import profile as prof

    numpy = get_backend("numpy")
    current = ["main"]

    def beside(fn):
        current.append("side")
        try:
            fn()
        finally:
            current.pop()

    monkeypatch.setattr(prof._HostMarks, "stream", staticmethod(lambda: current[-1]))
    monkeypatch.setattr(numpy, "overlap_layers", lambda sizes: [1, 2])
    monkeypatch.setattr(numpy, "beside", beside)
    result = prof.profile_step(CONFIGS["tiny"], numpy, repeat=3)
    calls = {r["op"]: r["calls"] for r in result["ops"]}
    assert calls["adam (beside)"] == 4 and calls["adam"] == 2       # layers 1, 2: W and b each
    text = prof.profile_table([result], {"date": "d", "gpu": None, "cpu": "c"})
    assert "adam (beside)" in text and "not in the sum" in text
