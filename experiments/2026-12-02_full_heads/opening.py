"""How the stripper's opening radius was chosen: brain Dice of `postprocess.brain_mask` at
several radii against the labels, on the heads model's segmentations of the 4 mni152-heads
validation subjects (never the test split, never Colin27).

  python tools/sample.py --model=HEADS_MODEL --output=VAL_SEG --overlap=0.25 --batch=2 \
      --input='CACHE/mni152-heads-.../imagesTr/mni152-heads_val_*.nii.gz'
  python experiments/2026-12-02_full_heads/opening.py VAL_SEG CACHE/mni152-heads-.../labelsTr
"""

import glob
import sys

import nibabel as nib
import numpy as np

from msseg.inference import postprocess as post

RADII_MM = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16)


def main(seg_dir: str, label_dir: str) -> None:
    dice = {r: [] for r in RADII_MM}
    for f in sorted(glob.glob(f"{seg_dir}/*_seg.nii.gz")):
        name = f.split("/")[-1].removesuffix("_seg.nii.gz")
        img = nib.load(f)
        seg = np.asarray(img.dataobj)
        ref = np.asarray(nib.load(f"{label_dir}/{name}.nii.gz").dataobj) > 0
        for r in RADII_MM:
            m = post.brain_mask(seg, img.header.get_zooms()[:3], r)
            dice[r].append(2 * (m & ref).sum() / (m.sum() + ref.sum()))
    for r, v in dice.items():
        print(f"{r:>3} mm: mean {np.mean(v):.4f}  per case {np.round(v, 4).tolist()}")


if __name__ == "__main__":
    main(*sys.argv[1:])
