"""The table of this experiment: each arm's leaf and brain Dice on the skull-stripped test split,
the full-head test split and the full-head subjects skull-stripped with their true mask (the
twins), and the paired per-case differences the real-scans issue asks for: full head minus
twin, and skull-stripped minus the model trained without heads. Writes results.json and
results.md beside itself.

  python summarize.py BASE=STRIPPED_REPORT ARM=STRIPPED,FULL_HEAD,TWINS [ARM=...]

Each value is an evaluate.py report folder (metrics.csv), '-' where the arm has none. The first
argument is the model trained without heads: every arm's skull-stripped Dice is compared
with it, case by case.
"""

import csv
import json
import runpy
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

SETS = ("stripped", "full_head", "twins")
HERE = Path(__file__).parent
# b - a per case in Dice points: {n, mean, sd, min, b_ahead}
paired = runpy.run_path(str(HERE.parent / "2026-11-30_synthetic_heads" / "summarize.py"))["paired"]


def per_case(report: str) -> dict[str, dict[str, float]]:
    """case -> {"brain": Dice, "leaf": mean Dice of the six leaves}."""
    dice = defaultdict(dict)
    with open(Path(report) / "metrics.csv") as f:
        for row in csv.DictReader(f):
            dice[row["case"]][row["label"]] = float(row["dice"])
    return {
        case: {
            "brain": d["Brain"],
            "leaf": float(np.mean([v for k, v in d.items() if k.startswith(("Left-", "Right-"))])),
        }
        for case, d in dice.items()
    }


def text(p: dict | None) -> str:
    return "—" if p is None else f"{p['mean']:+.1f} ± {p['sd']:.1f} (worst {p['min']:+.1f})"


def main(base: str, *arms: str) -> None:
    base_name, base_report = base.split("=", 1)
    ref = per_case(base_report)
    rows, result = [], {"reports": {base_name: base_report}, "arms": {}}
    for arm in (f"{base_name}={base_report},-,-", *arms):
        name, folders = arm.split("=", 1)
        reports = dict(zip(SETS, folders.split(","), strict=True))
        scores = {s: per_case(r) for s, r in reports.items() if r != "-"}
        mean = {
            s: {k: round(float(np.mean([c[k] for c in v.values()])), 4) for k in ("brain", "leaf")}
            for s, v in scores.items()
        }
        diffs = {}
        if "stripped" in scores and name != base_name:
            diffs["stripped_minus_base_leaf"] = paired(ref, scores["stripped"], "leaf")
        if {"full_head", "twins"} <= set(scores):
            twins, full = scores["twins"], scores["full_head"]
            diffs["full_head_minus_twin_leaf"] = paired(twins, full, "leaf")
        result["arms"][name] = {"reports": reports, "mean": mean, "paired": diffs}

        def cell(s: str, k: str, mean=mean) -> str:
            return f"{mean[s][k]:.3f}" if s in mean else "—"

        rows.append(
            f"| {name} | {cell('stripped', 'leaf')} | {cell('stripped', 'brain')} | "
            f"{text(diffs.get('stripped_minus_base_leaf'))} | {cell('full_head', 'brain')} | "
            f"{cell('full_head', 'leaf')} | {cell('twins', 'leaf')} | "
            f"{text(diffs.get('full_head_minus_twin_leaf'))} |"
        )
    lines = [
        "| arm | skull-stripped leaf | skull-stripped brain | skull-stripped leaf minus "
        f"{base_name} (points, paired) | full-head brain | full-head leaf | twin leaf | "
        "full head minus twin, leaf (points, paired) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    (HERE / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(*sys.argv[1:])
