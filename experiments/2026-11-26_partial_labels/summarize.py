"""Collect each arm's test-split evaluation into results.json and a Markdown table.

Usage: python summarize.py OUT [TAG]  (OUT/<arm>/eval/summary.json for arm in full, half_coarse,
dropped, and half_coarse_masked where present: the ablation run at commit 1f6ca1f, whose
diffusion regression skipped partially labelled voxels instead of fitting their marginal mask).
With TAG, writes results_TAG.json and dice_per_level_TAG.png instead (e.g. a longer run).
"""

import json
import sys
from pathlib import Path

ARMS = (
    "full",
    "half_coarse",
    "dropped",
    "half_coarse_masked",
    "half_coarse_dice",  # + leaves undefined in a sample left out of its soft Dice (0bcf7bc)
    "half_coarse_draw",  # + partial voxels noised from a drawn leaf (partial_noise=draw)
    "half_coarse_w3",  # as draw, 3/4 of the patches from the fully labelled half (03a17a8)
    "full_w3",  # control: both halves with leaf labels, sampled 3 : 1 as half_coarse_w3
)
LEVELS = {"0": "brain", "1": "tissue", "2": "leaves (tissue x side)"}


def main(out: str, tag: str = "") -> None:
    suffix = f"_{tag}" if tag else ""
    out = Path(out)
    results = {}
    arms = [a for a in ARMS if (out / a / "eval" / "summary.json").is_file()]
    for arm in arms:
        summary = json.loads((out / arm / "eval" / "summary.json").read_text())
        metrics = [json.loads(line) for line in (out / arm / "metrics.jsonl").open()]
        results[arm] = {
            "levels": {
                lv: {
                    "labels": summary["levels"][lv]["labels"],
                    "dice_mean": summary["levels"][lv]["dice"]["mean"],
                    "dice_std": summary["levels"][lv]["dice"]["std"],
                }
                for lv in summary["levels"]
            },
            "labels": {name: row["dice"]["mean"] for name, row in summary["labels"].items()},
            "num_cases": summary["num_cases"],
            "train_wall_s": max(r.get("wall_s", 0) for r in metrics),
            "val_dice": [r["val_dice"] for r in metrics if "val_dice" in r][-1],
        }
    (Path(__file__).parent / f"results{suffix}.json").write_text(json.dumps(results, indent=1))
    head = "| level | " + " | ".join(arms) + " |"
    lines = [head, "|---" * (len(arms) + 1) + "|"]
    for lv, name in LEVELS.items():
        cells = [f"{100 * results[a]['levels'][lv]['dice_mean']:.1f}" for a in arms]
        lines.append(f"| {lv} {name} | " + " | ".join(cells) + " |")
    for label in results[arms[0]]["labels"]:
        cells = [f"{100 * results[a]['labels'][label]:.1f}" for a in arms]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    plot(results, arms, Path(__file__).parent / f"dice_per_level{suffix}.png")


def plot(results: dict, arms: list[str], path: Path) -> None:
    """Grouped bars: mean test Dice per tree level and arm."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5), dpi=100)
    ax = fig.add_subplot()
    width = 0.8 / len(arms)
    for j, arm in enumerate(arms):
        vals = [results[arm]["levels"][lv]["dice_mean"] for lv in LEVELS]
        xs = [i + (j - (len(arms) - 1) / 2) * width for i in range(len(LEVELS))]
        ax.bar(xs, vals, width, label=arm)
    ax.set_xticks(range(len(LEVELS)), list(LEVELS.values()))
    ax.set_ylabel("mean Dice, 8 test subjects")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main(*sys.argv[1:3])
