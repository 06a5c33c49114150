"""The rows of the README's H100 table from the two saved runs of benchmarks/readme_table.sh.

    python benchmarks/readme_rows.py benchmarks/results/h100-DATE.json \
        benchmarks/results/h100-large-tf32-DATE.json

Prints the table (header included) as tests/test_readme.py checks it: every figure as
`gpubp bench` prints it, each target's ratio from the same medians. Paste it over the
README's table, and name the two files in tests/test_readme.py.
"""

import json
import sys
from pathlib import Path

from gpubp.bench.report import fmt

TARGETS = {("small", "float32"): ("torch-cuda-graph", 0.5, "PyTorch CUDA graph"),
           ("medium", "float32"): ("torch-cuda-graph", 0.8, "PyTorch CUDA graph"),
           ("large", "float32"): ("floor-cupy", 1.05, "GEMMs alone"),
           ("large", "tf32"): ("floor-cupy", 1.1, "GEMMs alone"),
           ("narrow", "float32"): ("torch-cuda", 0.65, "PyTorch eager")}
COLUMNS = ("gpubp-cupy", "gpubp-cupy-graph", "gpubp-cupy-unfused", "floor-cupy",
           "torch-cuda", "torch-cuda-graph", "floor-torch-cuda")

medians = {}
for path in sys.argv[1:]:
    data = json.loads(Path(path).read_text())
    precision = data["settings"]["precision"]
    medians[precision] = {(m["config"], m["subject"]): m["median_us"]
                          for m in data["measurements"] if m["workload"] == "step"}
print("| config | products | gpubp eager | gpubp graph | plain CuPy | its GEMMs alone | "
      "PyTorch eager | PyTorch CUDA graph | PyTorch's GEMMs | target | achieved |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for (config, precision), (peer, limit, name) in TARGETS.items():
    step = medians[precision]
    ratio = step[config, "gpubp-cupy-graph"] / step[config, peer]
    cells = [fmt(step[config, s]) for s in COLUMNS]
    print(f"| {config} | {precision} | {' | '.join(cells)} | ≤ {limit} × {name} | "
          f"{ratio:.3f}, {'met' if ratio <= limit else 'not met'} |")
