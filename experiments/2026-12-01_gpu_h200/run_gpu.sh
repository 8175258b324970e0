#!/usr/bin/env bash
# The GPU check of 2026-12-01, as one device call from the repo root (README.md here):
#   1. the main job's exported model segments 3 test scans on the GPU, by both routes;
#      label agreement with the same scans segmented on the CPU (.gpu/cpu_seg_<route>);
#   2. workloads of configs/mni_2mm.py and configs/aseg_1mm.py: train step at the training
#      patch and batch, forward (one denoiser evaluation) on a whole volume at 2 mm and 1 mm:
#      FLOPs, memory per device (XLA's memory analysis), seconds;
#   3. sampling throughput (tools/benchmark.py --config) at 2 mm and 1 mm, DDIM-5.
# Every step has a deadline inside BUDGET seconds; results land in $OUT as they come.
# SMOKE=1 runs the same steps tiny, on the CPU here, to test the script.
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
E=experiments/2026-12-01_gpu_h200
BUDGET=${BUDGET:-500}
START=$SECONDS
left() { local l=$((BUDGET - (SECONDS - START) - ${1:-0})); echo $((l > 5 ? l : 5)); }
if [ -z "${SMOKE:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  PY=python3
  CFG2=configs/mni_2mm.py CFG1=configs/aseg_1mm.py V2=96,112,96 V1=256 T2=96 T1=256 R=5
else
  PY=${PY:-.venv/bin/python}
  CFG2=configs/quickstart.py CFG1=configs/tiny.py V2=48 V1=32 T2=48 T1=32 R=1
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=1
LOG=$OUT/all.log
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  grep -m1 "model name" /proc/cpuinfo
  $PY -c "import jax, flax, optax, numpy, nibabel, grain; print('jax', jax.__version__, 'flax', \
flax.__version__, 'optax', optax.__version__, 'numpy', numpy.__version__); print(jax.devices())"
} 2>&1 | tee "$OUT/env.txt"

for r in exported local; do
  echo "== sample route=$r" | tee -a "$LOG"
  s=$SECONDS
  timeout "$(left $([ $r = exported ] && echo 360 || echo 300))" $PY tools/sample.py --model=.gpu/model --input=${IN:-.gpu/in} \
    --output=/tmp/seg_$r --route=$r >>"$LOG" 2>&1
  echo "sample route=$r rc=$? wall_s=$((SECONDS - s))" | tee -a "$LOG"
  grep "sample:" "$LOG" | tail -4
  $PY $E/compare.py .gpu/cpu_seg_$r /tmp/seg_$r | sed "s/^/{\"route\": \"$r\", \"vs\": \"cpu\", \"row\": /; s/\$/}/" \
    >>"$OUT/compare.jsonl" 2>>"$LOG"
done
# the GPU's two routes against each other
$PY $E/compare.py /tmp/seg_exported /tmp/seg_local | sed 's/^/{"route": "local", "vs": "gpu-exported", "row": /; s/$/}/' \
  >>"$OUT/compare.jsonl" 2>>"$LOG"

bench() {  # NAME SECONDS_RESERVED_AFTER ARGS...
  local name=$1 after=$2
  shift 2
  echo "== $name: $*" | tee -a "$LOG"
  timeout "$(left "$after")" $PY tools/benchmark.py "$@" --output="$OUT/$name.json" 2>&1 \
    | grep -v "^[IW][0-9]" | tee -a "$LOG"
}
bench train 190 --workload=$CFG2,$CFG1 --repeats=$R
bench volume_2mm 130 --workload=$CFG2 --patch=$V2 --patch_batch=1 --passes=forward --repeats=$R
bench volume_1mm 70 --workload=$CFG1 --patch=$V1 --patch_batch=1 --passes=forward --repeats=$R
bench sampling_2mm 35 --config=$CFG2 --sizes=$T2 --steps=5 --batch=4 --repeats=2
bench sampling_1mm 0 --config=$CFG1 --sizes=$T1 --steps=5 --batch=4 --repeats=2
echo "total_s=$((SECONDS - START))" | tee -a "$LOG"
