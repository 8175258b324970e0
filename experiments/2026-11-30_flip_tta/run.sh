#!/usr/bin/env bash
# Flip TTA against none on the embedded test split, with the main job's model (the quickstart
# model of a fresh clone), same seed, both arms in one run; then the paired per-case summary.
#   bash experiments/2026-11-30_flip_tta/run.sh MODEL_DIR OUT
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${1:?model directory}
OUT=${2:?output folder}
PY=${PY:-.venv/bin/python}
export MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296
for tta in none flip; do
  "$PY" tools/evaluate.py --model="$MODEL" --data=mni152 --split=test --overlap=0.25 --batch=2 \
    --tta=$tta --output="$OUT/$tta" 2>&1 | tail -n 16 > "$OUT.$tta.txt"
done
"$PY" experiments/2026-11-30_flip_tta/summarize.py "$OUT/none" "$OUT/flip" | tee "$(dirname "$0")/results.md"
