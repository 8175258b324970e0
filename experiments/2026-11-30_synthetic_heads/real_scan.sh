#!/usr/bin/env bash
# A real person's T1 (Colin27, one subject scanned 27 times and averaged, 1 mm; Debian's
# mricron-data package ships it full-head as ch2.nii.gz and brain-extracted as ch2bet.nii.gz)
# segmented by a model as a user would (sample.py, the model's own sampler settings); then
# the brain masks' agreement with ch2bet's brain and the brain volumes (real_scan.py).
# Shown only: the scan trains and tunes nothing.
#   apt-get install mricron-data
#   bash experiments/2026-11-30_synthetic_heads/real_scan.sh MODEL_DIR OUT
set -euo pipefail
SRC=${SRC:-/usr/share/mricron/templates}  # where mricron-data puts the scans
MODEL=$(realpath "${1:?model directory}") OUT=${2:?output folder}
mkdir -p "$OUT/in" && OUT=$(realpath "$OUT")
cp "$SRC/ch2.nii.gz" "$SRC/ch2bet.nii.gz" "$OUT/in/"
cd "$(dirname "$0")/../.."
export MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296
"${PY:-.venv/bin/python}" tools/sample.py --model="$MODEL" --input="$OUT/in" --output="$OUT" \
  --overlap=0.25 --batch=2
"${PY:-.venv/bin/python}" experiments/2026-11-30_synthetic_heads/real_scan.py "$OUT" \
  | tee "$OUT/real_scan.txt"
