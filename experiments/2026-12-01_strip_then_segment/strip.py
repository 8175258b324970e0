"""The mni152-heads test subjects skull-stripped with a *predicted* brain mask: each full-head
image with every voxel outside the brain of a first model's segmentation (label > 0, holes
filled) set to 0; the true labels unchanged; a dataset folder that tools/evaluate.py
--data=OUT --split=test reads (like ../2026-11-30_synthetic_heads/twins.py, which strips with
the true mask).

  python strip.py SEG_DIR OUT     # SEG_DIR: tools/sample.py's output on the full-head images
"""

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from msseg.data import mni152


def main(seg_dir: str, out: str) -> None:
    src = mni152.build(mni152.EMBEDDED["mni152-heads"])
    meta = json.loads((src / "dataset.json").read_text())
    root = Path(out)
    for sub in ("imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for entry in meta["test"]:
        img = nib.load(src / entry["image"])
        name = Path(entry["image"]).name.removesuffix(".nii.gz")
        seg = nib.load(Path(seg_dir) / f"{name}_seg.nii.gz")
        assert seg.shape == img.shape, (seg.shape, img.shape)
        brain = ndimage.binary_fill_holes(np.asarray(seg.dataobj) > 0)
        data = np.where(brain, np.asarray(img.dataobj), 0)
        nib.save(
            nib.Nifti1Image(data.astype(img.get_data_dtype()), img.affine, img.header),
            root / entry["image"],
        )
        nib.save(nib.load(src / entry["label"]), root / entry["label"])
    out_meta = {k: meta[k] for k in ("protocol", "labels", "tensorImageSize", "spacing_mm")}
    out_meta.update(
        name="mni152-heads-predicted-strip",
        training=[],
        validation=[],
        test=meta["test"],
        description="mni152-heads test subjects stripped with a model's predicted brain mask",
    )
    (root / "dataset.json").write_text(json.dumps(out_meta, indent=1))
    print(f"{root}: {len(meta['test'])} subjects stripped with the masks of {seg_dir}")


if __name__ == "__main__":
    main(*sys.argv[1:])
