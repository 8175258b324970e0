#!/usr/bin/env bash
# Partial-label arms at another seed (1600 steps): train (resumes from checkpoints), export,
# evaluate on the 8 test subjects; an arm whose evaluation exists is skipped.
# Usage: bash seeds.sh DATA OUT SEED ARM...   (DATA: make_data.py's folder, e.g. /tmp/pl1600/data;
# ARM: full, dropped, half_coarse_draw, half_coarse_w3, full_w3); then summarize.py OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
D=$1; OUT=$2; SEED=$3; shift 3
PY=${PY:-python}
export MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296
mkdir -p "$OUT/logs"
for arm in "$@"; do
  [ -f "$OUT/$arm/eval/summary.json" ] && continue
  case $arm in
    full) flags=(--config.data.spec=mni152) ;;
    dropped) flags=(--config.data.spec="$D/half_full") ;;
    half_coarse_draw) flags=(--config.data.spec="$D/half_full,$D/half_coarse"
      --config.diffusion.partial_noise=draw) ;;
    half_coarse_w3) flags=(--config.data.spec="$D/half_full,$D/half_coarse"
      --config.diffusion.partial_noise=draw "--config.data.pipeline.dataset_weights=(3,1)") ;;
    full_w3) flags=(--config.data.spec="$D/half_full,$D/other_full"
      --config.diffusion.partial_noise=draw "--config.data.pipeline.dataset_weights=(3,1)") ;;
    *) echo "unknown arm $arm" >&2; exit 2 ;;
  esac
  "$PY" tools/train.py --config=configs/quickstart.py --workdir="$OUT/$arm" \
    --config.data.val_fraction=0.0 --config.train.steps=1600 --config.seed="$SEED" \
    "${flags[@]}" >> "$OUT/logs/train_$arm.log" 2>&1
  "$PY" tools/export.py --workdir="$OUT/$arm" --output="$OUT/$arm/model"
  "$PY" tools/evaluate.py --model="$OUT/$arm/model" --data=mni152 --split=test \
    --output="$OUT/$arm/eval" --overlap=0.25 --batch=2
done
