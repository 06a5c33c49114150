"""Choose CupyBackend's settings from one set of runs on the GPU, by rules fixed
before the runs (benchmarks/NOTES.md, "The twelfth session"), and write them
where benchmarks/gpu_session.sh reads them.

Main's settings were measured in the eleventh session (`_STEP_PRIORITY` on,
`_BG_BLOCK_ROWS` 32, no `_BESIDE_SMS`, `_BACKWARD_BESIDE` off). Under trial, both
off in main, both for large TF32's remaining gap:

  _OUTPUT_FUSED  the output layer's bias, loss, delta and bias sums in one pass
                 (an elementwise loss over wide rows)
  _FIRST_SLABS   the first layer's weight gradient in 2 or 4 slabs of rows, each
                 slab's update beside the product for the next (a first layer of
                 at least _OVERLAP_MIN_WEIGHTS weights)

Of the suite's configs only large has such layers, so only large's steps are timed.
Also timed once more: _BACKWARD_BESIDE (the backward pass's per-element work beside its
products), which lost in every combination the eleventh session tried, but each of
those also made the GEMMs for fewer SMs; with _STEP_PRIORITY alone it was not tried.

1. large, TF32: main's graph step against each of TF32_VARIANTS (knob_sweep.sweep,
   interleaved rounds). The candidates: the variants that beat main's (``beats``).
2. large, float32: main's against each candidate, since the settings are the
   class's, not per precision. The winner: of the candidates float32 pays at most
   1% for (FLAG_COST), the one of lowest TF32 median; main's if there is none.

A variant beats another where its median is at most 0.99 of the other's and it
was faster in at least 3/4 of the rounds. Prints every table and each decision;
writes the settings (_knobs.format) to --out ("" for main's: from the start, so a
run cut short leaves main's), and every sweep's times to --json as each ends.

    PYTHONPATH=$PWD python3 benchmarks/choose_settings.py --out /tmp/settings.txt
"""

import argparse
import json
import statistics
import sys
import time

import _knobs
import knob_sweep

TF32_VARIANTS = ["", "_OUTPUT_FUSED=1", "_FIRST_SLABS=2", "_FIRST_SLABS=4",
                 "_OUTPUT_FUSED=1,_FIRST_SLABS=2", "_OUTPUT_FUSED=1,_FIRST_SLABS=4",
                 "_BACKWARD_BESIDE=1"]
FAST, SHARE = 0.99, 0.75          # beats: median at most 0.99 of the other's, faster in 3/4 of rounds
FLAG_COST = 1.01                  # float32 large at most 1% slower with TF32's candidate


def median(times, name):
    return statistics.median(times[name])


def beats(times, name, ref="main"):
    """``name`` faster than ``ref``: median at most FAST of ref's and faster
    in at least SHARE of the (paired) rounds. A variant left out of the sweep
    (its step failed) beats nothing."""
    if name not in times:
        return False
    rounds = len(times[name])
    return (median(times, name) <= FAST * median(times, ref)
            and knob_sweep.wins(times, name, ref) >= SHARE * rounds)


def candidates(tf32):
    """The variants that beat main's in TF32, fastest first (none where main's
    own step was left out of the sweep)."""
    if "main" not in tf32:
        return []
    names = [name for name in tf32 if name not in ("main", "floor") and beats(tf32, name)]
    return sorted(names, key=lambda name: median(tf32, name))


def decide(tf32, f32, names):
    """(winner, notes): of the candidates ``names`` (fastest first), the first
    whose float32 step is at most FLAG_COST of main's; "main" if none is."""
    notes = []
    for name in names:
        cost = (median(f32, name) / median(f32, "main") if {name, "main"} <= set(f32)
                else float("inf"))
        if cost <= FLAG_COST:
            notes.append(f"{name}: TF32 {median(tf32, name) / median(tf32, 'main'):.3f} of main's, "
                         f"float32 {cost:.3f} (at most {FLAG_COST}): chosen")
            return name, notes
        notes.append(f"{name}: float32 {cost:.3f} of main's (over {FLAG_COST}): passed over")
    return "main", notes


def main():
    from gpubp.backends import get_backend
    from gpubp.bench.configs import CONFIGS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="where to write the chosen settings")
    parser.add_argument("--json", help="every sweep's times per round")
    parser.add_argument("--large", default="large", help="the config timed (tests: tiny)")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    backend = get_backend("cupy")
    large = CONFIGS[args.large]
    runs, started = {}, time.perf_counter()

    def run(key, precision, variants, repeat):
        times = knob_sweep.sweep(backend, large, precision, variants, repeat)
        runs[key] = times
        print(knob_sweep.report(times, f"{key}: {large.name}, {precision}, medians of {repeat} "
                                       f"interleaved rounds ({time.perf_counter() - started:.0f} s)"),
              flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(runs, f)
        return times

    def save(settings):
        with open(args.out, "w") as f:
            f.write(_knobs.format(settings))

    save({})
    variants = {(v or "main"): _knobs.parse(v, "tf32") for v in TF32_VARIANTS}
    tf32 = run("large-tf32", "tf32", variants, args.repeat)
    names = candidates(tf32)
    print(f"beat main's in TF32: {', '.join(names) or 'none'}", flush=True)
    f32 = {}
    if names:
        f32 = run("large-float32", "float32", {"main": {}, **{name: variants[name] for name in names}},
                  max(5, args.repeat // 2))
    winner, notes = decide(tf32, f32, names)
    for note in notes:
        print(note)
    settings = variants[winner] if winner != "main" else {}
    save(settings)
    print(f"chosen settings: {_knobs.format(settings) or 'main' + chr(39) + 's'} "
          f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
