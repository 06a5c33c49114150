"""Choose CupyBackend's settings for the work beside the GEMMs from one set of
runs on the GPU, by rules fixed before the runs (benchmarks/NOTES.md, "The
seventh session"), and write them where benchmarks/gpu_session.sh reads them.

0. small: main's graph step against _STEP_PRIORITY's. The flag is a candidate
   below only if small is at most 1% slower with it (it changes every
   config's graphs; the other settings change only large layers' steps).
1. large, TF32: main's graph step against each of TF32_VARIANTS (knob_sweep.sweep,
   interleaved rounds). The winner: the lowest median among the variants that
   beat main's (``beats``); main's if none does.
2. large, float32: main's against _BESIDE_SMS 4 and 16, and, where the TF32
   winner turns a flag on (the flags are not per precision), that flag with
   0 and 4 SMs. A flag stays on only if float32 with it is at most 1% slower
   than main's; else the TF32 winner is chosen again among the variants without it.
   float32's SM count: the best that beats main's among those with the
   chosen flags (with flags on, the better of their two).
3. _BG_BLOCK_ROWS 32 against 256, on small (over the chosen settings) and on
   large TF32: 32 where it beats 256 on small and large TF32 is at most
   0.5% slower with it.

A variant beats another where its median is at most 0.99 of the other's and it
was faster in at least 3/4 of the rounds. Prints every table and each decision;
writes the settings (_knobs.format) to --out, "" for main's: main's from the start,
those of steps 0-2 once they are decided (a run cut short in step 3 keeps them),
then step 3's too; --json's times are saved at the same points.

    PYTHONPATH=$PWD python3 benchmarks/choose_settings.py --out /tmp/settings.txt
"""

import argparse
import json
import statistics
import sys
import time

import _knobs
import knob_sweep

TF32_VARIANTS = ["", "_BESIDE_SMS=4", "_BESIDE_SMS=8", "_BESIDE_SMS=16", "_BESIDE_SMS=32",
                 "_BESIDE_SMS=8,_BACKWARD_BESIDE=1", "_BESIDE_SMS=16,_BACKWARD_BESIDE=1",
                 "_BESIDE_SMS=32,_BACKWARD_BESIDE=1",
                 "_BESIDE_SMS=16,_STEP_PRIORITY=1",
                 "_BESIDE_SMS=16,_BACKWARD_BESIDE=1,_STEP_PRIORITY=1"]
FLOAT32_SMS = (4, 16)
FAST, SHARE = 0.99, 0.75          # beats: median at most 0.99 of the other's, faster in 3/4 of rounds
FLAG_COST = 1.01                  # at most 1% slower (float32 large, small) for a flag TF32 wants
BG_COST = 1.005                   # large TF32 at most 0.5% slower for _BG_BLOCK_ROWS 32


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


def best(times, candidates, ref="main"):
    """The candidate with the lowest median among those that beat ``ref``, else None."""
    winners = [name for name in candidates if beats(times, name, ref)]
    return min(winners, key=lambda name: median(times, name)) if winners else None


def flags(settings):
    """The flags a variant turns on."""
    return {name: True for name in _knobs.FLAGS if settings.get(name)}


def priority_allowed(small):
    """_STEP_PRIORITY may be chosen: its small step was made, and is at most
    FLAG_COST slower than main's."""
    return ("_STEP_PRIORITY=1" in small
            and median(small, "_STEP_PRIORITY=1") <= FLAG_COST * median(small, "main"))


def decide_tf32(tf32, variants, allow_priority=True):
    """The TF32 winner's name (a key of ``variants``, "main" if none beats it)."""
    return best(tf32, [name for name, s in variants.items() if name != "main"
                       and (allow_priority or not s.get("_STEP_PRIORITY"))]) or "main"


def float32_variants(tf32_flags):
    """Variant name -> settings for the float32 sweep."""
    out = {"main": {}}
    for k in FLOAT32_SMS:
        out[f"_BESIDE_SMS={k}"] = {"_BESIDE_SMS": {"float32": k}}
    if tf32_flags:
        text = ",".join(f"{name}=1" for name in tf32_flags)
        out[text] = dict(tf32_flags)
        out[f"_BESIDE_SMS=4,{text}"] = {**tf32_flags, "_BESIDE_SMS": {"float32": 4}}
    return out


