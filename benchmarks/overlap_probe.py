"""Can Adam run beside the backward GEMMs? A probe, for two decisions.

large's backward on an H100 is five TF32 GEMMs (about 470 µs each, bound by
the tensor cores) and Adam over 50 M parameters (about 470 µs, bound by
memory). Adam for layer l may start once layer l's dW and the error product
through W(l) are done, while the GEMMs of the layers below still run. This
times, each as one CUDA graph replayed (medians of CUDA events, fp32 storage,
products through gpubp.cublas):

  gemms     the five backward GEMMs alone (dW2, dX2, dW1, dX1, dW0)
  adam      Adam over the three 4096 x 4096 weight matrices alone
  serial    dW2 dX2 A2 dW1 dX1 A1 dW0 A0, one stream
  overlap   the same, A2 and A1 beside the GEMMs on a second stream (graph
            branches), as MLP._train_step does: backend.beside and rejoin
and for each k of --reserve (CupyBackend._BESIDE_SMS = {precision: k}):
  gemms-k      the five GEMMs made for k SMs fewer (after an empty fork, so
               that they are made as in the step, with work pending beside)
  overlap-k    overlap with the GEMMs after the first fork made for k SMs fewer
and eagerly, launch by launch, for k = 0 and each k of --reserve:
  eager-overlap-k      overlap, on a main stream of the default priority
  eager-overlap-k-hi   the same on a main stream of the highest priority
  eager-gemms          the five GEMMs alone
The first run (stop 10) found Adam hidden by 40 µs of 461 (TF32): cuBLAS's
kernels fill every SM, and Adam's blocks wait for the gaps between them. It
also timed the overlap captured on a stream of the highest priority, and found
no difference: a graph runs at the priority of the stream it is launched into
unless instantiated with cudaGraphInstantiateFlagUseNodePriority, which CuPy's
graphs do not offer, so that variant measured nothing and is gone.

    PYTHONPATH=$PWD python3 benchmarks/overlap_probe.py [--precision float32] [--n 4096]
        [--reserve 4,8,16,32]
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
parser.add_argument("--reserve", default="4,8,16,32", help="SM counts left to Adam, comma-separated")
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


def overlapped():
    gemm_dw(2); gemm_dx(2); b.beside(lambda: adam(2))
    gemm_dw(1); gemm_dx(1); b.beside(lambda: adam(1))
    gemm_dw(0); adam(0)
    b.rejoin()


def gemms_pending():
    b.beside(lambda: None)          # work pending beside: the GEMMs are made as in the step
    gemms()
    b.rejoin()


reserves = [int(k) for k in args.reserve.split(",") if k]
variants = {"gemms": (gemms, 0), "adam": (adams, 0), "serial": (serial, 0),    # name: (fn, k)
            "overlap": (overlapped, 0)}
for k in reserves:
    variants.update({f"gemms-{k}": (gemms_pending, k), f"overlap-{k}": (overlapped, k)})
graphs = {}
for name, (fn, reserve) in variants.items():
    type(b)._BESIDE_SMS = {p: reserve}
    stream = b.new_stream()
    with stream, b.capturable():
        fn()                                    # warm-up: compiles, workspaces
        stream.synchronize()
        graphs[name] = capture(stream, fn)      # the SM counts are fixed at capture
type(b)._BESIDE_SMS = {}
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

# The graphs' part now, so that a run cut short in the eager part still shows it.
med = {name: statistics.median(t) for name, t in times.items()}
print(f"{cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()} ({b._sms} SMs), n={n}, {p} "
      f"products, medians of {args.repeat}")
for name, us in med.items():
    print(f"  {name:<20} {us:9.1f} µs   min {min(times[name]):9.1f}")
print(f"  serial - gemms = {med['serial'] - med['gemms']:.1f} µs (adam alone {med['adam']:.1f});"
      f" overlap - gemms = {med['overlap'] - med['gemms']:.1f}")
for k in reserves:
    print(f"  k={k:<3} gemms-k - gemms = {med[f'gemms-{k}'] - med['gemms']:7.1f};"
          f" overlap-k - gemms = {med[f'overlap-{k}'] - med['gemms']:7.1f}", flush=True)

# Eager, the same functions launched one by one, on a main stream of the default
# priority and on one of the highest (the lanes beside keep the default, the
# lowest). A graph cannot show priorities (see above), eager launches can: if
# -hi wins, Adam's queued blocks hold back the GEMMs', and graphs instantiated
# with node priorities are the next step.
HIGHEST = -1000                                 # CUDA clamps it to the device's highest
eager = {}
for k in [0] + reserves:
    for hi in (False, True):
        stream = (cupy.cuda.Stream(non_blocking=True, priority=HIGHEST) if hi
                  else b.new_stream())
        eager[f"eager-overlap-{k}{'-hi' if hi else ''}"] = (k, stream)
eager["eager-gemms"] = (0, b.new_stream())
with b.capturable():
    for name in eager:
        times[name] = []
    for _ in range(args.repeat):
        for name, (k, stream) in eager.items():
            type(b)._BESIDE_SMS = {p: k}        # read at each product
            fn = gemms if name == "eager-gemms" else overlapped
            with stream:
                fn()                            # the round's warm-up
                start.record()
                fn()
                end.record()
                end.synchronize()
            times[name].append(cupy.cuda.get_elapsed_time(start, end) * 1e3)
type(b)._BESIDE_SMS = {}

med = {name: statistics.median(t) for name, t in times.items()}
for name in eager:
    print(f"  {name:<20} {med[name]:9.1f} µs   min {min(times[name]):9.1f}")
for k in [0] + reserves:
    print(f"  eager, k={k:<3} overlap - gemms = "
          f"{med[f'eager-overlap-{k}'] - med['eager-gemms']:7.1f}; on a main stream of the "
          f"highest priority {med[f'eager-overlap-{k}-hi'] - med['eager-gemms']:7.1f}")
