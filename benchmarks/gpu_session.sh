#!/usr/bin/env bash
# The next GPU session in one call of the device tool (benchmarks/NOTES.md, "The seventh
# session"): a machine stays warm 30 s after a call, too little to read one call's results
# and start the next, and each start costs device time. So, in one command:
#   run: bash benchmarks/gpu_session.sh     (timeout_s 600; kind nvidia-h100-x1; at most 575 s)
# 1. choose_settings.py chooses CupyBackend's settings under trial (large's step) by its
#    fixed rules (at most 200 s);
# 2. readme_table.sh runs the GPU tests and the README's runs under them (falling back to
#    main's settings where a test fails under them and passes under main's);
# 3. in whatever time is left, large TF32's step profiled under both settings on trial
#    (unless the table ran with them), then the overlap probe (TF32).
# Everything lands in $OUT/session.tar.gz (the device tool brings back 8 files at most),
# bundled again after each phase and every 15 s; the choice and the table also as plain
# text beside it.
# Then, here: write the settings the table ran with ($OUT/table/gpu.txt says which) into
# CupyBackend, copy the runs into benchmarks/results/, and remake the README's table
# (benchmarks/readme_rows.py).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpubp-session}"
WORK="${WORK:-$(mktemp -d)}"
DEADLINE=$(( $(date +%s) + ${BUDGET:-560} ))
mkdir -p "$OUT" "$WORK/table"
bundle() {      # $WORK as $OUT/session.tar.gz, written aside and renamed: a kill mid-tar
    local part="$OUT/session.tar.gz.$BASHPID.part"     # leaves the last whole bundle
    tar -czf "$part" -C "$WORK" . 2>/dev/null
    if (( $? <= 1 )); then          # 1: a file changed as it was read (a log still growing)
        mv -f "$part" "$OUT/session.tar.gz"
    else
        rm -f "$part"
    fi
}
left() { echo $(( DEADLINE - $(date +%s) )); }
# Also every BUNDLE_EVERY seconds, so that a run cut short by the device tool (its limit
# may be less than 600 s where less device time is left) still brings back what it made.
bundle_every() {
    local nap=
    trap 'kill $nap 2>/dev/null; exit 0' TERM
    while kill -0 $$ 2>/dev/null; do
        sleep "${BUNDLE_EVERY:-15}" & nap=$!
        wait "$nap"
        bundle
    done
}
bundle_every >/dev/null 2>&1 &
BUNDLER=$!

timeout -k 5 200 python3 benchmarks/choose_settings.py --out "$WORK/settings.txt" \
    --json "$WORK/choice.json" 2>&1 | tee "$WORK/choice.txt"
SETTINGS="$(cat "$WORK/settings.txt" 2>/dev/null || true)"
cp "$WORK/choice.txt" "$OUT/"
bundle

OUT="$WORK/table" SETTINGS="$SETTINGS" DEADLINE=$(( DEADLINE - 45 )) bash benchmarks/readme_table.sh
cp "$WORK/table/gpu.txt" "$WORK/table/h100.txt" "$WORK/table/h100-large-tf32.txt" "$OUT/" 2>/dev/null
bundle

# The settings under trial, both on, large TF32's step operation by operation, whatever
# was chosen: each figure against its prediction (benchmarks/NOTES.md, "The twelfth session").
TRIAL="_OUTPUT_FUSED=1,_FIRST_SLABS=4"
if (( $(left) > 60 )) && ! grep -qx "the table runs with: $TRIAL" "$WORK/table/gpu.txt"; then
    timeout -k 5 45 python3 benchmarks/with_settings.py "$TRIAL" gpubp bench --profile \
        --backend cupy --config large --precision tf32 --repeat 10 2>&1 | tee "$WORK/profile-trial.txt"
    bundle
fi
if (( $(left) > 30 )); then
    timeout -k 5 $(( $(left) - 10 )) python3 benchmarks/overlap_probe.py --precision tf32 \
        --reserve 8,16,32 2>&1 | tee "$WORK/probe.txt"
fi
kill "$BUNDLER" 2>/dev/null
wait "$BUNDLER" 2>/dev/null
rm -f "$OUT"/session.tar.gz.*.part                 # one the loop was writing when stopped
bundle
ls -l "$OUT"
exit 0
