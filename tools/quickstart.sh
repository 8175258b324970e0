#!/usr/bin/env bash
# The main job, from a fresh clone: set up .venv; train the quickstart model on the embedded
# mni152 set (built once into $MSSEG_CACHE, default ~/.cache/msseg; preprocessed to 2 mm into
# $OUT/cache); export it to $OUT/model; segment the 8 test subjects with the exported model
# and score them (Dice, HD95, ASSD, volume similarity per label and tree level), printing the
# Dice table. Outputs in $OUT (default runs/quickstart): checkpoints/, metrics.jsonl,
# curves.png, config.json, model/, eval/ (metrics.csv, summary.json, plots, samples/).
# Extra arguments go to tools/train.py (e.g. --config.train.steps=100); a rerun resumes
# training where the last stopped (a finished run goes straight to export and evaluation).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(tools/setup.sh | tail -n 1)
OUT=${OUT:-runs/quickstart}
# glibc hands every buffer over 32 MB back to the OS, so each step page-faults its
# activations again; keep freed memory in the heap instead (WORKSPACE.md, Precision/Allocator).
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-1073741824}
export MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-4294967296}
"$PY" tools/train.py --config=configs/quickstart.py --workdir="$OUT" "$@"
"$PY" tools/export.py --workdir="$OUT" --output="$OUT/model"
"$PY" tools/evaluate.py --model="$OUT/model" --data=mni152 --split=test --output="$OUT/eval" \
  ${EVAL_ARGS:---overlap=0.25 --batch=2}
