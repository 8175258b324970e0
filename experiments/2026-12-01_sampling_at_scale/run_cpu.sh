#!/bin/bash
# The compiled sampling chain's memory per device by mesh, on 8 fake CPU devices (XLA's
# memory analysis of the compiled call; nothing run): the whole 1 mm head of aseg_1mm in one
# window split over space = 1, 2, 4, 8 devices, and mni_2mm's 96^3 windows over 1-8 devices.
set -e
cd "$(dirname "$0")/../.."
out=experiments/2026-12-01_sampling_at_scale/results
export XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu
python tools/benchmark.py --config=configs/aseg_1mm.py --sizes=256 --window=whole \
  --devices=1 --space=1,2,4,8 --steps=5 --compile_only --output=$out/aseg_1mm_whole_space.json
python tools/benchmark.py --config=configs/mni_2mm.py --sizes=96 --batch=4 \
  --devices=1,2,4,8 --steps=5 --compile_only --output=$out/mni_2mm_devices.json
