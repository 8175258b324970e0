#!/usr/bin/env bash
# The same workloads as run_gpu.sh compiled on this CPU without running (--repeats=0): the
# FLOPs of each pass (XLA's cost analysis; the H200 run's analysis counted none) and the CPU
# compiler's memory per device, for the aseg_1mm train step the GPU run did not reach.
set -euo pipefail
cd "$(dirname "$0")/../.."
E=experiments/2026-12-01_gpu_h200
PY=${PY:-.venv/bin/python}
B="$PY tools/benchmark.py --repeats=0 --conv_impl=xla"
$B --workload=configs/mni_2mm.py,configs/aseg_1mm.py --output=$E/results/cpu_train.json
$B --workload=configs/mni_2mm.py --patch=96,112,96 --patch_batch=1 --passes=forward \
  --output=$E/results/cpu_volume_2mm.json
$B --workload=configs/aseg_1mm.py --patch=256 --patch_batch=1 --passes=forward \
  --output=$E/results/cpu_volume_1mm.json
