"""The benchmark matrix under pytest-benchmark: every (config, subject,
workload) that ``gpubp bench`` times, one test each. pytest-benchmark's own
clock times each call, the device synchronised inside it (not CUDA events),
after the same idle time as ``gpubp bench`` before each CPU subject; no ratios."""

import time

import pytest

from _matrix import CONFIG_NAMES, CONFIGS_RUN, SETTINGS
from gpubp.bench.run import plan
from gpubp.bench.timing import HostClock


def _cases():
    for config in CONFIGS_RUN:
        for backend in ("numpy", "cupy"):
            for entry in plan(config, backend, SETTINGS, explicit=set(CONFIG_NAMES)):
                if len(entry) == 2:
                    yield pytest.param(config, entry[0], None, None, None, entry[1],
                                       id=f"{config.name}-{entry[0]}")
                    continue
                subject, device, factory, clock, workloads = entry
                for workload in workloads:
                    yield pytest.param(config, subject, factory, clock, workload, None,
                                       id=f"{config.name}-{subject}-{workload}")


@pytest.mark.parametrize("config,subject,factory,clock,workload,skip_reason", list(_cases()))
def test_benchmark(benchmark, config, subject, factory, clock, workload, skip_reason):
    if skip_reason:
        pytest.skip(skip_reason)
    work = factory()
    fn = getattr(work, workload)
    timer = clock()

    def call():  # device work finishes inside the timed call
        fn()
        timer.sync()

    benchmark.extra_info.update(config=config.name, subject=subject, workload=workload,
                                layers=list(config.layers), batch=config.batch)
    if workload != "epoch":
        benchmark.extra_info["gemm_flops"] = config.flops(workload)
    if clock is HostClock:          # the CPU: let the last test's BLAS threads stop spinning
        time.sleep(SETTINGS.settle_s)
    benchmark.pedantic(call, rounds=SETTINGS.repeat, iterations=1,
                       warmup_rounds=1 if workload == "epoch" else SETTINGS.warmup)
