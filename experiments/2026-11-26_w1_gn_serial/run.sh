#!/usr/bin/env bash
# W1 before/after the GroupNorm rewrite and the serialised oneDNN calls, next to the PyTorch
# peers, alternated in one run under the launchers' allocator setting.
# Usage: bash experiments/2026-11-26_w1_gn_serial/run.sh PEER_PYTHON BEFORE_TREE OUT_DIR
#   BEFORE_TREE: a checkout of 933e571 with its own built msseg/models/_onednn_ffi*.so
#   (git worktree add BEFORE_TREE 933e571, then build csrc/onednn_conv.cc there).
set -euo pipefail
cd "$(dirname "$0")/../.."
PEER=${1:-.peers-venv/bin/python}
BEFORE=${2:-/tmp/w1_before}
OUT=${3:-/tmp/w1_gn_serial}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
export MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296
bench() { "$PY" "$1/tools/benchmark.py" --workload=w1 --repeats=5 --conv_impl=onednn \
  --dtype=float32,mixed 2>/dev/null | grep '^{'; }
for rep in 1 2; do
  (cd "$BEFORE" && PYTHONPATH="$BEFORE" bench "$BEFORE") | sed "s/^/before /" | tee -a "$OUT/runs.txt"
  bench . | sed "s/^/after /" | tee -a "$OUT/runs.txt"
  "$PEER" peers/w1.py --model=lean | sed "s/^/peer /" | tee -a "$OUT/runs.txt"
  "$PEER" peers/w1.py --model=lean --bf16 | sed "s/^/peer /" | tee -a "$OUT/runs.txt"
done
"$PEER" peers/w1.py --model=monai | sed "s/^/peer /" | tee -a "$OUT/runs.txt"
"$PEER" peers/w1.py --model=monai --bf16 | sed "s/^/peer /" | tee -a "$OUT/runs.txt"
