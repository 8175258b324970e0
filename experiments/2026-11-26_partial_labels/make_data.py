"""Write the three training sets of the partial-label experiment from the embedded mni152 set.

  OUT/half_full    dataset.json: even-numbered training subjects with their leaf labels, plus
                   the validation and test subjects (leaf labels)
  OUT/half_coarse  dataset.json: odd-numbered training subjects, labels rewritten as tissue
                   without sides (1 CSF, 2 GM, 3 WM, declared by name as mni-tissue nodes)
  OUT/other_full   dataset.json: the odd-numbered training subjects with their leaf labels (the
                   control: all labels, sampled as the two halves of the weighted arm)

Arms: full = mni152 (all 24); half-coarse = "half_full,half_coarse"; dropped = half_full;
full_w3 = "half_full,other_full" (weighted as half_coarse_w3).
Usage: python make_data.py OUT
"""

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from msseg.data import mni152


def main(out: str) -> None:
    root = mni152.build()
    meta = json.loads((root / "dataset.json").read_text())
    out = Path(out)
    full, coarse, other = out / "half_full", out / "half_coarse", out / "other_full"
    (coarse / "labelsTr").mkdir(parents=True, exist_ok=True)
    full.mkdir(parents=True, exist_ok=True)
    other.mkdir(parents=True, exist_ok=True)
    absolute = lambda e: {k: str((root / v).resolve()) for k, v in e.items()}
    train = [absolute(e) for e in meta["training"]]
    # leaf codes 1..6 = left CSF/GM/WM, right CSF/GM/WM → tissue without sides 1/2/3
    to_tissue = np.array([0, 1, 2, 3, 1, 2, 3], np.uint8)
    coarse_entries = []
    for entry in train[1::2]:
        img = nib.load(entry["label"])
        codes = np.asarray(img.dataobj).astype(np.int64)
        path = coarse / "labelsTr" / Path(entry["label"]).name
        nib.save(nib.Nifti1Image(to_tissue[codes], img.affine, img.header), path)
        coarse_entries.append({"image": entry["image"], "label": str(path)})
    common = {"protocol": "mni-tissue", "tensorImageSize": "3D"}
    (full / "dataset.json").write_text(
        json.dumps(
            {
                **common,
                "name": "mni152-half-full",
                "labels": meta["labels"],
                "training": train[0::2],
                "validation": [absolute(e) for e in meta["validation"]],
                "test": [absolute(e) for e in meta["test"]],
            },
            indent=1,
        )
    )
    (coarse / "dataset.json").write_text(
        json.dumps(
            {
                **common,
                "name": "mni152-half-coarse",
                "labels": {"0": "Background", "1": "CSF", "2": "GM", "3": "WM"},
                "training": coarse_entries,
            },
            indent=1,
        )
    )
    (other / "dataset.json").write_text(
        json.dumps(
            {
                **common,
                "name": "mni152-other-full",
                "labels": meta["labels"],
                "training": train[1::2],
            },
            indent=1,
        )
    )
    print(f"{len(train[0::2])} full + {len(coarse_entries)} coarse training subjects in {out}")


if __name__ == "__main__":
    main(sys.argv[1])
