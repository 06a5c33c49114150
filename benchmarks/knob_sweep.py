"""One CupyBackend setting at several values, in one run, for one decision.

For each value of --values, the benchmark's graph-replayed training step (the
suite's `gpubp-cupy-graph` row) captured with CupyBackend.<--knob> set to it;
beside them the floor (the step's GEMMs alone on random operands, the suite's
`floor-cupy`). Each round times every subject once, in turn, so that clocks
drift alike; medians of CUDA events over the rounds, and each step over the
floor. The settings it is for:

  _BESIDE_SMS     SMs the GEMMs leave to the updates beside the backward pass,
                  set for --precision (0: every SM, what main does)
  _BG_BLOCK_ROWS  rows per block row of the packed column sums (256 in main)

    PYTHONPATH=$PWD python3 benchmarks/knob_sweep.py --knob _BESIDE_SMS --values 0,8,16,32 \
        [--config large] [--precision tf32] [--repeat 20]
"""

import argparse
import statistics

from gpubp.backends import get_backend
from gpubp.bench.configs import CONFIGS
from gpubp.bench.timing import CupyEvents
from gpubp.bench.workloads import GemmFloor, GpubpWorkload

parser = argparse.ArgumentParser()
parser.add_argument("--knob", required=True, choices=["_BESIDE_SMS", "_BG_BLOCK_ROWS"])
parser.add_argument("--values", required=True, help="comma-separated integers")
parser.add_argument("--config", default="large")
parser.add_argument("--precision", default="tf32")
parser.add_argument("--repeat", type=int, default=20)
args = parser.parse_args()

backend = get_backend("cupy")
Backend = type(backend)
config = CONFIGS[args.config]
default = getattr(Backend, args.knob)
subjects = {}
for value in [int(v) for v in args.values.split(",") if v]:
    # read when the step is captured; _BESIDE_SMS is per precision
    setattr(Backend, args.knob, {args.precision: value} if args.knob == "_BESIDE_SMS" else value)
    subjects[f"step, {value}"] = GpubpWorkload(config, backend, config.epoch_batches,
                                               args.precision, graphs=True).step
setattr(Backend, args.knob, default)
subjects["floor"] = GemmFloor(config, backend, args.precision).step

clock = CupyEvents()
for step in subjects.values():             # warm-up
    step()
    step()
clock.sync()
times = {name: [] for name in subjects}
for _ in range(args.repeat):
    for name, step in subjects.items():
        times[name].append(clock.time(step))
med = {name: statistics.median(t) for name, t in times.items()}
print(f"{backend._cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()} ({backend._sms} SMs), "
      f"{config.name}, {args.precision}, {args.knob} (main: {default}), "
      f"medians of {args.repeat} interleaved rounds")
for name, us in med.items():
    print(f"  {name:<12} {us:9.1f} µs   min {min(times[name]):9.1f}   "
          f"over the floor {us / med['floor']:.3f}")
