"""Per test subject of mni152-heads: the median image level of its CSF, GM and WM (relative to
its WM), read back from the image and labels, and their order (CSF < GM < WM is T1-like).

  python experiments/2026-11-30_synthetic_heads/contrasts.py
"""

import json

import nibabel as nib
import numpy as np

from msseg.data import mni152


def main() -> None:
    root = mni152.build(mni152.EMBEDDED["mni152-heads"])
    print("| case | CSF | GM | WM (= 1) | order, darkest first |")
    print("|---|---|---|---|---|")
    for entry in json.loads((root / "dataset.json").read_text())["test"]:
        img = np.asarray(nib.load(root / entry["image"]).dataobj, np.float32)
        lab = np.asarray(nib.load(root / entry["label"]).dataobj)
        tissue = np.where(lab > 0, (lab - 1) % 3, -1)  # 0 CSF, 1 GM, 2 WM
        levels = [float(np.median(img[tissue == k])) for k in range(3)]
        rel = [v / max(levels[2], 1e-6) for v in levels]
        order = " < ".join(("CSF", "GM", "WM")[k] for k in np.argsort(levels))
        case = entry["image"].split("/")[-1].split(".")[0]
        print(f"| {case} | {rel[0]:.2f} | {rel[1]:.2f} | 1.00 | {order} |")


if __name__ == "__main__":
    main()
