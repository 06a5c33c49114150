"""The tools of the next GPU session, on the CPU: the settings' text
(benchmarks/_knobs.py), the rules that choose them (benchmarks/choose_settings.py)
on made-up times, and the whole choice, sweeps included, on the emulated backend."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


@pytest.fixture
def tools(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import _knobs
    import choose_settings
    import knob_sweep

    return _knobs, choose_settings, knob_sweep


# -- the settings' text ---------------------------------------------------------

def test_settings_text_reads_back(tools):
    knobs, _, _ = tools
    text = "_BESIDE_SMS.tf32=16,_BESIDE_SMS.float32=0,_BACKWARD_BESIDE=1,_STEP_PRIORITY=0,_BG_BLOCK_ROWS=32"
    settings = knobs.parse(text)
    assert settings == {"_BESIDE_SMS": {"tf32": 16, "float32": 0}, "_BACKWARD_BESIDE": True,
                        "_STEP_PRIORITY": False, "_BG_BLOCK_ROWS": 32}
    assert knobs.parse(knobs.format(settings)) == settings
    assert knobs.format(settings) == ("_BESIDE_SMS.float32=0,_BESIDE_SMS.tf32=16,"
                                      "_BACKWARD_BESIDE=1,_STEP_PRIORITY=0,_BG_BLOCK_ROWS=32")
    assert knobs.parse("") == {} and knobs.format({}) == ""
    assert knobs.parse(" _BESIDE_SMS=8 ", precision="bf16") == {"_BESIDE_SMS": {"bf16": 8}}


@pytest.mark.parametrize("text, message", [
    ("_BESIDE_SMS=8", "name a precision"),
    ("_BESIDE_SMS.fp16=8", "name a precision"),
    ("_STEP_PRIORITY.tf32=1", "only _BESIDE_SMS"),
    ("_STEP_PRIORITY=2", "0 or 1"),
    ("_BG_BLOCK_ROWS=0", "at least 1"),
    ("_BG_BLOCK_ROWS=-4", ">= 0"),
    ("_BG_BLOCK_ROWS=x", "not a whole number"),
    ("_SMS=3", "NAME=INT"),
    ("_STEP_PRIORITY", "NAME=INT"),
])
def test_settings_text_that_says_nothing_clear_is_refused(tools, text, message):
    knobs, _, _ = tools
    with pytest.raises(ValueError, match=message):
        knobs.parse(text)


def test_merge_and_apply_restore(tools):
    knobs, _, _ = tools

    class Backend:
        _BESIDE_SMS = {"tf32": 8}
        _BACKWARD_BESIDE = False
        _STEP_PRIORITY = False
        _BG_BLOCK_ROWS = 256
        _OVERLAP_MIN_WEIGHTS = 1 << 22

    merged = knobs.merge({"_BESIDE_SMS": {"tf32": 8}}, {"_BESIDE_SMS": {"float32": 4}},
                         {"_BESIDE_SMS": {"tf32": 0}, "_STEP_PRIORITY": True})
    assert merged == {"_BESIDE_SMS": {"tf32": 0, "float32": 4}, "_STEP_PRIORITY": True}
    before = knobs.apply(Backend, merged)
    assert Backend._BESIDE_SMS == {"tf32": 0, "float32": 4} and Backend._STEP_PRIORITY is True
    assert Backend._BESIDE_SMS is not merged["_BESIDE_SMS"]            # a copy
    knobs.apply(Backend, before)
    assert Backend._BESIDE_SMS == {"tf32": 8} and Backend._STEP_PRIORITY is False


# -- the rules, on made-up times ------------------------------------------------

def _times(rng, medians, rounds=20, noise=0.001):
    """Per-round times around each median, with a drift shared by the round
    (small enough that every margin below holds for any seed)."""
    drift = 1 + rng.normal(scale=0.003, size=rounds)
    return {name: list(m * drift * (1 + rng.normal(scale=noise, size=rounds)))
            for name, m in medians.items()}


def test_a_variant_beats_main_by_its_median_and_most_rounds(tools, rng):
    _, cs, _ = tools
    t = _times(rng, {"main": 4000, "a": 3900, "b": 3980, "floor": 3600})
    assert cs.beats(t, "a") and not cs.beats(t, "b")                   # 2.5% and 0.5% faster
    assert cs.candidates(t) == ["a"]
    # a lower median from a few rounds alone does not beat
    t = {"main": [100.0] * 20, "c": [90.0] * 10 + [101.0] * 10}
    assert statistics.median(t["c"]) < 0.99 * 100 and not cs.beats(t, "c")


def test_candidates_and_the_winner_float32_pays_little_for(tools, rng):
    knobs, cs, _ = tools
    medians = {(v or "main"): 4200 for v in cs.TF32_VARIANTS}
    medians.update({"_OUTPUT_FUSED=1": 4130, "_FIRST_SLABS=4": 4150,
                    "_OUTPUT_FUSED=1,_FIRST_SLABS=4": 4080, "_FIRST_SLABS=2": 4190, "floor": 3650})
    tf32 = _times(rng, medians)
    # 1.7%, 1.2% and 2.9% faster; 0.2% is not enough
    assert cs.candidates(tf32) == ["_OUTPUT_FUSED=1,_FIRST_SLABS=4", "_OUTPUT_FUSED=1",
                                   "_FIRST_SLABS=4"]
    names = cs.candidates(tf32)
    # float32 pays 3% for the fastest (its slabs), 0.1% for the next: the next is chosen
    f32 = _times(rng, {"main": 22000, "_OUTPUT_FUSED=1,_FIRST_SLABS=4": 22660,
                       "_OUTPUT_FUSED=1": 21980, "_FIRST_SLABS=4": 22700, "floor": 21400})
    winner, notes = cs.decide(tf32, f32, names)
    assert winner == "_OUTPUT_FUSED=1"
    assert "passed over" in notes[0] and "chosen" in notes[1] and len(notes) == 2
    # a candidate whose float32 step failed (left out of that sweep) is passed over too
    del f32["_OUTPUT_FUSED=1,_FIRST_SLABS=4"]
    assert cs.decide(tf32, f32, names)[0] == "_OUTPUT_FUSED=1"
    # float32 pays for every candidate, or there is none: main's
    for name in names:
        f32[name] = [x * 1.02 for x in f32["main"]]
    assert cs.decide(tf32, f32, names) == ("main", [f"{n}: float32 1.020 of main's (over 1.01): "
                                                    "passed over" for n in names])
    assert cs.decide(tf32, {}, []) == ("main", [])
    # main's own step left out of a sweep (it failed): nothing beats it, nothing is chosen
    assert cs.candidates({k: v for k, v in tf32.items() if k != "main"}) == []
    no_main = {k: v for k, v in f32.items() if k != "main"}
    assert cs.decide(tf32, no_main, names)[0] == "main"
    flat = _times(rng, {(v or "main"): 4200 for v in cs.TF32_VARIANTS} | {"floor": 3650})
    assert cs.candidates(flat) == []
    # every variant's text reads back, none names a per-precision setting
    for v in cs.TF32_VARIANTS:
        settings = knobs.parse(v, "tf32")
        assert knobs.format(settings) == v and "_BESIDE_SMS" not in settings
        assert v == "" or "_STEP_PRIORITY" not in settings      # main's: on


# -- the whole choice on the emulated backend -------------------------------------

@pytest.fixture
def emulated_choice(tools, monkeypatch, tmp_path):
    """choose_settings.py's command line on the emulated backend, config tiny:
    (backend, --out's path, --json's path); ``cs.main()`` runs it."""
    from _cuda_emulator import emulated_backend

    import gpubp.backends
    from gpubp.bench import timing

    backend = emulated_backend(sms=8)
    monkeypatch.setattr(type(backend), "_OVERLAP_MIN_WEIGHTS", 100)     # tiny's 12 x 12 layers
    monkeypatch.setattr(gpubp.backends, "get_backend", lambda name="auto": backend)
    monkeypatch.setattr(timing, "CupyEvents", timing.HostClock)
    out, runs = tmp_path / "settings.txt", tmp_path / "runs.json"
    monkeypatch.setattr(sys, "argv", ["choose_settings.py", "--out", str(out), "--json", str(runs),
                                      "--large", "tiny", "--repeat", "4"])
    return backend, out, runs


def test_the_whole_choice_runs_on_the_emulated_backend(tools, emulated_choice, capsys):
    """Every sweep of choose_settings.py end to end, on config tiny: what it
    prints, the settings it writes (whatever the emulator's timings choose),
    and the class's settings as they were after it."""
    knobs, cs, _ = tools
    backend, out, runs = emulated_choice
    before = {name: getattr(type(backend), name) for name in knobs.NAMES}
    assert cs.main() == 0
    printed = capsys.readouterr().out
    for line in ("large-tf32: tiny, tf32", "beat main's in TF32: ", "chosen settings: "):
        assert line in printed
    settings = knobs.parse(out.read_text())
    assert set(settings) <= set(knobs.NAMES)
    saved = json.loads(runs.read_text())
    assert set(saved) in ({"large-tf32"}, {"large-tf32", "large-float32"})
    assert ("large-float32" in saved) == ("beat main's in TF32: none" not in printed)
    assert set(saved["large-tf32"]) == {v or "main" for v in cs.TF32_VARIANTS} | {"floor"}
    assert all(len(t) == 4 and min(t) > 0 for t in saved["large-tf32"].values())
    assert {name: getattr(type(backend), name) for name in knobs.NAMES} == before


def test_with_settings_sets_them_before_the_module_runs(tmp_path):
    (tmp_path / "show_knobs.py").write_text(
        "import sys\nfrom gpubp.backends.cupy_backend import CupyBackend as C\n"
        "print(C._BESIDE_SMS, C._BACKWARD_BESIDE, C._STEP_PRIORITY, C._BG_BLOCK_ROWS, sys.argv[1:])\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}

    def run(settings):
        done = subprocess.run([sys.executable, str(BENCH / "with_settings.py"), settings,
                               "show_knobs", "--a", "b"], capture_output=True, text=True,
                              env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    # main's settings, whatever they are by now
    from gpubp.backends.cupy_backend import CupyBackend as C

    assert run("_BESIDE_SMS.tf32=16,_STEP_PRIORITY=1,_BG_BLOCK_ROWS=32") == \
        f"{{'tf32': 16}} {C._BACKWARD_BESIDE} True 32 ['--a', 'b']"
    assert run("") == \
        f"{C._BESIDE_SMS} {C._BACKWARD_BESIDE} {C._STEP_PRIORITY} {C._BG_BLOCK_ROWS} ['--a', 'b']"


def test_knob_sweep_reports_paired_wins(tools):
    _, _, ks = tools
    times = {"main": [10.0, 10.0, 10.0, 10.0], "fast": [9.0, 9.0, 11.0, 9.0], "floor": [8.0] * 4}
    assert ks.wins(times, "fast") == 3
    text = ks.report(times, "title")
    assert text.splitlines()[0] == "title"
    assert "0.900 of main's, faster in 3/4 rounds" in text and "over the floor 1.250" in text
    assert np.isclose(statistics.median(times["fast"]), 9.0)


def test_a_variant_whose_step_fails_is_left_out_and_never_chosen(tools, monkeypatch, capsys, rng):
    """On the emulated backend: a variant whose graph step cannot be made
    (here: whatever asks for _STEP_PRIORITY) is left out of the sweep with its
    error printed; the rules then treat it as beating nothing (and decide()
    passes over a candidate left out of the float32 sweep:
    test_candidates_and_the_winner_float32_pays_little_for)."""
    from _cuda_emulator import emulated_backend

    from gpubp.bench import timing, workloads
    from gpubp.bench.configs import CONFIGS

    _, cs, ks = tools
    backend = emulated_backend(sms=8)
    monkeypatch.setattr(type(backend), "_STEP_PRIORITY", False)      # main's without the flag
    monkeypatch.setattr(timing, "CupyEvents", timing.HostClock)
    real = workloads.GpubpWorkload

    def workload(config, backend, *args, **kwargs):
        if type(backend)._STEP_PRIORITY:
            raise RuntimeError("no node priorities here")
        return real(config, backend, *args, **kwargs)

    monkeypatch.setattr(workloads, "GpubpWorkload", workload)
    variants = {"main": {}, "_STEP_PRIORITY=1": {"_STEP_PRIORITY": True},
                "_BG_BLOCK_ROWS=32": {"_BG_BLOCK_ROWS": 32}}
    times = ks.sweep(backend, CONFIGS["tiny"], "float32", variants, repeat=3)
    assert set(times) == {"main", "_BG_BLOCK_ROWS=32", "floor"}
    assert "_STEP_PRIORITY=1: left out, its step failed: RuntimeError: no node priorities here" \
        in capsys.readouterr().out
    assert type(backend)._STEP_PRIORITY is False
    assert not cs.beats(times, "_STEP_PRIORITY=1") and "_STEP_PRIORITY=1" not in cs.candidates(times)


def test_each_round_has_its_own_order_and_times_a_step_after_an_untimed_one(
        tools, monkeypatch):
    """The sweep's order of launches, with stand-ins for the workloads and the clock:
    every subject's timed launch follows an untimed launch of its own; each round
    times every subject once, in an order that varies, so that main does not always
    follow the floor; a variant whose first launch fails is left out, not the sweep."""
    from gpubp.bench import timing, workloads

    _, _, ks = tools
    calls = []

    class Workload:
        def __init__(self, config, backend, batches, precision, graphs):
            self.name = "main" if not type(backend)._STEP_PRIORITY else "priority"
            self.name += "" if type(backend)._BG_BLOCK_ROWS == 256 else "-rows32"

        def step(self):
            if self.name == "priority":
                raise RuntimeError("cuGraphLaunch failed")
            calls.append(("launch", self.name))

    class Floor:
        def __init__(self, config, backend, precision):
            pass

        def step(self):
            calls.append(("launch", "floor"))

    class Clock:
        def time(self, fn):
            calls.append(("event", None))
            fn()
            return 1.0

        def sync(self):
            pass

    class Backend:
        _BESIDE_SMS, _BACKWARD_BESIDE, _STEP_PRIORITY, _BG_BLOCK_ROWS = {}, False, False, 256
        _OVERLAP_MIN_WEIGHTS, _OUTPUT_FUSED, _FIRST_SLABS = 1 << 22, False, 1

        def synchronize_device(self):
            pass

    monkeypatch.setattr(workloads, "GpubpWorkload", Workload)
    monkeypatch.setattr(workloads, "GemmFloor", Floor)
    monkeypatch.setattr(timing, "CupyEvents", Clock)
    variants = {"main": {}, "_STEP_PRIORITY=1": {"_STEP_PRIORITY": True},
                "_BG_BLOCK_ROWS=32": {"_BG_BLOCK_ROWS": 32}}
    times = ks.sweep(Backend(), None, "tf32", variants, repeat=12)
    assert set(times) == {"main", "_BG_BLOCK_ROWS=32", "floor"}
    assert all(len(t) == 12 for t in times.values())
    assert Backend._STEP_PRIORITY is False and Backend._BG_BLOCK_ROWS == 256
    rounds = calls[calls.index(("event", None)) - 1:]
    timed = [rounds[i + 2][1] for i in range(0, len(rounds), 3)]
    assert all(rounds[i] == rounds[i + 2] and rounds[i + 1] == ("event", None)
               for i in range(0, len(rounds), 3))        # untimed, then the event, then timed
    orders = [timed[i:i + 3] for i in range(0, len(timed), 3)]
    assert all(sorted(o) == ["floor", "main", "main-rows32"] for o in orders)
    after_floor = {o[o.index("floor") + 1] for o in orders if o[-1] != "floor"}
    assert after_floor == {"main", "main-rows32"} and len({tuple(o) for o in orders}) > 2


def test_the_choice_writes_the_winner_after_its_float32_sweep(tools, emulated_choice, monkeypatch,
                                                             capsys):
    """Where variants beat main's in TF32 (here: made to), their float32 steps are
    timed against main's and the winner's settings written; a run cut short in
    that sweep leaves main's settings, and the TF32 times, behind."""
    knobs, cs, ks = tools
    _, out, runs = emulated_choice
    monkeypatch.setattr(cs, "candidates", lambda tf32: ["_OUTPUT_FUSED=1,_FIRST_SLABS=4",
                                                        "_FIRST_SLABS=2"])
    monkeypatch.setattr(cs, "FLAG_COST", float("inf"))       # whatever the emulator's times
    assert cs.main() == 0
    assert knobs.parse(out.read_text()) == {"_OUTPUT_FUSED": True, "_FIRST_SLABS": 4}
    saved = json.loads(runs.read_text())
    assert set(saved["large-float32"]) == {"main", "_OUTPUT_FUSED=1,_FIRST_SLABS=4",
                                           "_FIRST_SLABS=2", "floor"}
    assert "_OUTPUT_FUSED=1,_FIRST_SLABS=4: TF32 " in capsys.readouterr().out

    real = ks.sweep

    def sweep(backend, config, precision, variants, *args, **kwargs):
        if precision == "float32":
            raise KeyboardInterrupt("the time limit")
        return real(backend, config, precision, variants, *args, **kwargs)

    monkeypatch.setattr(ks, "sweep", sweep)
    with pytest.raises(KeyboardInterrupt):
        cs.main()
    assert out.read_text() == ""
    assert set(json.loads(runs.read_text())) == {"large-tf32"}
