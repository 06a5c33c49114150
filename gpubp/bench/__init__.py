"""gpubp's benchmark suite: the same training work on the NumPy and CuPy
backends, beside PyTorch and the GEMM floor, with ratios.

Run it as ``gpubp bench`` (a table; ``--json``, ``--plot``) or under
pytest-benchmark from ``benchmarks/``; both time the same workloads.
"""

from .configs import CONFIGS, DEFAULT_CONFIGS, Config, custom_config
from .run import Settings, run

__all__ = ["CONFIGS", "DEFAULT_CONFIGS", "Config", "custom_config", "Settings", "run"]
