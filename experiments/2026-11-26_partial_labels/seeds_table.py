"""Combine the 1600-step arms over training seeds into results_seeds.json and a Markdown table.

Usage: python seeds_table.py TAG0 TAG1 ...  (results_TAG.json files of summarize.py, one per
seed, in seed order; e.g. 1600 1600_seed1). For each arm present in every file: the mean test
Dice per tree level, each seed's value, and the differences the goal of the experiment is
about (half_coarse_w3 minus full, minus dropped, and minus full_w3: the same 3 : 1 sampling with
all labels), per seed and on average.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
ARMS = ("full", "dropped", "half_coarse_w3", "full_w3")
LEVELS = {"0": "brain", "1": "tissue", "2": "leaves"}


def main(tags: list[str]) -> None:
    runs = [json.loads((HERE / f"results_{t}.json").read_text()) for t in tags]
    arms = [a for a in ARMS if all(a in r for r in runs)]
    out = {"sources": [f"results_{t}.json" for t in tags], "arms": {}, "differences": {}}
    for arm in arms:
        out["arms"][arm] = {}
        for lv in LEVELS:
            per_seed = [r[arm]["levels"][lv]["dice_mean"] for r in runs]
            out["arms"][arm][lv] = {"per_seed": per_seed, "mean": sum(per_seed) / len(runs)}
    if "half_coarse_w3" in arms:
        for other in ("full", "dropped", "full_w3"):
            if other not in arms:
                continue
            out["differences"][f"half_coarse_w3-{other}"] = {}
            for lv in LEVELS:
                w3 = out["arms"]["half_coarse_w3"][lv]["per_seed"]
                ref = out["arms"][other][lv]["per_seed"]
                diffs = [a - b for a, b in zip(w3, ref, strict=True)]
                out["differences"][f"half_coarse_w3-{other}"][lv] = {
                    "per_seed": diffs,
                    "mean": sum(diffs) / len(diffs),
                }
    (HERE / "results_seeds.json").write_text(json.dumps(out, indent=1))

    seeds = " / ".join(f"s{i}" for i in range(len(runs)))
    lines = [
        "| level | " + " | ".join(f"{a} (mean; {seeds})" for a in arms) + " |",
        "|---" * (len(arms) + 1) + "|",
    ]
    for lv, name in LEVELS.items():
        cells = []
        for a in arms:
            v = out["arms"][a][lv]
            cells.append(
                f"{100 * v['mean']:.1f} ({' / '.join(f'{100 * x:.1f}' for x in v['per_seed'])})"
            )
        lines.append(f"| {lv} {name} | " + " | ".join(cells) + " |")
    lines += ["", f"| w3 minus | level | mean | {seeds} |", "|---|---|---|---|"]
    for key, per_level in out["differences"].items():
        for lv, d in per_level.items():
            each = " / ".join(f"{100 * x:+.1f}" for x in d["per_seed"])
            lines.append(
                f"| {key.split('-', 1)[1]} | {LEVELS[lv]} | {100 * d['mean']:+.1f} | {each} |"
            )
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
