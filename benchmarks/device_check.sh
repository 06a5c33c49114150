#!/usr/bin/env bash
# Everything a session with a lent GPU machine checks, in one call of the device tool:
#   run: bash benchmarks/device_check.sh            (timeout_s 540; the phases below stop by 520 s, so that
#   15 minutes of device time leave room for a second, shorter call)
# 0. preflight: the GPU, the versions, whether the CuPy backend and gpubp.cublas work
#    (if not, every GPU test would skip and the run would look green: it fails instead);
# 1. the GPU-critical tests, verbose, slowest listed (cuBLAS binding, graphs vs eager, kernels);
# 2. the rest of the suite;
# 3. each fused kernel against the plain CuPy it replaces (gpubp bench --kernels --quick);
# 4. the benchmark, quick unless BENCH_ARGS says otherwise (e.g. BENCH_ARGS="" for the full one);
#    its JSON is rewritten after each config, so a run cut short keeps what it measured.
# Each phase has its own time limit, and a test that hangs has every thread's stack dumped
# into the log (faulthandler_timeout), so whatever finished still comes back in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpubp-device-check}"
mkdir -p "$OUT"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/gpu.txt"
timeout -k 5 60 python3 - <<'EOF' 2>&1 | tee -a "$OUT/gpu.txt"
import sys
import numpy
import gpubp
print("python", sys.version.split()[0], "numpy", numpy.__version__)
try:
    import cupy
    print("cupy", cupy.__version__, "runtime", cupy.cuda.runtime.runtimeGetVersion(),
          "driver", cupy.cuda.runtime.driverGetVersion())
except Exception as exc:
    print("cupy unusable:", exc)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.cuda.is_available())
except Exception as exc:
    print("torch unusable:", exc)
print("backends", gpubp.available_backends())
backend = gpubp.get_backend("cupy")          # raises, with the reason, where it cannot work
gemm = backend._direct_gemm()
print("gpubp.cublas", "ok" if gemm is not None else f"unusable: {backend.gemm_problem}")
sys.exit(0 if gemm is not None else 3)
EOF
pre_rc=${PIPESTATUS[0]}

# The emulated tests (the GPU path on the CPU) are CI's: here they would only take time.
PT=(-rs -p no:cacheprovider -o faulthandler_timeout=90 --durations=10 -k "not emulated")
GPU_TESTS=(tests/test_cublas.py tests/test_trainer.py tests/test_kernels.py)
timeout -k 10 180 python3 -m pytest -v "${PT[@]}" "${GPU_TESTS[@]}" 2>&1 \
    | tee "$OUT/tests_gpu.log" | grep -E "FAILED|ERROR|passed|failed|Timeout|slowest" | tail -n 40
gpu_rc=${PIPESTATUS[0]}
ignores=()
for t in "${GPU_TESTS[@]}"; do ignores+=(--ignore="$t"); done
timeout -k 10 90 python3 -m pytest -q "${PT[@]}" tests "${ignores[@]}" 2>&1 \
    | tee "$OUT/tests.log" | tail -n 15
tests_rc=${PIPESTATUS[0]}

timeout -k 10 50 python3 -m gpubp bench --kernels --quick --json "$OUT/kernels.json" \
    2>&1 | tee "$OUT/kernels.txt" | grep -v "^  kernel .* \.\.\.$"
kernels_rc=${PIPESTATUS[0]}

# At most 8 files come back: no PNG (the JSON holds every figure).
# shellcheck disable=SC2086
timeout -k 10 130 python3 -m gpubp bench ${BENCH_ARGS---quick} --json "$OUT/bench.json" \
    2>"$OUT/bench.err" | tee "$OUT/bench.txt"
bench_rc=${PIPESTATUS[0]}
[ "$bench_rc" -ne 0 ] && tail -n 30 "$OUT/bench.err"
echo "preflight rc=$pre_rc gpu tests rc=$gpu_rc other tests rc=$tests_rc kernels rc=$kernels_rc" \
     "bench rc=$bench_rc (124: its time ran out)"
# Never exit 124 (the device tool would read a timeout of the whole call).
exit $(( pre_rc || gpu_rc || tests_rc || kernels_rc || bench_rc ))
