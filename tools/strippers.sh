#!/usr/bin/env bash
# The two strippers for full-head scans (README, "Real scans"), trained on the embedded mni152
# and mni152-heads sets and exported: configs/quickstart_heads.py into $OUT/heads (2 mm, the
# brain's boundary; --strip_model) and configs/quickstart_heads_4mm.py into $OUT/heads_4mm
# (4 mm, about the whole head in one window; --strip_bound_model). About 30 minutes on 2
# cores. Extra arguments go to both tools/train.py runs (e.g. --config.train.steps=100); a
# rerun resumes training where the last stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(tools/setup.sh | tail -n 1)
OUT=${OUT:-runs}
# as in quickstart.sh: keep freed memory in the heap (WORKSPACE.md, Precision/Allocator)
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-1073741824}
export MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-4294967296}
for name in heads heads_4mm; do
  "$PY" tools/train.py --config="configs/quickstart_$name.py" --workdir="$OUT/$name" "$@"
  "$PY" tools/export.py --workdir="$OUT/$name" --output="$OUT/$name/model"
done
