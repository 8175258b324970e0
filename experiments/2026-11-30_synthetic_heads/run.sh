#!/usr/bin/env bash
# One model on the three test sets of this experiment: the embedded skull-stripped test split
# (mni152), the full-head test split (mni152-heads: contrasts, resolutions and heads drawn with
# seeds apart from training), and the heads' skull-stripped twins (twins.py). Same settings as
# the main job's evaluation. Then: summarize.py.
#   bash experiments/2026-11-30_synthetic_heads/run.sh MODEL_DIR OUT
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/../.."
MODEL=${1:?model directory}
OUT=${2:?output folder}
PY=${PY:-.venv/bin/python}
export MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296
TWINS=${TWINS:-$OUT/../twins}
[ -f "$TWINS/dataset.json" ] || "$PY" "$HERE/twins.py" "$TWINS"
for set in mni152 mni152-heads twins; do
  data=$set; [ $set = twins ] && data=$TWINS
  [ -f "$OUT/$set/summary.json" ] && continue  # resumable
  "$PY" tools/evaluate.py --model="$MODEL" --data="$data" --split=test --overlap=0.25 \
    --batch=2 --output="$OUT/$set" 2>&1 | tail -n 16 > "$OUT.$set.txt"
done
