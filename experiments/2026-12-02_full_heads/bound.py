"""How the bounding stripper's margin was chosen: brain Dice on the 4 mni152-heads validation
subjects (never the test split, never Colin27) of the 2 mm stripper's brain (opened by 6 mm),
the 4 mm stripper's brain alone (opened by 0, 6, 12 mm), and the first kept within g mm of
the second (`postprocess.bounded`) for g = 0, 2, 4, 8.

  python tools/sample.py --model=HEADS_MODEL --output=VAL_2MM --overlap=0.25 --batch=2 \
      --input='CACHE/mni152-heads-.../imagesTr/mni152-heads_val_*.nii.gz'
  python tools/sample.py --model=HEADS_4MM_MODEL --output=VAL_4MM ... (the same inputs)
  python experiments/2026-12-02_full_heads/bound.py VAL_2MM VAL_4MM CACHE/mni152-heads-.../labelsTr
"""

import glob
import sys

import nibabel as nib
import numpy as np

from msseg.inference import postprocess as post


def dice(m: np.ndarray, ref: np.ndarray) -> float:
    return float(2 * (m & ref).sum() / (m.sum() + ref.sum()))


def main(fine_dir: str, coarse_dir: str, label_dir: str) -> None:
    rows = {}
    for f in sorted(glob.glob(f"{fine_dir}/*_seg.nii.gz")):
        name = f.split("/")[-1].removesuffix("_seg.nii.gz")
        img = nib.load(f)
        spacing = img.header.get_zooms()[:3]
        fine = np.asarray(img.dataobj)
        coarse = np.asarray(nib.load(f"{coarse_dir}/{name}_seg.nii.gz").dataobj)
        ref = np.asarray(nib.load(f"{label_dir}/{name}.nii.gz").dataobj) > 0

        fine_brain = post.brain_mask(fine, spacing, 6.0)
        res = {"2 mm, opened 6": dice(fine_brain, ref)}
        for r in (0, 6, 12):
            res[f"4 mm, opened {r}"] = dice(post.brain_mask(coarse, spacing, r), ref)
        coarse_brain = post.brain_mask(coarse, spacing, 6.0)
        for g in (0, 2, 4, 8):
            res[f"2 mm within {g} of 4 mm"] = dice(
                post.bounded(fine_brain, coarse_brain, spacing, g), ref
            )
        rows[name] = res
    for k in next(iter(rows.values())):
        v = [rows[n][k] for n in rows]
        print(f"{k:>22}: mean {np.mean(v):.4f}  per case {np.round(v, 4).tolist()}")


if __name__ == "__main__":
    main(*sys.argv[1:])
