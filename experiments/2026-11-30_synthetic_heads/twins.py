"""The skull-stripped twins of the mni152-heads test subjects: each full-head image with every
voxel outside its true brain (label > 0) set to 0, the labels unchanged, same file names, as a
dataset folder that tools/evaluate.py --data=OUT --split=test reads.

  python experiments/2026-11-30_synthetic_heads/twins.py OUT
"""

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from msseg.data import mni152


def main(out: str) -> None:
    src = mni152.build(mni152.EMBEDDED["mni152-heads"])
    meta = json.loads((src / "dataset.json").read_text())
    root = Path(out)
    for sub in ("imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for entry in meta["test"]:
        img = nib.load(src / entry["image"])
        lab = nib.load(src / entry["label"])
        data = np.where(np.asarray(lab.dataobj) > 0, np.asarray(img.dataobj), 0)
        nib.save(
            nib.Nifti1Image(data.astype(img.get_data_dtype()), img.affine, img.header),
            root / entry["image"],
        )
        nib.save(lab, root / entry["label"])
    twin = {k: meta[k] for k in ("protocol", "labels", "tensorImageSize", "spacing_mm")}
    twin.update(
        name="mni152-heads-stripped",
        training=[],
        validation=[],
        test=meta["test"],
        description="mni152-heads test subjects skull-stripped with their true brain mask",
    )
    (root / "dataset.json").write_text(json.dumps(twin, indent=1))
    print(f"{root}: {len(meta['test'])} skull-stripped twins of {src.name}")


if __name__ == "__main__":
    main(*sys.argv[1:])
