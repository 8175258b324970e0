#!/usr/bin/env bash
# Strip, then segment: a full-head model (STRIPPER) segments the mni152-heads test subjects;
# its brain (label > 0, holes filled) strips them (strip.py); the skull-stripped model
# (SEGMENTER) is scored on the stripped images, as on the twins stripped with the true mask.
#   bash experiments/2026-12-01_strip_then_segment/run.sh STRIPPER SEGMENTER OUT
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/../.."
STRIPPER=${1:?full-head model directory}
SEGMENTER=${2:?skull-stripped model directory}
OUT=${3:?output folder}
PY=${PY:-.venv/bin/python}
export MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296
SRC=$("$PY" -c "from msseg.data import mni152; print(mni152.build(mni152.EMBEDDED['mni152-heads']))")
mkdir -p "$OUT"
[ -f "$OUT/stripper_seg/volumes.csv" ] ||
  "$PY" tools/sample.py --model="$STRIPPER" --input="$SRC/imagesTs" --output="$OUT/stripper_seg" \
    --overlap=0.25 --batch=2 2>&1 | grep "sample" | tail -n 3
[ -f "$OUT/stripped/dataset.json" ] || "$PY" "$HERE/strip.py" "$OUT/stripper_seg" "$OUT/stripped"
[ -f "$OUT/eval/summary.json" ] ||
  "$PY" tools/evaluate.py --model="$SEGMENTER" --data="$OUT/stripped" --split=test \
    --overlap=0.25 --batch=2 --output="$OUT/eval" 2>&1 | tail -n 16 >"$OUT/eval.txt"
cat "$OUT/eval.txt"
