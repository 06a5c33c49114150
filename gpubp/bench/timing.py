"""Timing done right: warm-up first, device time measured with events (or a
host clock around a synchronised call on the CPU), many repetitions, median."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

# (p90 - p10) / median above this marks a timing as noisy.
NOISY_SPREAD = 0.2


@dataclass
class Timing:
    samples_us: list

    @property
    def median_us(self):
        return statistics.median(self.samples_us)

    @property
    def min_us(self):
        return min(self.samples_us)

    @property
    def max_us(self):
        return max(self.samples_us)

    @property
    def spread(self):
        """(p90 - p10) / median, the deciles interpolated between samples: with
        few samples (``--quick``'s 5) one outlier moves them only in part, where
        picking samples by index would give (max - min)."""
        if len(self.samples_us) < 2:
            return 0.0
        deciles = statistics.quantiles(self.samples_us, n=10, method="inclusive")
        return (deciles[8] - deciles[0]) / self.median_us

    @property
    def noisy(self):
        return len(self.samples_us) >= 3 and self.spread > NOISY_SPREAD

    def to_dict(self):
        return {"median_us": self.median_us, "min_us": self.min_us, "max_us": self.max_us,
                "spread": self.spread, "noisy": self.noisy, "repeats": len(self.samples_us)}


class HostClock:
    """CPU work: a monotonic host clock around each call."""

    def time(self, fn):
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e6

    def sync(self):
        pass


class CupyEvents:
    """GPU work through CuPy: events recorded on the current stream around each
    call, so launch gaps count and nothing but the call is timed."""

    def __init__(self):
        import cupy

        self._cupy = cupy
        self._start = cupy.cuda.Event()
        self._end = cupy.cuda.Event()

    def time(self, fn):
        self._start.record()
        fn()
        self._end.record()
        self._end.synchronize()
        return self._cupy.cuda.get_elapsed_time(self._start, self._end) * 1e3

    def sync(self):
        self._cupy.cuda.get_current_stream().synchronize()


class TorchEvents:
    """GPU work through PyTorch: CUDA events on its current stream."""

    def __init__(self):
        import torch

        self._torch = torch
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def time(self, fn):
        self._start.record()
        fn()
        self._end.record()
        self._end.synchronize()
        return self._start.elapsed_time(self._end) * 1e3

    def sync(self):
        self._torch.cuda.synchronize()


def measure(fn, clock, repeat=30, warmup=3, budget_s=10.0, min_repeat=3):
    """Median-ready samples of ``fn``: ``warmup`` untimed calls (compilation,
    handles, memory pools), then up to ``repeat`` timed ones, fewer when they
    would pass ``budget_s`` (but at least ``min_repeat``)."""
    for _ in range(warmup):
        fn()
    clock.sync()
    samples = []
    start = time.perf_counter()
    while len(samples) < repeat:
        samples.append(clock.time(fn))
        if len(samples) >= min_repeat and time.perf_counter() - start > budget_s:
            break
    return Timing(samples)
