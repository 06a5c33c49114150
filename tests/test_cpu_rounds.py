"""benchmarks/cpu_rounds.py: the rounds' order, the paired comparison, and a
short real run on the tiny config (timing nothing: the figures are the machine's)."""

import json
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def cpu_rounds(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import cpu_rounds
    return cpu_rounds


def test_each_round_pauses_then_times_every_subject_in_a_rotating_order(cpu_rounds):
    events, now = [], [0.0]

    def stepper(name, seconds):
        def step():
            events.append(name)
            now[0] += seconds
        return step

    times = cpu_rounds.rounds({"a": stepper("a", 1.0), "b": stepper("b", 2.0), "c": stepper("c", 4.0)},
                              n_rounds=3, steps=2, pause=0.5, clock=lambda: now[0],
                              sleep=lambda s: events.append(("sleep", s)))
    # per subject: a pause, one untimed step, two timed ones; the first subject rotates
    def block(n):
        return [("sleep", 0.5), n, n, n]
    assert events == (block("a") + block("b") + block("c") + block("b") + block("c") + block("a")
                      + block("c") + block("a") + block("b"))
    assert times == {"a": [1.0] * 3, "b": [2.0] * 3, "c": [4.0] * 3}


def test_compare_pairs_the_rounds(cpu_rounds):
    times = {"gpubp-numpy": [1.0, 2.0, 1.0, 3.0], "torch-cpu": [2.0, 1.0, 2.0, 4.0]}
    c = cpu_rounds.compare(times, "gpubp-numpy", "torch-cpu")
    assert c["faster_rounds"] == 3 and c["rounds"] == 4
    assert np.isclose(c["ratio_of_medians"], 1.5 / 2.0)
    assert np.isclose(c["median_round_ratio"], np.median([0.5, 2.0, 0.5, 0.75]))
    text = cpu_rounds.report("x", times)
    assert "gpubp-numpy over torch-cpu: 0.750 (ratio of medians)" in text
    assert "faster in 3/4 rounds" in text


def test_a_short_run_writes_every_round(cpu_rounds, tmp_path, capsys):
    from gpubp import get_backend
    from gpubp.bench.torch_peer import torch_version

    out = tmp_path / "r.json"
    cpu_rounds.main(["--config", "tiny", "--rounds", "2", "--steps", "2", "--pause", "0", "--json", str(out)])
    data = json.loads(out.read_text())
    expected = {"gpubp-numpy"}
    if get_backend("numpy").loops is not None:
        expected.add("gpubp-numpy-passes")
    if torch_version() is not None:
        expected.add("torch-cpu")
    tiny = data["configs"]["tiny"]
    assert set(tiny["seconds_per_step"]) == expected
    assert all(len(v) == 2 and min(v) > 0 for v in tiny["seconds_per_step"].values())
    assert capsys.readouterr().out.startswith("tiny: gpubp-numpy ")
