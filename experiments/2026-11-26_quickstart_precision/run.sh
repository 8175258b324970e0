#!/usr/bin/env bash
# The quickstart config trained twice from the same seed and data: mixed precision (bf16
# convolutions, the config's default) and fp32. Usage: run.sh OUT_DIR [CACHE]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/qs_precision}
CACHE=${2:-}
PY=${PY:-.venv/bin/python}
export MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296
for run in mixed fp32; do
  extra=()
  [ $run = fp32 ] && extra+=(--config.model.conv_dtype=float32)
  [ -n "$CACHE" ] && extra+=(--config.data.cache="$CACHE")
  /usr/bin/time -f "$run wall %e s" "$PY" tools/train.py --config=configs/quickstart.py \
    --workdir="$OUT/$run" "${extra[@]}" 2>&1 | grep -E "validation Dice|done|wall"
done
