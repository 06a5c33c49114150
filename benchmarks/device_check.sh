#!/usr/bin/env bash
# Everything a session with a lent GPU machine checks, in one call of the device tool:
#   run: bash benchmarks/device_check.sh            (timeout_s about 540)
# 1. the GPU's name and driver; 2. the whole test suite with the CuPy tests enabled;
# 3. the benchmark, quick unless BENCH_ARGS says otherwise (e.g. BENCH_ARGS="" for the full one).
# Logs, the benchmark's JSON (and PNG where matplotlib is installed) land in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpubp-device-check}"
mkdir -p "$OUT"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import cupy, numpy, sys; print('python', sys.version.split()[0], 'cupy', cupy.__version__, 'numpy', numpy.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"

python3 -m pytest -q -rs tests 2>&1 | tee "$OUT/tests.log" | tail -n 25
tests_rc=${PIPESTATUS[0]}

plot=()
python3 -c "import matplotlib" 2>/dev/null && plot=(--plot "$OUT/bench.png")
# shellcheck disable=SC2086
python3 -m gpubp bench ${BENCH_ARGS---quick} --json "$OUT/bench.json" "${plot[@]}" 2>"$OUT/bench.err" | tee "$OUT/bench.txt"
bench_rc=${PIPESTATUS[0]}
echo "tests rc=$tests_rc bench rc=$bench_rc"
exit $(( tests_rc || bench_rc ))
