#!/usr/bin/env bash
# The runs behind the README's H100 table, in one call of the device tool:
#   run: bash benchmarks/readme_table.sh     (timeout_s 480; kind nvidia-h100-x1)
# 1. the GPU-critical tests (kernels against NumPy, graphs against eager, gpubp.cublas,
#    graphs with node priorities);
# 2. gpubp bench --backend cupy (every GPU config, 30 repeats) and the TF32 large run;
# 3. the kernel table (--kernels --quick) and where the large TF32 and narrow steps spend
#    their time (--profile).
# The open experiments are in benchmarks/experiments.sh, a call of their own before this one.
# Each phase has its own limit; what finished lands in $OUT whatever comes after.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpubp-readme-table}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
timeout -k 5 150 python3 -m pytest -q -rs -p no:cacheprovider -o faulthandler_timeout=60 \
    -k "not emulated" tests/test_kernels.py tests/test_trainer.py tests/test_cublas.py \
    tests/test_graphs.py 2>&1 \
    | tee "$OUT/tests_gpu.log" | grep -E "FAILED|ERROR|passed|failed" | tail -n 15
# If updates on a second stream failed their GPU test, the benchmark runs without them
# (and the code must then turn them off: the table is what main runs).
GPUBP=(python3 -m gpubp)
if grep -qE "FAILED.*test_updates_on_a_second_stream" "$OUT/tests_gpu.log"; then
    echo "updates beside the backward pass failed on the GPU: benchmarks run without them"
    GPUBP=(python3 -c "import sys; from gpubp.backends.cupy_backend import CupyBackend as C; \
C._OVERLAP_MIN_WEIGHTS = 1 << 62; from gpubp.__main__ import main; sys.exit(main())")
fi
timeout -k 5 170 "${GPUBP[@]}" bench --backend cupy --json "$OUT/h100.json" 2>"$OUT/bench.err" \
    | tee "$OUT/h100.txt"
timeout -k 5 60 "${GPUBP[@]}" bench --backend cupy --config large --precision tf32 \
    --json "$OUT/h100-large-tf32.json" 2>>"$OUT/bench.err" | tee "$OUT/h100-large-tf32.txt"
timeout -k 5 60 "${GPUBP[@]}" bench --kernels --quick --json "$OUT/kernels.json" 2>/dev/null \
    | tee "$OUT/kernels.txt"
timeout -k 5 40 "${GPUBP[@]}" bench --profile --backend cupy --config large --precision tf32 \
    --repeat 10 2>/dev/null | tee "$OUT/profile.txt"
timeout -k 5 30 "${GPUBP[@]}" bench --profile --backend cupy --config narrow --repeat 10 \
    2>/dev/null | tee -a "$OUT/profile.txt"
exit 0
