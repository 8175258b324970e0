"""Agreement of two folders of segmentations (the same inputs segmented on two machines):
per case, the share of voxels with the same label and the Dice of each label between them.

  python compare.py REF_DIR OTHER_DIR [--json OUT.json]
"""

import argparse
import glob
import json
import os

import nibabel as nib
import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ref")
    ap.add_argument("other")
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = []
    for ref in sorted(glob.glob(os.path.join(a.ref, "*_seg.nii.gz"))):
        name = os.path.basename(ref)
        r = np.asarray(nib.load(ref).dataobj)
        o = np.asarray(nib.load(os.path.join(a.other, name)).dataobj)
        dice = {}
        for lab in np.union1d(np.unique(r), np.unique(o)):
            if lab == 0:
                continue
            x, y = r == lab, o == lab
            dice[int(lab)] = round(float(2 * (x & y).sum() / max(x.sum() + y.sum(), 1)), 5)
        row = {
            "case": name.removesuffix("_seg.nii.gz"),
            "voxels_equal": round(float((r == o).mean()), 6),
            "voxels_differing": int((r != o).sum()),
            "min_label_dice": min(dice.values()),
            "dice": dice,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