def decide_flags_and_float32(tf32, tf32_variants, winner, f32, f32_variants):
    """(TF32 winner, float32 variant, notes): the flags kept only where float32
    pays at most FLAG_COST for them."""
    notes = []
    wanted = flags(tf32_variants[winner])
    if wanted:
        with_flags = [name for name, s in f32_variants.items() if flags(s) == wanted and name in f32]
        fastest = min(with_flags, key=lambda name: median(f32, name), default=None)
        cost = median(f32, fastest) / median(f32, "main") if fastest else float("inf")
        if cost <= FLAG_COST:
            notes.append(f"float32 with {', '.join(wanted)}: {cost:.3f} of main's "
                         f"(at most {FLAG_COST}): kept")
            return winner, fastest, notes
        notes.append(f"float32 with {', '.join(wanted)}: {cost:.3f} of main's "
                     f"(over {FLAG_COST}): TF32's winner chosen again without it")
        winner = best(tf32, [name for name, s in tf32_variants.items()
                             if name != "main" and not flags(s)]) or "main"
    plain = [name for name, s in f32_variants.items() if name != "main" and not flags(s)]
    return winner, best(f32, plain) or "main", notes


def chosen_settings(tf32_variants, winner, f32_variants, f32_choice):
    """TF32's winner and float32's choice together (they share their flags)."""
    return _knobs.merge(tf32_variants[winner], f32_variants[f32_choice])


def decide_block_rows(small, large):
    """32 where it beats 256 on small and costs large TF32 at most BG_COST."""
    if "rows256" not in small or not beats(small, "rows32", "rows256"):
        return False, "small: 32 rows per block row does not beat 256"
    cost = (median(large, "rows32") / median(large, "rows256")
            if {"rows32", "rows256"} <= set(large) else float("inf"))
    if cost > BG_COST:
        return False, f"small gains with 32, large TF32 pays {cost:.3f} (over {BG_COST})"
    return True, f"small gains with 32, large TF32 {cost:.3f} of 256's"


def main():
    from gpubp.backends import get_backend
    from gpubp.bench.configs import CONFIGS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="where to write the chosen settings")
    parser.add_argument("--json", help="every sweep's times per round")
    parser.add_argument("--large", default="large", help="the config of steps 1-3 (tests: tiny)")
    parser.add_argument("--small", default="small")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    backend = get_backend("cupy")
    large, small = CONFIGS[args.large], CONFIGS[args.small]
    runs, started = {}, time.perf_counter()

    def run(key, config, precision, variants, repeat=args.repeat, base=None):
        times = knob_sweep.sweep(backend, config, precision, variants, repeat, base)
        runs[key] = times
        print(knob_sweep.report(times, f"{key}: {config.name}, {precision}, medians of {repeat} "
                                       f"interleaved rounds ({time.perf_counter() - started:.0f} s)",
                                ref="main" if "main" in times else "rows256"), flush=True)
        return times

    def save(settings):
        """The settings chosen so far, and every sweep's times so far."""
        with open(args.out, "w") as f:
            f.write(_knobs.format(settings))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(runs, f)

    # Main's settings until steps 0-2 have all finished; theirs while step 3 runs, so that
    # a run cut short in step 3 keeps them (with main's _BG_BLOCK_ROWS).
    save({})
    small_priority = run("small-priority", small, "float32",
                         {"main": {}, "_STEP_PRIORITY=1": {"_STEP_PRIORITY": True}}, repeat=50)
    allow_priority = priority_allowed(small_priority)
    print(f"_STEP_PRIORITY {'may be chosen' if allow_priority else 'is left out: small pays'}",
          flush=True)
    tf32_variants = {(v or "main"): _knobs.parse(v, "tf32") for v in TF32_VARIANTS}
    tf32 = run("large-tf32", large, "tf32", tf32_variants)
    winner = decide_tf32(tf32, tf32_variants, allow_priority)
    print(f"TF32 winner: {winner}", flush=True)

    f32_variants = float32_variants(flags(tf32_variants[winner]))
    f32 = run("large-float32", large, "float32", f32_variants, repeat=max(5, args.repeat // 2))
    winner, f32_choice, notes = decide_flags_and_float32(tf32, tf32_variants, winner, f32, f32_variants)
    for note in notes:
        print(note)
    settings = chosen_settings(tf32_variants, winner, f32_variants, f32_choice)
    print(f"TF32: {winner}; float32: {f32_choice}", flush=True)
    save(settings)

    rows = {"rows256": {"_BG_BLOCK_ROWS": 256}, "rows32": {"_BG_BLOCK_ROWS": 32}}
    small_times = run("small-block-rows", small, "float32", rows, repeat=50, base=settings)
    large_times = run("large-tf32-block-rows", large, "tf32", rows, base=settings)
    use32, why = decide_block_rows(small_times, large_times)
    print(f"_BG_BLOCK_ROWS: {32 if use32 else 256} ({why})")
    if use32:
        settings = _knobs.merge(settings, {"_BG_BLOCK_ROWS": 32})

    save(settings)
    text = _knobs.format(settings)
    print(f"chosen settings: {text or 'main' + chr(39) + 's'} "
          f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
