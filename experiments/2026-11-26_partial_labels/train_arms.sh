#!/usr/bin/env bash
# Train the three arms of the partial-label experiment (same config, seed and steps).
# Usage: bash train_arms.sh OUT [extra tools/train.py flags]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=$1; shift
PY=${PY:-python}
export MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296
"$PY" experiments/2026-11-26_partial_labels/make_data.py "$OUT/data"
declare -A SPEC=(
  [full]=mni152
  [half_coarse]="$OUT/data/half_full,$OUT/data/half_coarse"
  [dropped]="$OUT/data/half_full"
)
for arm in full half_coarse dropped; do
  "$PY" tools/train.py --config=configs/quickstart.py --workdir="$OUT/$arm" \
    --config.data.spec="${SPEC[$arm]}" --config.data.val_fraction=0.0 "$@"
done
