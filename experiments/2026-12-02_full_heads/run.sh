#!/usr/bin/env bash
# The model trained without heads (the main job's config) and the full-head model
# (configs/quickstart_heads.py), each on the skull-stripped test split (mni152), the full-head
# test split (mni152-heads) and the full-head subjects skull-stripped with their true mask (the
# twins); strip-then-segment (evaluate.py --strip_model: the full-head model strips, the model
# without heads segments) on both splits, with the full-head model at 1400 steps (the first
# round) and at its config's 3000 (the second), opened by 6 or 12 mm; the 4 mm stripper alone and
# bounding the 2 mm one (the third); then Colin27 (a real full-head T1 from Debian's
# mricron-data, shown only) with each route; then the table (summarize.py). Resumable.
#   bash experiments/2026-12-02_full_heads/run.sh OUT
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/../.."
OUT=$(realpath -m "${1:?output folder}")
PY=${PY:-.venv/bin/python}
SRC=${SRC:-/usr/share/mricron/templates}  # where mricron-data puts ch2.nii.gz and ch2bet.nii.gz
export MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296
mkdir -p "$OUT/eval" "$OUT/real"

train() {  # NAME CONFIG [flags]
  [ -d "$OUT/$1/model" ] && return
  "$PY" tools/train.py --config="$2" --workdir="$OUT/$1" "${@:3}"
  "$PY" tools/export.py --workdir="$OUT/$1" --output="$OUT/$1/model"
}
ev() {  # NAME MODEL DATA [flags]
  [ -f "$OUT/eval/$1/summary.json" ] && return
  "$PY" tools/evaluate.py --model="$2" --data="$3" --split=test --overlap=0.25 --batch=2 \
    --output="$OUT/eval/$1" "${@:4}" 2>&1 | tail -n 16
}
real() {  # NAME sample.py flags
  local o="$OUT/real/$1"
  mkdir -p "$o/in" && cp "$SRC/ch2.nii.gz" "$SRC/ch2bet.nii.gz" "$o/in/"
  [ -f "$o/volumes.csv" ] ||
    "$PY" tools/sample.py --input="$o/in" --output="$o" --overlap=0.25 --batch=2 "${@:2}"
  "$PY" experiments/2026-11-30_synthetic_heads/real_scan.py "$o"
}

train base configs/quickstart.py
train heads configs/quickstart_heads.py --config.train.steps=1400  # the first round's
train heads3000 configs/quickstart_heads.py  # its default since the second round
train heads_4mm configs/quickstart_heads_4mm.py  # the third round's
TWINS="$OUT/twins"
[ -f "$TWINS/dataset.json" ] || "$PY" experiments/2026-11-30_synthetic_heads/twins.py "$TWINS"
B="$OUT/base/model" H="$OUT/heads/model" H3="$OUT/heads3000/model" H4="$OUT/heads_4mm/model"
ev base_stripped "$B" mni152
ev base_full "$B" mni152-heads
ev base_twins "$B" "$TWINS"
ev heads_stripped "$H" mni152
ev heads_full "$H" mni152-heads
ev heads_twins "$H" "$TWINS"
ev strip_stripped "$B" mni152 --strip_model="$H"
ev strip_full "$B" mni152-heads --strip_model="$H"
ev strip3000_stripped "$B" mni152 --strip_model="$H3"
ev strip3000_full "$B" mni152-heads --strip_model="$H3"
ev strip3000_o10_full "$B" mni152-heads --strip_model="$H3" --strip_open_mm=10
ev strip3000_o12_stripped "$B" mni152 --strip_model="$H3" --strip_open_mm=12
ev strip3000_o12_full "$B" mni152-heads --strip_model="$H3" --strip_open_mm=12
ev strip4mm_stripped "$B" mni152 --strip_model="$H4"
ev strip4mm_full "$B" mni152-heads --strip_model="$H4"
ev bound_stripped "$B" mni152 --strip_model="$H3" --strip_bound_model="$H4"
ev bound_full "$B" mni152-heads --strip_model="$H3" --strip_bound_model="$H4"
real quickstart --model="$B"
real heads --model="$H"
real strip --model="$B" --strip_model="$H"
real strip_3000 --model="$B" --strip_model="$H3"
real strip_3000_o12 --model="$B" --strip_model="$H3" --strip_open_mm=12
real strip_4mm --model="$B" --strip_model="$H4"
real strip_bound --model="$B" --strip_model="$H3" --strip_bound_model="$H4"
E="$OUT/eval"
"$PY" "$HERE/summarize.py" "without heads=$E/base_stripped" \
  "without heads, full head=-,$E/base_full,$E/base_twins" \
  "heads=$E/heads_stripped,$E/heads_full,$E/heads_twins" \
  "strip, then segment=$E/strip_stripped,$E/strip_full,$E/base_twins" \
  "stripper at 3000 steps, then segment=$E/strip3000_stripped,$E/strip3000_full,$E/base_twins" \
  "3000 steps, opened 12 mm=$E/strip3000_o12_stripped,$E/strip3000_o12_full,$E/base_twins" \
  "3000 steps, opened 10 mm=-,$E/strip3000_o10_full,$E/base_twins" \
  "4 mm stripper, then segment=$E/strip4mm_stripped,$E/strip4mm_full,$E/base_twins" \
  "2 mm stripper bounded by the 4 mm one, then segment=$E/bound_stripped,$E/bound_full,$E/base_twins"
