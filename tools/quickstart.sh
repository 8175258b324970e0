#!/usr/bin/env bash
# The main job, from a fresh clone: set up .venv, then train the quickstart model on the
# embedded mni152 set (built once into $MSSEG_CACHE, default ~/.cache/msseg; preprocessed to
# 2 mm into $OUT/cache) and print its validation Dice. Outputs go to $OUT (default
# runs/quickstart): checkpoints/, metrics.jsonl, curves.png, config.json. Extra arguments go
# to tools/train.py (e.g. --config.train.steps=100). A rerun resumes where the last stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(tools/setup.sh | tail -n 1)
OUT=${OUT:-runs/quickstart}
# glibc hands every buffer over 32 MB back to the OS, so each step page-faults its
# activations again; keep freed memory in the heap instead (WORKSPACE.md, Precision/Allocator).
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-1073741824}
export MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-4294967296}
"$PY" tools/train.py --config=configs/quickstart.py --workdir="$OUT" "$@"
