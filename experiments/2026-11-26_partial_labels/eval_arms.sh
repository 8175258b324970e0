#!/usr/bin/env bash
# Export each arm's final checkpoint and segment + score the 8 mni152 test subjects with it
# (DDIM-10, window overlap 0.25, as the main job), then collect results.json.
# Usage: bash eval_arms.sh OUT [TAG]  (TAG: results_TAG.json, dice_per_level_TAG.png)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=$1
PY=${PY:-python}
export MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296
for arm in full half_coarse dropped half_coarse_masked half_coarse_dice half_coarse_draw \
    half_coarse_w3; do
  [ -d "$OUT/$arm/checkpoints" ] || continue
  "$PY" tools/export.py --workdir="$OUT/$arm" --output="$OUT/$arm/model"
  "$PY" tools/evaluate.py --model="$OUT/$arm/model" --data=mni152 --split=test \
    --output="$OUT/$arm/eval" --overlap=0.25 --batch=2
done
"$PY" experiments/2026-11-26_partial_labels/summarize.py "$OUT" ${2:-}
