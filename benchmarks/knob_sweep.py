"""CupyBackend settings side by side, in one run, for one decision.

For each --variant (settings of CupyBackend, "NAME=INT,NAME=INT"; "" for
main's), the benchmark's graph-replayed training step (the suite's
`gpubp-cupy-graph` row) captured with those settings; beside them the floor
(the step's GEMMs alone on random operands, the suite's `floor-cupy`). Each
round times every subject once, in turn, so that clocks drift alike; medians
of CUDA events over the rounds, and each step over the floor. The settings:

  _BESIDE_SMS       SMs the GEMMs leave to the work beside the backward pass,
                    for --precision (0: every SM, as in main)
  _BACKWARD_BESIDE  1: the backward pass's per-element work beside its GEMMs
                    (0 in main)
  _STEP_PRIORITY    1: the step's kernels at the highest priority, the work
                    beside them at the lowest, kept in the graph (0 in main)
  _BG_BLOCK_ROWS    rows per block row of the packed column sums (256 in main)

    PYTHONPATH=$PWD python3 benchmarks/knob_sweep.py --config large --precision tf32 \
        --variant "" --variant _BESIDE_SMS=16 --variant _BESIDE_SMS=16,_BACKWARD_BESIDE=1
"""

import argparse
import statistics

from gpubp.backends import get_backend
from gpubp.bench.configs import CONFIGS
from gpubp.bench.timing import CupyEvents
from gpubp.bench.workloads import GemmFloor, GpubpWorkload

SETTINGS = ("_BESIDE_SMS", "_BACKWARD_BESIDE", "_STEP_PRIORITY", "_BG_BLOCK_ROWS")
parser = argparse.ArgumentParser()
parser.add_argument("--variant", action="append", required=True,
                    help='"NAME=INT,..." of ' + ", ".join(SETTINGS) + '; "" for main\'s')
parser.add_argument("--config", default="large")
parser.add_argument("--precision", default="tf32")
parser.add_argument("--repeat", type=int, default=20)
args = parser.parse_args()

backend = get_backend("cupy")
Backend = type(backend)
config = CONFIGS[args.config]
main = {name: getattr(Backend, name) for name in SETTINGS}


def settings(variant):
    out = {}
    for item in filter(None, variant.split(",")):
        name, value = item.split("=")
        if name not in SETTINGS:
            raise SystemExit(f"unknown setting {name!r}; one of {', '.join(SETTINGS)}")
        value = int(value)
        out[name] = ({args.precision: value} if name == "_BESIDE_SMS"
                     else bool(value) if name in ("_BACKWARD_BESIDE", "_STEP_PRIORITY") else value)
    return out


subjects = {}
for variant in args.variant:
    for name, value in {**main, **settings(variant)}.items():
        setattr(Backend, name, value)           # read when the step is captured
    subjects[variant or "main"] = GpubpWorkload(config, backend, config.epoch_batches,
                                                args.precision, graphs=True).step
for name, value in main.items():
    setattr(Backend, name, value)
subjects["floor"] = GemmFloor(config, backend, args.precision).step

clock = CupyEvents()
for step in subjects.values():                 # warm-up
    step()
    step()
clock.sync()
times = {name: [] for name in subjects}
for _ in range(args.repeat):
    for name, step in subjects.items():
        times[name].append(clock.time(step))
med = {name: statistics.median(t) for name, t in times.items()}
print(f"{backend._cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()} ({backend._sms} SMs), "
      f"{config.name}, {args.precision}, medians of {args.repeat} interleaved rounds")
width = max(len(name) for name in med)
for name, us in med.items():
    print(f"  {name:<{width}} {us:9.1f} µs   min {min(times[name]):9.1f}   "
          f"over the floor {us / med['floor']:.3f}")
