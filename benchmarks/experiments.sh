#!/usr/bin/env bash
# The open experiments of benchmarks/NOTES.md ("The next session with a GPU"), in one call of
# the device tool, before benchmarks/readme_table.sh:
#   run: bash benchmarks/experiments.sh      (timeout_s 480; kind nvidia-h100-x1; about 210 s, at most 455)
# 1. Adam beside the backward GEMMs with the GEMMs made for k SMs fewer (overlap_probe.py),
#    TF32 and float32;
# 2. the large graph step with CupyBackend._BESIDE_SMS = k, _BACKWARD_BESIDE (the backward
#    pass's per-element work beside its GEMMs) and _STEP_PRIORITY (the step's kernels before
#    the work beside them, kept in the graph), beside the floor, TF32 and float32;
# 3. the packed column sums on a block row per 32 rows against 256 (_BG_BLOCK_ROWS), small and
#    TF32 large.
# Each phase has its own limit; what finished lands in $OUT/experiments.txt whatever comes after.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpubp-experiments}"
mkdir -p "$OUT"
LOG="$OUT/experiments.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$LOG"
phase() {       # phase SECONDS COMMAND...: echo it, run it under a limit, keep its output
    local limit=$1
    shift
    echo "# $*" | tee -a "$LOG"
    timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$LOG"
}
phase 60 python3 benchmarks/overlap_probe.py --precision tf32 --reserve 4,8,16,32
phase 60 python3 benchmarks/overlap_probe.py --precision float32 --reserve 8,16,32
phase 150 python3 benchmarks/knob_sweep.py --config large --precision tf32 --variant "" \
    --variant _BESIDE_SMS=8 --variant _BESIDE_SMS=16 --variant _BESIDE_SMS=32 \
    --variant _BACKWARD_BESIDE=1 --variant _BESIDE_SMS=8,_BACKWARD_BESIDE=1 \
    --variant _BESIDE_SMS=16,_BACKWARD_BESIDE=1 --variant _STEP_PRIORITY=1 \
    --variant _BESIDE_SMS=16,_STEP_PRIORITY=1 --variant _BESIDE_SMS=16,_BACKWARD_BESIDE=1,_STEP_PRIORITY=1
phase 90 python3 benchmarks/knob_sweep.py --config large --precision float32 --variant "" \
    --variant _BESIDE_SMS=4 --variant _BESIDE_SMS=16 --variant _BACKWARD_BESIDE=1 \
    --variant _STEP_PRIORITY=1
phase 30 python3 benchmarks/knob_sweep.py --config small --precision float32 --repeat 50 \
    --variant "" --variant _BG_BLOCK_ROWS=32
phase 60 python3 benchmarks/knob_sweep.py --config large --precision tf32 \
    --variant "" --variant _BG_BLOCK_ROWS=32
exit 0
