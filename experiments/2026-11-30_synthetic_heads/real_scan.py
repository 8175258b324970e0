"""Brain Dice of the segmentations of ch2 (full head) and ch2bet (brain-extracted) against
ch2bet's brain (its non-zero voxels), their agreement with each other, and brain volumes.

  python experiments/2026-11-30_synthetic_heads/real_scan.py OUT
"""

import csv
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def main(out: str) -> None:
    root = Path(out)
    bet = np.asarray(nib.load(root / "in" / "ch2bet.nii.gz").dataobj) > 0
    segs = {n: np.asarray(nib.load(root / f"{n}_seg.nii.gz").dataobj) for n in ("ch2", "ch2bet")}
    with open(root / "volumes.csv") as f:
        volumes = {row["case"]: row for row in csv.DictReader(f)}
    result = {}
    for name, seg in segs.items():
        brain = seg > 0
        left, right = np.isin(seg, (1, 2, 3)), np.isin(seg, (4, 5, 6))
        result[name] = {
            "brain_dice_vs_ch2bet_mask": round(dice(brain, bet), 4),
            "brain_ml": round(float(volumes[name]["Brain"]) / 1000, 1),
            "left_ml": round(float(left.sum()) / 1000, 1),
            "right_ml": round(float(right.sum()) / 1000, 1),
        }
    result["ch2_vs_ch2bet_leaf_agreement"] = round(
        float(np.mean([dice(segs["ch2"] == k, segs["ch2bet"] == k) for k in range(1, 7)])), 4
    )
    result["ch2bet_mask_ml"] = round(float(bet.sum()) / 1000, 1)
    print(json.dumps(result, indent=1))
    (root / "real_scan.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
