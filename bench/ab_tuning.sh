#!/usr/bin/env bash
# End-to-end A/B of step-kernel tuning files: bench/bench_step.py's ZO rows once per tuning file
# (ZO_STEP_TUNING), in one process each, on the same GPU, back to back.
#
#   bash bench/ab_tuning.sh "a.json b.json" "--sizes large --probes 12 --sections zo"
#
# A kernel sweep times one step kernel alone; a tuning can still lose end to end (e.g. a smaller
# unit tile BD makes the per-pass weight re-tiling dearer), so a new entry is adopted only after this.
# Logs and results go under $OUT (default bench/results/session), one bench_step_*.md per file.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/session}
TUNINGS=${1:?tuning files, space separated}
ARGS=${2:---sizes large --probes 12 --sections zo}
mkdir -p "$OUT"
for t in $TUNINGS; do
    [ -s "$t" ] || { echo "no tuning file $t" >&2; exit 2; }
    echo "[ab] $t"
    # shellcheck disable=SC2086
    ZO_STEP_TUNING="$t" python3 bench/bench_step.py $ARGS --out "$OUT" > "$OUT/ab_$(basename "$t" .json).log" 2>&1
    echo "[ab] $t rc=$?"
    grep -h "^| [a-z]" "$(ls -t "$OUT"/bench_step_*.md | head -1)" | grep -v "^| size\|^| target" | head -8
done
