#!/usr/bin/env bash
# Recipe screen: each arm trains the quickstart config plus its flags (one seed, a reduced
# budget), is exported and evaluated on the 8 embedded test subjects by tools/evaluate.py
# (DDIM with the config's steps for diffusion arms). Resumable: a rerun continues training
# from the last checkpoint and skips finished exports and evaluations.
#   bash experiments/2026-11-30_recipe_screen/run.sh OUT CACHE ARM [ARM ...]
# ARM is name=flags (flags separated by spaces), see arms.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=$1; CACHE=$2; shift 2
PY=${PY:-.venv/bin/python}
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-1073741824}
export MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-4294967296}
mkdir -p "$OUT"
for arm in "$@"; do
  name=${arm%%=*}; flags=${arm#*=}
  W="$OUT/$name"
  mkdir -p "$W"
  if [ ! -f "$W/model/metadata.json" ]; then
    echo "$(date -u +%FT%T) train $name: $flags" | tee -a "$OUT/commands.log"
    start=$(date +%s)
    # shellcheck disable=SC2086
    "$PY" tools/train.py --config=configs/quickstart.py --workdir="$W" \
      --config.data.cache="$CACHE" $flags > "$W/train.log" 2>&1
    echo "$(( $(date +%s) - start ))" >> "$W/train_seconds.txt"
    "$PY" tools/export.py --workdir="$W" --output="$W/model" > "$W/export.log" 2>&1
  fi
  if [ ! -f "$W/eval/summary.json" ]; then
    echo "$(date -u +%FT%T) evaluate $name" | tee -a "$OUT/commands.log"
    start=$(date +%s)
    "$PY" tools/evaluate.py --model="$W/model" --data=mni152 --split=test --output="$W/eval" \
      --overlap=0.25 --batch=2 --seed=0 --worst=0 > "$W/eval.log" 2>&1
    echo "$(( $(date +%s) - start ))" > "$W/eval_seconds.txt"
  fi
  echo "$(date -u +%FT%T) done $name" | tee -a "$OUT/commands.log"
done
