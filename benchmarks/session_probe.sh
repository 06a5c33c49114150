#!/usr/bin/env bash
# One device call of 2026-11-26 (fifth session): the packed kernels checked on the GPU,
# then timed; where the large and narrow steps spend their time; whether Adam overlaps
# the backward GEMMs. Phases have their own limits; everything lands in $OUT.
#   run: bash benchmarks/session_probe.sh   (timeout_s 420)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpubp-probe}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
git log --oneline -1 | tee -a "$OUT/gpu.txt"
timeout -k 5 100 python3 -m pytest -q -x -rs -p no:cacheprovider -o faulthandler_timeout=60 \
    -k "not emulated" tests/test_kernels.py tests/test_trainer.py tests/test_cublas.py 2>&1 \
    | tee "$OUT/tests_gpu.log" | grep -E "FAILED|ERROR|passed|failed" | tail -n 15
timeout -k 5 70 python3 -m gpubp bench --kernels --quick --json "$OUT/kernels.json" 2>/dev/null \
    | tee "$OUT/kernels.txt"
timeout -k 5 40 python3 -m gpubp bench --profile --backend cupy --config large --precision tf32 \
    --repeat 10 --json "$OUT/profile-large-tf32.json" 2>/dev/null | tee "$OUT/profile.txt"
timeout -k 5 40 python3 -m gpubp bench --profile --backend cupy --config narrow --config large \
    --repeat 10 --json "$OUT/profile-fp32.json" 2>/dev/null | tee -a "$OUT/profile.txt"
for p in tf32 float32; do
    timeout -k 5 40 python3 benchmarks/overlap_probe.py --precision $p 2>&1 | tee -a "$OUT/overlap.txt"
done
timeout -k 5 80 python3 -m gpubp bench --backend cupy --config large --precision tf32 --repeat 20 \
    --json "$OUT/bench-large-tf32.json" 2>/dev/null | tee "$OUT/bench.txt"
timeout -k 5 80 python3 -m gpubp bench --backend cupy --config narrow --config large --repeat 20 \
    --json "$OUT/bench-narrow-large.json" 2>/dev/null | tee -a "$OUT/bench.txt"
exit 0
