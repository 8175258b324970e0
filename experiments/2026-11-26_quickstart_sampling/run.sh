#!/usr/bin/env bash
# Sampling throughput of the quickstart model (the README's main job trains and exports it).
# Usage: bash experiments/2026-11-26_quickstart_sampling/run.sh MODEL_DIR OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${1:-runs/quickstart/model}
OUT=${2:-/tmp/qs_sampling}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
export MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296
B="$PY tools/benchmark.py --model=$MODEL --batch=2"
# DDIM-10, ensembles 1 and 4, one window (48³) and a whole head (96³ at 2 mm, 27 windows)
$B --samplers=ddim --steps=10 --ensembles=1,4 --sizes=48,96 --repeats=1 --output="$OUT/ddim.json"
# DDPM-1000, one window
$B --samplers=ddpm --ensembles=1 --sizes=48 --repeats=1 --output="$OUT/ddpm.json"
# the exported artifact (portable XLA convolutions) against the local oneDNN route, one window
$B --samplers=ddim --steps=10 --ensembles=1 --sizes=48 --repeats=2 --compare=exported \
  --output="$OUT/compare.json"
