"""Runs the benchmark matrix: every config on every asked-for backend, beside
PyTorch and the GEMM floor, and computes the ratios."""

from __future__ import annotations

import datetime
import gc
import os
import platform
import sys
import time

import numpy as np

from .. import __version__
from ..backends import BackendUnavailableError, available_backends, get_backend, plain_cupy_backend
from ..backends.numpy_backend import NumpyBackend
from .timing import CupyEvents, HostClock, TorchEvents, measure
from .torch_peer import TorchGemmFloor, TorchWorkload, torch_version
from .workloads import GemmFloor, GpubpWorkload

WORKLOADS = ("forward", "step", "epoch")
# What PyTorch's rows are in precision bf16: PyTorch's own way to it, not gpubp's.
TORCH_BF16 = ("PyTorch under autocast to bfloat16: bf16 products with bf16 outputs and "
              "activations; gpubp's are fp32 with bf16-rounded factors")


class Settings:
    def __init__(self, quick=False, repeat=None, budget_s=None, use_torch=True, precision="float32",
                 settle_s=0.3):
        self.quick = quick
        # Idle time before each CPU subject: OpenBLAS's worker threads spin for about
        # 0.1 s after a product (2^28 clock ticks), and a peer timed within that
        # window shares the cores with them (PyTorch's small step: 4.05 against 3.60 ms,
        # benchmarks/NOTES.md, CPU section 6).
        self.settle_s = settle_s
        self.precision = precision
        self.repeat = repeat or (5 if quick else 30)
        self.warmup = 2 if quick else 5
        self.budget_s = budget_s or (2.0 if quick else 10.0)
        self.use_torch = use_torch

    def n_batches(self, config):
        return 2 if self.quick else config.epoch_batches


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _numpy_blas():
    """NumPy's BLAS as its build reports it, e.g. "scipy-openblas 0.3.31"; None if unknown."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas['name']} {blas.get('version', '')}".strip()
    except Exception:
        return None


def _torch_threads():
    if torch_version() is None:
        return None
    import torch

    return torch.get_num_threads()


def environment():
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["gpubp"] + sys.argv[1:]) if sys.argv else "",
        "python": platform.python_version(),
        "gpubp": __version__,
        "numpy": np.__version__,
        # the NumPy backend's fused loops (Numba's version), or None for NumPy's passes
        "numba": getattr(get_backend("numpy").loops, "VERSION", None),
        "torch": torch_version(),
        "cpu": _cpu_name(),
        "cpu_cores": os.cpu_count(),
        "blas": _numpy_blas(),
        # thread settings the CPU figures depend on (unset: the libraries' defaults)
        "threads_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                   "MKL_NUM_THREADS") if k in os.environ},
        "torch_threads": _torch_threads(),
        "gpu": None,
        "cupy": None,
    }
    if "cupy" in available_backends():
        import cupy

        meta["cupy"] = cupy.__version__
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        meta["gpu"] = name.decode() if isinstance(name, bytes) else name
    return meta


def _free_gpu():
    gc.collect()
    try:
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
    except Exception:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def plan(config, backend, settings, explicit=()):
    """``(subject, device, factory, clock factory, workloads)`` to time, or
    ``(subject, reason)`` for those skipped."""
    torch_ok = settings.use_torch and torch_version() is not None
    n_batches = settings.n_batches(config)
    precision = settings.precision
    if backend == "numpy":
        if not config.cpu_by_default and config.name not in explicit:
            reason = f"the CPU runs {config.name} only when asked for by name (--config {config.name})"
            return [(s, reason) for s in ("gpubp-numpy", "gpubp-numpy-passes", "floor-numpy", "torch-cpu",
                                          "floor-torch-cpu")]
        numpy = get_backend("numpy")
        out = [
            ("gpubp-numpy", "cpu", lambda: GpubpWorkload(config, numpy, n_batches, precision),
             HostClock, WORKLOADS),
        ]
        if numpy.loops is not None:                   # the worth of the Numba loops, measured
            out.append(("gpubp-numpy-passes", "cpu",
                        lambda: GpubpWorkload(config, NumpyBackend(loops=None), n_batches, precision),
                        HostClock, ("forward", "step")))
        else:
            out.append(("gpubp-numpy-passes", ("gpubp-numpy makes NumPy's passes itself "
                                               "(Numba is not installed or does not import, "
                                               "or GPUBP_NUMBA=0)")))
        out += [
            ("floor-numpy", "cpu", lambda: GemmFloor(config, numpy, precision), HostClock,
             ("forward", "step")),
        ]
        if torch_ok and precision == "tf32":
            # PyTorch's CPU products are float32 whatever it is told: a ratio to them
            # would set gpubp's TF32 (rounded factors) against another precision.
            reason = "PyTorch has no TF32 products on the CPU"
            out += [("torch-cpu", reason), ("floor-torch-cpu", reason)]
        elif torch_ok:
            params = lambda: GpubpWorkload(config, numpy, 1).model.get_params()  # noqa: E731
            out.append(("torch-cpu", "cpu",
                        lambda: TorchWorkload(config, "cpu", params(), n_batches, precision=precision),
                        HostClock, WORKLOADS))
            out.append(("floor-torch-cpu", "cpu",
                        lambda: TorchGemmFloor(config, "cpu", precision), HostClock,
                        ("forward", "step")))
        else:
            reason = "PyTorch is not installed" if settings.use_torch else "--no-torch"
            out += [("torch-cpu", reason), ("floor-torch-cpu", reason)]
        return out
    # cupy, and PyTorch on the GPU whether or not CuPy works
    out = []
    try:
        cupy_backend = get_backend("cupy")
    except BackendUnavailableError as exc:
        out += [(s, str(exc)) for s in ("gpubp-cupy", "gpubp-cupy-graph", "gpubp-cupy-unfused",
                                        "floor-cupy", "floor-cupy-graph")]
    else:
        out += [
            ("gpubp-cupy", "gpu", lambda: GpubpWorkload(config, cupy_backend, n_batches, precision),
             CupyEvents, WORKLOADS),
            ("gpubp-cupy-graph", "gpu",
             lambda: GpubpWorkload(config, cupy_backend, n_batches, precision, graphs=True),
             CupyEvents, ("step", "epoch")),
            ("gpubp-cupy-unfused", "gpu",
             lambda: GpubpWorkload(config, plain_cupy_backend(), n_batches, precision),
             CupyEvents, ("forward", "step")),
            ("floor-cupy", "gpu", lambda: GemmFloor(config, cupy_backend, precision), CupyEvents,
             ("forward", "step")),
            ("floor-cupy-graph", "gpu",
             lambda: GemmFloor(config, cupy_backend, precision, graphs=True), CupyEvents,
             ("step",)),
        ]
    if torch_ok and _torch_cuda():
        params = lambda: GpubpWorkload(config, get_backend("numpy"), 1).model.get_params()  # noqa: E731
        out.append(("torch-cuda", "gpu",
                    lambda: TorchWorkload(config, "cuda", params(), n_batches, precision=precision),
                    TorchEvents, WORKLOADS))
        out.append(("torch-cuda-graph", "gpu",
                    lambda: TorchWorkload(config, "cuda", params(), n_batches, graph=True,
                                          precision=precision),
                    TorchEvents, ("step",)))
        out.append(("floor-torch-cuda", "gpu",
                    lambda: TorchGemmFloor(config, "cuda", precision), TorchEvents,
                    ("forward", "step")))
    else:
        reason = ("--no-torch" if not settings.use_torch else
                  "PyTorch is not installed" if torch_version() is None else
                  "PyTorch sees no CUDA device")
        out += [(s, reason) for s in ("torch-cuda", "torch-cuda-graph", "floor-torch-cuda")]
    return out


def _torch_cuda():
    import torch

    return torch.cuda.is_available()


def run(configs, backends=("numpy", "cupy"), settings=None, explicit=(), log=print,
        on_config=None):
    """Time every (config, backend) pair; returns the JSON-ready results.
    ``on_config(results)``, if given, is called after each config (so a run cut
    short still leaves what it measured); ``results["complete"]`` says whether
    every config was done."""
    settings = settings or Settings()
    results = {"meta": environment(), "settings": {"quick": settings.quick, "repeat": settings.repeat,
                                                    "budget_s": settings.budget_s,
                                                    "precision": settings.precision},
               "complete": False, "configs": {}, "measurements": [], "skipped": [], "ratios": {}}
    if settings.precision == "bf16":
        results["settings"]["torch_precision"] = TORCH_BF16
    for config in configs:
        results["configs"][config.name] = dict(config.to_dict(),
                                               epoch_batches=settings.n_batches(config))
        for backend in backends:
            for entry in plan(config, backend, settings, explicit):
                if len(entry) == 2:
                    results["skipped"].append({"config": config.name, "subject": entry[0],
                                               "reason": entry[1]})
                    continue
                subject, device, factory, clock, workloads = entry
                log(f"  {config.name}: {subject} ...")
                try:
                    work = factory()
                except Exception as exc:  # a peer that cannot run here is reported, not fatal
                    results["skipped"].append({"config": config.name, "subject": subject,
                                               "reason": f"{type(exc).__name__}: {exc}"})
                    _free_gpu()
                    continue
                if device == "cpu":
                    time.sleep(settings.settle_s)
                for workload in workloads:
                    try:
                        timing = measure(getattr(work, workload), clock(), repeat=settings.repeat,
                                         warmup=1 if workload == "epoch" else settings.warmup,
                                         budget_s=settings.budget_s)
                    except Exception as exc:  # one workload failing costs the run nothing else
                        reason = f"{workload} failed: {type(exc).__name__}: {exc}"
                        log(f"  {config.name}: {subject}: {reason}")
                        results["skipped"].append({"config": config.name, "subject": subject,
                                                   "workload": workload, "reason": reason})
                        _free_gpu()
                        continue
                    record = {"config": config.name, "subject": subject, "device": device,
                              "workload": workload, **timing.to_dict()}
                    if workload != "epoch":
                        record["tflops"] = config.flops(workload) / (timing.median_us * 1e6)
                    results["measurements"].append(record)
                del work
                _free_gpu()
        results["ratios"][config.name] = {
            w: ratios(results["measurements"], config.name, w) for w in WORKLOADS}
        if config is configs[-1]:
            results["complete"] = True
        if on_config is not None:
            on_config(results)
    results["complete"] = True
    return results


RATIOS = [  # (name, numerator subject, denominator subject): ratios of medians
    ("cupy_speedup_over_numpy", "gpubp-numpy", "gpubp-cupy"),
    ("cupy_over_torch_cuda", "gpubp-cupy", "torch-cuda"),
    ("cupy_over_torch_cuda_graph", "gpubp-cupy", "torch-cuda-graph"),
    ("cupy_over_floor", "gpubp-cupy", "floor-cupy"),
    ("graph_over_torch_cuda_graph", "gpubp-cupy-graph", "torch-cuda-graph"),
    ("graph_over_torch_cuda", "gpubp-cupy-graph", "torch-cuda"),
    ("graph_over_floor", "gpubp-cupy-graph", "floor-cupy"),
    ("graph_over_graph_floor", "gpubp-cupy-graph", "floor-cupy-graph"),
    ("fused_speedup_over_unfused", "gpubp-cupy-unfused", "gpubp-cupy"),
    ("numpy_over_torch_cpu", "gpubp-numpy", "torch-cpu"),
    ("loops_speedup_over_passes", "gpubp-numpy-passes", "gpubp-numpy"),
    ("numpy_over_floor", "gpubp-numpy", "floor-numpy"),
    ("torch_cuda_over_its_floor", "torch-cuda", "floor-torch-cuda"),
    ("torch_cpu_over_its_floor", "torch-cpu", "floor-torch-cpu"),
    ("cupy_floor_over_torch_floor", "floor-cupy", "floor-torch-cuda"),
    ("numpy_floor_over_torch_floor", "floor-numpy", "floor-torch-cpu"),
]


def ratios(measurements, config_name, workload):
    """Ratios of one workload's medians; a ratio whose subjects were not both timed is absent."""
    med = {m["subject"]: m["median_us"] for m in measurements
           if m["config"] == config_name and m["workload"] == workload}
    return {name: med[a] / med[b] for name, a, b in RATIOS if a in med and b in med}
