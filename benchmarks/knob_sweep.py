"""CupyBackend settings side by side, in one run, for one decision.

For each --variant (settings of CupyBackend as _knobs.py writes them, over
--base and main's; "" for main's), the benchmark's graph-replayed training
step (the suite's `gpubp-cupy-graph` row) captured with those settings; beside
them the floor (the step's GEMMs alone on random operands, the suite's
`floor-cupy`). Each round times every subject once, in turn (in an order
shuffled round by round), so that clocks drift alike; medians of CUDA events over the
rounds, each step over the floor, and how many rounds each variant beat main's
in (paired: the same round). The settings (main's are CupyBackend's own):

  _BESIDE_SMS       SMs the GEMMs leave to the work beside the backward pass,
                    for --precision (0: every SM)
  _BACKWARD_BESIDE  1: the backward pass's per-element work beside its GEMMs
  _STEP_PRIORITY    1: the step's kernels at the highest priority, the work
                    beside them at the lowest, kept in the graph
  _OUTPUT_FUSED     1: the output layer's bias, loss, delta and bias sums in one pass
  _BG_BLOCK_ROWS    rows per block row of the packed column sums
  _FIRST_SLABS      slabs of rows the first layer's weight gradient is made in,
                    each slab's update beside the product for the next

    PYTHONPATH=$PWD python3 benchmarks/knob_sweep.py --config large --precision tf32 \\
        --variant "" --variant _OUTPUT_FUSED=1 --variant _FIRST_SLABS=4

choose_settings.py calls sweep() itself.
"""

import argparse
import json
import random
import statistics

import _knobs


def sweep(backend, config, precision, variants, repeat=20, base=None, batches=1):
    """{name: [µs per round]} for each named variant ({name: settings}) and
    "floor". ``base`` settings go under every variant; the class's own are
    restored after. ``batches``: batches of data per workload (the step reads
    the first). A variant whose step cannot be made, or launched, is left out,
    its error printed: the others are still compared.

    Each round times every subject once, in an order of its own (shuffled, seeded by
    the round), so that no subject always follows the same one: the floor's random
    operands draw more power than the steps', and a rotation would keep main behind
    the floor in all rounds but one. Each timed launch follows an untimed launch of
    the same subject, so that the GPU is busy when the first event is recorded: the
    events time the step back to back, as a trainer's queued steps run, and not the
    host's launch."""
    from gpubp.bench.timing import CupyEvents
    from gpubp.bench.workloads import GemmFloor, GpubpWorkload

    cls = type(backend)
    main = {name: getattr(cls, name) for name in _knobs.NAMES}
    subjects = {}
    try:
        for name, settings in variants.items():
            _knobs.apply(cls, _knobs.merge(main, base or {}, settings))   # read at capture
            try:
                step = GpubpWorkload(config, backend, batches, precision, graphs=True).step
                step()                             # its first launch
                backend.synchronize_device()
                subjects[name] = step
            except Exception as exc:
                print(f"  {name or 'main'}: left out, its step failed: {type(exc).__name__}: {exc}",
                      flush=True)
                backend.synchronize_device()
    finally:
        _knobs.apply(cls, main)
    subjects["floor"] = GemmFloor(config, backend, precision).step
    clock = CupyEvents()
    for step in subjects.values():                 # warm-up
        step()
        step()
    clock.sync()
    times = {name: [] for name in subjects}
    for r in range(repeat):
        order = list(subjects)
        random.Random(r).shuffle(order)
        for name in order:
            subjects[name]()                       # untimed: the GPU busy at the first event
            times[name].append(clock.time(subjects[name]))
    return times


def wins(times, name, ref="main"):
    """Rounds in which ``name`` took less time than ``ref`` (the same round)."""
    return sum(a < b for a, b in zip(times[name], times[ref]))


def report(times, title, ref="main"):
    """The sweep's lines: medians, minima, over the floor, rounds beating ``ref``."""
    med = {name: statistics.median(t) for name, t in times.items()}
    lines = [title]
    width = max(len(name) for name in med)
    for name, us in med.items():
        line = (f"  {name:<{width}} {us:9.1f} µs   min {min(times[name]):9.1f}   "
                f"over the floor {us / med['floor']:.3f}")
        if ref in times and name not in (ref, "floor"):
            line += f"   {us / med[ref]:.3f} of {ref}'s, faster in {wins(times, name, ref)}/{len(times[name])} rounds"
        lines.append(line)
    return "\n".join(lines)


def main():
    from gpubp.backends import get_backend
    from gpubp.bench.configs import CONFIGS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", action="append", required=True,
                        help='"NAME=INT,..." of ' + ", ".join(_knobs.NAMES) + '; "" for main\'s')
    parser.add_argument("--base", default="", help="settings under every variant")
    parser.add_argument("--config", default="large")
    parser.add_argument("--precision", default="tf32")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", help="write the times per round here")
    args = parser.parse_args()

    backend = get_backend("cupy")
    variants = {(v or "main"): _knobs.parse(v, args.precision) for v in args.variant}
    times = sweep(backend, CONFIGS[args.config], args.precision, variants, args.repeat,
                  _knobs.parse(args.base, args.precision))
    name = backend._cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(report(times, f"{name} ({backend._sms} SMs), {args.config}, {args.precision}, "
                        f"medians of {args.repeat} interleaved rounds"
                        + (f", over {args.base}" if args.base else "")))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(times, f)


if __name__ == "__main__":
    main()
