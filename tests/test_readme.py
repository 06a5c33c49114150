"""The README's promises: its example runs, its set-up commands are the ones CI uses."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def readme():
    if not README.exists():
        pytest.skip("not run from a checkout")
    return README.read_text()


def test_the_example_runs(readme, monkeypatch, capsys):
    monkeypatch.setenv("GPUBP_BACKEND", "numpy")
    code = re.search(r"## Example\n\n```python\n(.*?)```", readme, re.S).group(1)
    exec(compile(code, "README example", "exec"), {})
    assert capsys.readouterr().out.startswith("numpy ")


def test_two_setup_commands_and_ci_runs_the_test_one(readme):
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", setup, re.S)
    assert commands == ['pip install . && gpubp bench --quick', 'pip install ".[test]" && pytest']
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines()


def test_every_kernel_file_is_in_the_table(readme):
    for cu in (ROOT / "kernels").glob("*.cu"):
        assert f"`kernels/{cu.name}`" in readme


# Issue 4's targets: (peer the graph-replayed step is divided by, limit) per row.
H100_TARGETS = {("small", "float32"): ("torch-cuda-graph", 0.5),
                ("medium", "float32"): ("torch-cuda-graph", 0.8),
                ("large", "float32"): ("floor-cupy", 1.05),
                ("large", "tf32"): ("floor-cupy", 1.1),
                ("narrow", "float32"): ("torch-cuda", 0.65)}
H100_COLUMNS = ("gpubp-cupy", "gpubp-cupy-graph", "gpubp-cupy-unfused", "floor-cupy",
                "torch-cuda", "torch-cuda-graph", "floor-torch-cuda")


# The two saved runs behind the README's H100 table (benchmarks/readme_table.sh).
H100_RUNS = {"float32": ROOT / "benchmarks" / "results" / "h100-2026-11-26-d.json",
             "tf32": ROOT / "benchmarks" / "results" / "h100-large-tf32-2026-11-26-d.json"}


def test_the_h100_table_is_the_saved_runs(readme):
    """Every figure of the README's H100 table is the saved JSON's, as the bench
    prints it, and each target's ratio and verdict follow from those medians."""
    import json

    from gpubp.bench.report import fmt

    medians = {}
    for precision, path in H100_RUNS.items():
        data = json.loads(path.read_text())
        assert data["complete"] and data["settings"]["precision"] == precision
        assert data["meta"]["gpu"].startswith("NVIDIA H100") and data["settings"]["repeat"] == 30
        medians[precision] = {(m["config"], m["subject"]): m["median_us"]
                              for m in data["measurements"] if m["workload"] == "step"}
    section = readme.split("**H100**", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    rows = rows[1:]                                           # the header
    assert {(r[0], r[1]) for r in rows} == set(H100_TARGETS) and len(rows) == len(H100_TARGETS)
    for config, precision, *cells in rows:
        step = medians[precision]
        assert cells[:7] == [fmt(step[config, s]) for s in H100_COLUMNS], config
        peer, limit = H100_TARGETS[config, precision]
        ratio = step[config, "gpubp-cupy-graph"] / step[config, peer]
        assert cells[7].startswith(f"≤ {limit} × ")
        assert cells[8] == f"{ratio:.3f}, {'met' if ratio <= limit else 'not met'}"


def test_readme_rows_prints_the_h100_table(readme):
    """benchmarks/readme_rows.py, which makes the table from the saved runs,
    prints it as the README has it."""
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "readme_rows.py"),
                           *map(str, H100_RUNS.values())], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60, check=True)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2 + len(H100_TARGETS)
    section = readme.split("**H100**", 1)[1].split("\n## ", 1)[0]
    assert "\n".join(lines) in section


CPU_RUN = ROOT / "benchmarks" / "results" / "cpu-2core-2026-11-26-j.json"


def test_the_cpu_table_is_the_saved_run(readme):
    """Every figure of the README's 2-core CPU table is the saved run's, as the
    bench prints it, and the target's ratio and verdict follow from its medians."""
    import json

    from gpubp.bench.report import fmt

    data = json.loads(CPU_RUN.read_text())
    assert data["complete"] and data["meta"]["numba"] and data["meta"]["cpu_cores"] == 2
    med = {(m["config"], m["subject"], m["workload"]): m for m in data["measurements"]}
    section = readme.split("**2-core CPU**", 1)[1].split("\n\n`large`", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r[0] for r in rows] == ["small", "medium", "narrow"]
    for config, *cells in rows:
        def us(subject, workload="step"):
            return fmt(med[config, subject, workload]["median_us"])
        step = med[config, "gpubp-numpy", "step"]
        assert cells[:7] == [
            us("gpubp-numpy", "forward"), f"{us('gpubp-numpy')} [{fmt(step['min_us'])}–{fmt(step['max_us'])}]",
            us("gpubp-numpy-passes"), us("floor-numpy"), us("torch-cpu"), us("floor-torch-cpu"),
            f"{fmt(med[config, 'gpubp-numpy', 'epoch']['median_us'] / 1e3)} / "
            f"{fmt(med[config, 'torch-cpu', 'epoch']['median_us'] / 1e3)}"]
        ratio = step["median_us"] / med[config, "torch-cpu", "step"]["median_us"]
        if config == "narrow":                               # no CPU target
            assert cells[7:] == ["", f"{ratio:.2f}"]
        else:
            assert cells[7:] == ["≤ 0.8 × PyTorch", f"{ratio:.2f}, {'met' if ratio <= 0.8 else 'not met'}"]


def test_the_later_cpu_runs_are_the_saved_ones(readme):
    """Each row of the README's table of later CPU runs: its step ratios and its
    count of wide-spread figures, as the saved run's JSON has them."""
    import json

    section = readme.split("Every run on this machine", 1)[1].split("\n\n**", 1)[0]
    rows = re.findall(r"^\| `(-\w)` \|[^|]*\|[^|]*\| ([^|]*)\| ([^|]*)\| ([^|]*)\| (\d+) \|$", section, re.M)
    assert len(rows) >= 4
    for suffix, *ratios, noisy in rows:
        run = json.loads((ROOT / "benchmarks" / "results" / f"cpu-2core-2026-11-26{suffix}.json").read_text())
        for config, shown in zip(("small", "medium", "narrow"), ratios):
            saved = run["ratios"].get(config, {}).get("step", {}).get("numpy_over_torch_cpu")
            assert (shown.strip() or None) == (None if saved is None else f"{saved:.2f}"), (suffix, config)
        assert int(noisy) == sum(m["noisy"] for m in run["measurements"]), suffix
