"""Per case: leaf and brain Dice of strip-then-segment (run.sh's eval) against the same
subjects stripped with their true mask (twins) and, for the stripper, its own brain Dice.

  python compare.py TWINS_REPORT OUT [--json FILE]
"""

import argparse
import csv
import json
import statistics
from pathlib import Path

import nibabel as nib
import numpy as np

from msseg.data import mni152


def per_case(report: Path) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, list[float]]] = {}
    with open(report / "metrics.csv") as f:
        for row in csv.DictReader(f):
            d = out.setdefault(row["case"], {"leaf": [], "brain": []})
            if row["level"] == "2":
                d["leaf"].append(float(row["dice"]))
            elif row["level"] == "0":
                d["brain"].append(float(row["dice"]))
    return {c: {k: statistics.mean(v) for k, v in d.items()} for c, d in out.items()}


def stripper_brain(seg_dir: Path) -> dict[str, float]:
    src = mni152.build(mni152.EMBEDDED["mni152-heads"])
    out = {}
    for lab in sorted((src / "labelsTs").glob("*.nii.gz")):
        name = lab.name.removesuffix(".nii.gz")
        ref = np.asarray(nib.load(lab).dataobj) > 0
        pred = np.asarray(nib.load(seg_dir / f"{name}_seg.nii.gz").dataobj) > 0
        out[name] = float(2 * (ref & pred).sum() / (ref.sum() + pred.sum()))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("twins")
    ap.add_argument("out")
    ap.add_argument("--json")
    a = ap.parse_args()
    twins = per_case(Path(a.twins))
    two = per_case(Path(a.out) / "eval")
    strip = stripper_brain(Path(a.out) / "stripper_seg")
    rows = []
    print("case                    stripper brain  twin leaf  two-stage leaf  diff (pts)")
    for c in sorted(two):
        r = {
            "case": c,
            "stripper_brain": strip[c],
            "twin_leaf": twins[c]["leaf"],
            "two_stage_leaf": two[c]["leaf"],
            "two_stage_brain": two[c]["brain"],
        }
        r["diff_pts"] = 100 * (r["two_stage_leaf"] - r["twin_leaf"])
        rows.append(r)
        print(
            f"{c:24s} {r['stripper_brain']:14.3f} {r['twin_leaf']:10.3f} "
            f"{r['two_stage_leaf']:15.3f} {r['diff_pts']:+10.1f}"
        )
    d = [r["diff_pts"] for r in rows]
    print(
        f"mean                    {statistics.mean(r['stripper_brain'] for r in rows):14.3f} "
        f"{statistics.mean(r['twin_leaf'] for r in rows):10.3f} "
        f"{statistics.mean(r['two_stage_leaf'] for r in rows):15.3f} "
        f"{statistics.mean(d):+10.1f} ± {statistics.stdev(d):.1f}"
    )
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
