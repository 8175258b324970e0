"""The synthetic-heads table: models (run.sh outputs) x test sets, brain and leaf Dice, and the
paired per-case differences the real-scans issue asks for. Writes results.json beside itself.

  python experiments/2026-11-30_synthetic_heads/summarize.py NAME=RUN_OUT [NAME=RUN_OUT ...]

The first model is the one trained with synthetic heads; the second, if any, the one without.
"""

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

SETS = {
    "mni152": "skull-stripped test split",
    "mni152-heads": "full-head test split",
    "twins": "full-head subjects, skull-stripped",
}


def per_case(report: Path) -> dict[str, dict[str, float]]:
    """case -> {"brain": Dice, "leaf": mean Dice of the leaves (Left-/Right- labels)}."""
    dice = defaultdict(dict)
    with open(report / "metrics.csv") as f:
        for row in csv.DictReader(f):
            dice[row["case"]][row["label"]] = float(row["dice"])
    out = {}
    for case, d in dice.items():
        leaves = [v for k, v in d.items() if k.startswith(("Left-", "Right-"))]
        out[case] = {"brain": d["Brain"], "leaf": float(np.mean(leaves))}
    return out


def paired(a: dict, b: dict, key: str) -> dict:
    """b - a per case (points), over the cases both have."""
    cases = sorted(set(a) & set(b))
    d = np.array([b[c][key] - a[c][key] for c in cases]) * 100
    return {
        "n": len(cases),
        "mean": round(float(d.mean()), 2),
        "sd": round(float(d.std(ddof=1)), 2) if len(d) > 1 else None,
        "min": round(float(d.min()), 2),
        "b_ahead": int((d > 0).sum()),
    }


def main(*runs: str) -> None:
    models = dict(r.split("=", 1) for r in runs)
    scores = {
        m: {s: per_case(Path(out) / s) for s in SETS if (Path(out) / s / "metrics.csv").is_file()}
        for m, out in models.items()
    }
    lines = [
        "| model | test set | cases | brain Dice (mean, min) | leaf Dice (mean) |",
        "|---|---|---|---|---|",
    ]
    table = {}
    for m, per_set in scores.items():
        for s, cases in per_set.items():
            brain = [v["brain"] for v in cases.values()]
            leaf = [v["leaf"] for v in cases.values()]
            table.setdefault(m, {})[s] = {
                "cases": len(cases),
                "brain_mean": round(float(np.mean(brain)), 4),
                "brain_min": round(float(np.min(brain)), 4),
                "leaf_mean": round(float(np.mean(leaf)), 4),
            }
            lines.append(
                f"| {m} | {SETS[s]} | {len(cases)} | {np.mean(brain):.4f}, {np.min(brain):.4f} "
                f"| {np.mean(leaf):.4f} |"
            )
    comparisons = {}
    first = next(iter(scores))
    if {"mni152-heads", "twins"} <= set(scores[first]):
        comparisons["full head minus skull-stripped twin, leaf (points)"] = paired(
            scores[first]["twins"], scores[first]["mni152-heads"], "leaf"
        )
    if len(scores) > 1:
        second = list(scores)[1]
        for s in SETS:
            if s in scores[first] and s in scores[second]:
                comparisons[f"{first} minus {second} on the {SETS[s]}, leaf (points)"] = paired(
                    scores[second][s], scores[first][s], "leaf"
                )
                comparisons[f"{first} minus {second} on the {SETS[s]}, brain (points)"] = paired(
                    scores[second][s], scores[first][s], "brain"
                )
    if {"mni152-heads", "twins"} <= set(scores[first]):
        full, twin = scores[first]["mni152-heads"], scores[first]["twins"]
        lines += [
            "",
            f"{first}, per case:",
            "",
            "| case | brain full head | brain twin | leaf full head | leaf twin |",
            "|---|---|---|---|---|",
        ]
        for c in sorted(full):
            lines.append(
                f"| {c} | {full[c]['brain']:.4f} | {twin[c]['brain']:.4f} | "
                f"{full[c]['leaf']:.4f} | {twin[c]['leaf']:.4f} |"
            )
    lines.append("")
    for k, v in comparisons.items():
        lines.append(
            f"- {k}: {v['mean']:+.2f} ± {v['sd']} (s.d.), worst case {v['min']:+.2f}, "
            f"the first ahead on {v['b_ahead']} of {v['n']}"
        )
    print("\n".join(lines))
    result = {"models": models, "table": table, "paired": comparisons}
    (Path(__file__).parent / "results.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
