"""Can Adam run beside the backward GEMMs? A probe, for one decision.

large's backward on an H100 is five TF32 GEMMs (about 470 µs each, bound by
the tensor cores) and Adam over 50 M parameters (about 470 µs, bound by
memory). Adam for layer l may start once layer l's dW and the error product
through W(l) are done, while the GEMMs of the layers below still run. This
times, each as one CUDA graph replayed (medians of CUDA events, fp32 storage,
products through gpubp.cublas):

  gemms     the five backward GEMMs alone (dW2, dX2, dW1, dX1, dW0)
  adam      Adam over the three 4096 x 4096 weight matrices alone
  serial    dW2 dX2 A2 dW1 dX1 A1 dW0 A0, one stream (what gpubp does now)
  overlap   the same, A2 and A1 forked onto a second stream (graph branches)
  overlap-hi   overlap captured on a main stream of the highest priority
               (CUDA's -5 on Hopper; the second stream keeps the default 0, the lowest)

    PYTHONPATH=$PWD python3 benchmarks/overlap_probe.py [--precision float32] [--n 4096]
"""

import argparse
import statistics

import cupy
import numpy as np

from gpubp.backends import get_backend
from gpubp.graphs import capture

parser = argparse.ArgumentParser()
parser.add_argument("--precision", default="tf32")
parser.add_argument("--n", type=int, default=4096)
parser.add_argument("--repeat", type=int, default=20)
args = parser.parse_args()

b = get_backend("cupy")
n, p = args.n, args.precision
rng = np.random.default_rng(0)


def rand(*shape):
    return cupy.asarray(rng.standard_normal(shape, dtype=np.float32))


acts = [rand(n, n) for _ in range(3)]
deltas = [rand(n, n) for _ in range(3)]
W = [rand(n, n) for _ in range(3)]
dW = [cupy.empty((n, n), dtype=np.float32) for _ in range(3)]
err = [cupy.empty((n, n), dtype=np.float32) for _ in range(3)]
state = [(rand(n * n), cupy.abs(rand(n * n))) for _ in range(3)]        # m, v per layer
step, coef = cupy.zeros(1, dtype=np.int32), cupy.zeros(2, dtype=np.float64)
b.adam_schedule(step, coef, 1e-6, 0.9, 0.999)


def gemm_dw(i):
    b.matmul(acts[i], deltas[i], out=dW[i], transa=True, precision=p)


def gemm_dx(i):
    b.matmul(deltas[i], W[i], out=err[i], transb=True, precision=p)


def adam(i):
    m, v = state[i]
    b.adam(W[i].ravel(), dW[i].ravel(), m, v, coef, 1.0, 0.9, 0.999, 1e-8)


def gemms():
    gemm_dw(2); gemm_dx(2); gemm_dw(1); gemm_dx(1); gemm_dw(0)


def adams():
    adam(2); adam(1); adam(0)


def serial():
    gemm_dw(2); gemm_dx(2); adam(2); gemm_dw(1); gemm_dx(1); adam(1); gemm_dw(0); adam(0)


def overlapped(side):
    def run():
        main = cupy.cuda.get_current_stream()
        joins = []

        def fork(fn):
            start = cupy.cuda.Event(disable_timing=True)
            start.record(main)
            side.wait_event(start)
            with side:
                fn()
            done = cupy.cuda.Event(disable_timing=True)
            done.record(side)
            joins.append(done)

        gemm_dw(2); gemm_dx(2); fork(lambda: adam(2))
        gemm_dw(1); gemm_dx(1); fork(lambda: adam(1))
        gemm_dw(0); adam(0)
        for done in joins:
            main.wait_event(done)
    return run


side = cupy.cuda.Stream(non_blocking=True)
variants = {
    "gemms": gemms,
    "adam": adams,
    "serial": serial,
    "overlap": overlapped(side),
    "overlap-hi": overlapped(side),
}
graphs = {}
for name, fn in variants.items():
    stream = (cupy.cuda.Stream(non_blocking=True, priority=-5) if name == "overlap-hi"
              else b.new_stream())
    with stream, b.capturable():
        fn()                                    # warm-up: compiles, workspaces
        stream.synchronize()
        graphs[name] = capture(stream, fn)
with b.new_stream(), b.capturable():
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    times = {name: [] for name in graphs}
    for _ in range(args.repeat):                # interleaved, so that clocks drift alike
        for name, g in graphs.items():
            g.launch()
            start.record()
            g.launch()
            end.record()
            end.synchronize()
            times[name].append(cupy.cuda.get_elapsed_time(start, end) * 1e3)

med = {name: statistics.median(t) for name, t in times.items()}
print(f"{cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}, n={n}, {p} products, "
      f"medians of {args.repeat}")
for name, us in med.items():
    print(f"  {name:<12} {us:9.1f} µs   min {min(times[name]):9.1f}")
print(f"  serial - gemms = {med['serial'] - med['gemms']:.1f} µs (adam alone {med['adam']:.1f});"
      f" overlap - gemms = {med['overlap'] - med['gemms']:.1f}; overlap-hi - gemms = "
      f"{med['overlap-hi'] - med['gemms']:.1f}")
