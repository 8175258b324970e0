#!/usr/bin/env bash
# The main job, from a fresh clone: set up .venv, build the embedded mni152 set, preprocess it
# to 2 mm and print its summary. Outputs go to $OUT (default runs/quickstart); the embedded
# NIfTI set is cached in $MSSEG_CACHE (default ~/.cache/msseg).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(tools/setup.sh | tail -n 1)
OUT=${OUT:-runs/quickstart}
"$PY" tools/preprocess.py --data=mni152 --output="$OUT/cache" "$@"
