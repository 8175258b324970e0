#!/usr/bin/env bash
# DPM-Solver++(2M) against DDIM with one model on the embedded test split, the main job's
# evaluation settings (overlap 0.25, batch 2); resumable. Then: summarize.py OUT.
#   bash experiments/2026-12-01_dpm_solver/run.sh MODEL OUT
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${1:?model directory}
OUT=${2:?output folder}
PY=${PY:-.venv/bin/python}
export MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296
for v in "ddim 5" "dpmpp2m 5" "ddim 10" "dpmpp2m 10" "dpmpp2m 3"; do
  set -- $v
  [ -f "$OUT/$1-$2/summary.json" ] && continue
  "$PY" tools/evaluate.py --model="$MODEL" --data=mni152 --split=test --overlap=0.25 \
    --batch=2 --sampler="$1" --steps="$2" --output="$OUT/$1-$2" >"$OUT/$1-$2.log" 2>&1
done
