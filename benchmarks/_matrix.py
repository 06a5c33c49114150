"""The benchmark matrix that pytest-benchmark runs, chosen by environment variables.

    pytest benchmarks/ --benchmark-only [--benchmark-json out.json]

GPUBP_BENCH_CONFIGS picks the configs (comma-separated names, default
"small,medium"; "large" runs on the CPU only when named here), and
GPUBP_BENCH_QUICK=1 takes few repetitions and a small epoch, and
GPUBP_BENCH_PRECISION=tf32|bf16 sets the precision of the matrix products. ``gpubp bench``
times the same workloads and adds the ratios and the table.
"""

import os

from gpubp.bench import CONFIGS, Settings

CONFIG_NAMES = [n.strip() for n in os.environ.get("GPUBP_BENCH_CONFIGS", "small,medium").split(",") if n.strip()]
SETTINGS = Settings(quick=os.environ.get("GPUBP_BENCH_QUICK", "") not in ("", "0"),
                    precision=os.environ.get("GPUBP_BENCH_PRECISION", "float32"))
CONFIGS_RUN = [CONFIGS[n] for n in CONFIG_NAMES]
