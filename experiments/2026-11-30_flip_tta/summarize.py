"""Paired per-case comparison of two evaluate.py reports (no TTA vs flip TTA): leaf Dice and the
left/right asymmetry (mean over tissues of |Dice(Left-X) - Dice(Right-X)|).

  python experiments/2026-11-30_flip_tta/summarize.py REPORT_NONE REPORT_FLIP
"""

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def per_case(report: Path) -> tuple[dict, dict]:
    dice = defaultdict(dict)
    with open(report / "metrics.csv") as f:
        for row in csv.DictReader(f):
            dice[row["case"]][row["label"]] = float(row["dice"])
    leaves, asym = {}, {}
    for case, d in dice.items():
        sides = [k for k in d if k.startswith("Left-")]
        leaves[case] = float(np.mean([d[k] for k in sides] + [d["Right-" + k[5:]] for k in sides]))
        asym[case] = float(np.mean([abs(d[k] - d["Right-" + k[5:]]) for k in sides]))
    return leaves, asym


def main(none: str, flip: str) -> None:
    (a, asym_a), (b, asym_b) = per_case(Path(none)), per_case(Path(flip))
    cases = sorted(a)
    seg = {
        k: json.loads((Path(p) / "summary.json").read_text())
        for k, p in (("none", none), ("flip", flip))
    }
    d = np.array([b[c] - a[c] for c in cases])
    da = np.array([asym_b[c] - asym_a[c] for c in cases])
    print("| case | leaf Dice none | leaf Dice flip | L/R asymmetry none | L/R asymmetry flip |")
    print("|---|---|---|---|---|")
    for c in cases:
        print(f"| {c} | {a[c]:.4f} | {b[c]:.4f} | {asym_a[c]:.4f} | {asym_b[c]:.4f} |")
    mean_a, mean_b = np.mean(list(a.values())), np.mean(list(b.values()))
    print()
    print(
        f"- leaf Dice: none {mean_a:.4f}, flip {mean_b:.4f}; flip minus none "
        f"{d.mean() * 100:+.2f} ± {d.std(ddof=1) * 100:.2f} points (s.d.), "
        f"ahead on {(d > 0).sum()} of {len(d)} cases"
    )
    asym_none, asym_flip = np.mean(list(asym_a.values())), np.mean(list(asym_b.values()))
    print(
        f"- L/R asymmetry: none {asym_none:.4f}, flip {asym_flip:.4f}; flip minus none "
        f"{da.mean():+.4f}, lower on {(da < 0).sum()} of {len(da)} cases"
    )
    for k, s in seg.items():
        seg_s = s.get("segmentation", {})
        print(
            f"- {k}: denoiser evaluations per case {seg_s.get('denoiser_evals_per_case')}, "
            f"median s per case {seg_s.get('median_seconds_per_case')}"
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
