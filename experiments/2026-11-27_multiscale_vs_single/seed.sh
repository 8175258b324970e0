#!/usr/bin/env bash
# The multiscale-vs-single pair of the suite (msseg/suite/plan.py: arms ms_full and single)
# trained again at another seed, with the suite's exact flags plus --config.seed, then
# exported and scored with the suite's evaluation command. Resumes like the suite.
#   bash experiments/2026-11-27_multiscale_vs_single/seed.sh SEED OUT
#   python experiments/2026-11-27_multiscale_vs_single/seed_table.py runs/suite runs/suite_seed1 ...
set -euo pipefail
seed=$1 out=$2
cd "$(dirname "$0")/../.."
export MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296
base=(--config=configs/quickstart.py --config.data.spec=mni152 --config.train.steps=3000
  --config.train.eval_every=0 --config.train.checkpoint_every=250
  "--config.train.entry_depths=(0,)" "--config.train.entry_probs=()"
  "--config.train.val_depths=(0,)" --config.seed="$seed")
declare -A extra=([ms_full]="" [single]="--config.diffusion.depth_weights=(1.0,0.0,0.0,)")
for arm in ms_full single; do
  wd=$out/$arm
  if [ ! -f "$wd/model/metadata.json" ]; then
    python tools/train.py --workdir="$wd" "${base[@]}" ${extra[$arm]}
    python tools/export.py --workdir="$wd" --output="$wd/model"
  fi
  if [ ! -f "$out/eval/$arm/summary.json" ]; then
    python tools/evaluate.py --model="$wd/model" --data=mni152 --split=test \
      --output="$out/eval/$arm" --overlap=0.25 --batch=2 --seed=0 --worst=0
  fi
done
