#!/usr/bin/env bash
# W1 side by side in one run: msseg (onednn fp32 / mixed bf16, slices2d fp32) and the PyTorch
# peers (lean fp32 / bf16, MONAI fp32), all under the same allocator setting, alternated.
# Usage: bash experiments/2026-11-26_w1_onednn/run.sh PEER_PYTHON OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
PEER=${1:-.peers-venv/bin/python}
OUT=${2:-/tmp/w1_onednn}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
bench() { "$PY" tools/benchmark.py --workload=w1 --repeats=5 "$@" 2>/dev/null | grep '^{'; }
for alloc in thresholds glibc; do
  if [ $alloc = thresholds ]; then
    export MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296
  else
    unset MALLOC_MMAP_THRESHOLD_ MALLOC_TRIM_THRESHOLD_
  fi
  bench --conv_impl=onednn --dtype=float32,mixed | sed "s/^/$alloc msseg /" | tee -a "$OUT/runs.txt"
  "$PEER" peers/w1.py --model=lean | sed "s/^/$alloc peer /" | tee -a "$OUT/runs.txt"
  "$PEER" peers/w1.py --model=lean --bf16 | sed "s/^/$alloc peer /" | tee -a "$OUT/runs.txt"
done
export MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296
bench --conv_impl=slices2d --dtype=float32 | sed "s/^/thresholds msseg /" | tee -a "$OUT/runs.txt"
"$PEER" peers/w1.py --model=monai | sed "s/^/thresholds peer /" | tee -a "$OUT/runs.txt"
