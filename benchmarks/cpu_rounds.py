"""gpubp's CPU step against PyTorch's and against NumPy's passes, in alternate rounds.

On a shared 2-core machine the load changes from minute to minute. `gpubp bench`
times each subject in one block, so a ratio taken from two blocks also measures
how the load changed between them. Here every round times each subject
in turn, for --steps steps each:

  gpubp-numpy         the NumPy backend as it runs here (Numba's loops, where installed)
  gpubp-numpy-passes  the same with NumPy's passes (left out without Numba)
  torch-cpu           PyTorch on the same net, data, initial weights and optimizer

Before each subject's block the script pauses for --pause seconds (OpenBLAS's threads
spin for about 0.1 s after a product, and would take the other core from the next
subject), then makes one untimed step. The order of the subjects rotates from
round to round. The report gives each subject's median over the rounds, the ratios
of medians, the median of the rounds' own ratios with its quartiles, and how many
rounds gpubp won (paired, in the same round).

    PYTHONPATH=$PWD python benchmarks/cpu_rounds.py --config small --rounds 30 --steps 30
"""

import argparse
import json
import statistics
import time

import numpy as np

from gpubp import get_backend
from gpubp.backends.numpy_backend import NumpyBackend
from gpubp.bench.configs import CONFIGS
from gpubp.bench.torch_peer import TorchWorkload, torch_version
from gpubp.bench.workloads import GpubpWorkload


def subjects(config, n_batches=1):
    """The step functions to time, by subject name."""
    numpy = get_backend("numpy")
    gpubp = GpubpWorkload(config, numpy, n_batches)
    out = {"gpubp-numpy": gpubp.step}
    if numpy.loops is not None:
        out["gpubp-numpy-passes"] = GpubpWorkload(config, NumpyBackend(loops=None), n_batches).step
    if torch_version() is not None:
        out["torch-cpu"] = TorchWorkload(config, "cpu", gpubp.model.get_params(), n_batches).step
    return out


def rounds(steps_by_subject, n_rounds, steps, pause, clock=time.perf_counter, sleep=time.sleep):
    """Per subject, its mean step time (seconds) in each round."""
    names = list(steps_by_subject)
    times = {name: [] for name in names}
    for r in range(n_rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            step = steps_by_subject[name]
            sleep(pause)
            step()
            t0 = clock()
            for _ in range(steps):
                step()
            times[name].append((clock() - t0) / steps)
    return times


def compare(times, subject, peer):
    """``subject`` over ``peer``: ratio of medians, the rounds' own ratios
    (median and quartiles) and the rounds ``subject`` was faster in."""
    a, b = np.asarray(times[subject]), np.asarray(times[peer])
    per_round = a / b
    q25, q75 = np.percentile(per_round, [25, 75])
    return {"ratio_of_medians": statistics.median(a) / statistics.median(b),
            "median_round_ratio": float(np.median(per_round)), "q25": float(q25), "q75": float(q75),
            "faster_rounds": int((a < b).sum()), "rounds": len(a)}


def report(config_name, times):
    lines = [f"{config_name}: " + ", ".join(f"{k} {statistics.median(v) * 1e6:.0f} µs"
                                            for k, v in times.items())]
    for peer in ("torch-cpu", "gpubp-numpy-passes"):
        if peer in times:
            c = compare(times, "gpubp-numpy", peer)
            lines.append(f"  gpubp-numpy over {peer}: {c['ratio_of_medians']:.3f} (ratio of medians); "
                         f"rounds' ratios {c['median_round_ratio']:.3f} [{c['q25']:.3f}-{c['q75']:.3f}], "
                         f"faster in {c['faster_rounds']}/{c['rounds']} rounds")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS), help="repeatable; default small")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per subject and round")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds of idle before each block")
    parser.add_argument("--json", help="write every round's times here")
    args = parser.parse_args(argv)
    results = {}
    for name in args.config or ["small"]:
        times = rounds(subjects(CONFIGS[name]), args.rounds, args.steps, args.pause)
        print(report(name, times), flush=True)
        results[name] = {"seconds_per_step": times,
                         **{f"over_{peer}": compare(times, "gpubp-numpy", peer)
                            for peer in ("torch-cpu", "gpubp-numpy-passes") if peer in times}}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "numba": getattr(get_backend("numpy").loops, "VERSION", None),
                       "torch": torch_version(), "configs": results}, f, indent=1)


if __name__ == "__main__":
    main()
