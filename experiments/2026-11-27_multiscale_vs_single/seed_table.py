"""Multiscale (ms_full) vs single-output (single) at each training seed, from the evaluation
reports of suite runs (`tools/suite.py --seed=N --experiments=multiscale`), into
results_seeds.json.

  python experiments/2026-11-27_multiscale_vs_single/seed_table.py 0=runs/suite 1=runs/suite_seed1
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parents[1] / "tools"))  # the suite's package, tools/harness

from harness.plan import Settings  # noqa: E402
from harness.summaries import extract, paired  # noqa: E402


def _final_val(workdir: Path) -> float:
    """The last validation leaf Dice of a training run (metrics.jsonl)."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["val_dice"] for r in rows if "val_dice" in r][-1]


def main(args: list[str]) -> None:
    seeds = {}
    for arg in args:
        seed, run = arg.split("=", 1)
        s = Settings(out=Path(run).resolve(), results=HERE, date="")
        ms, single = extract(s, "ms_full"), extract(s, "single")
        seeds[seed] = {
            "run": run,
            **{
                name: {
                    "source": a["source"],
                    "num_cases": a["num_cases"],
                    "dice": a["dice"],
                    "hd95_leaves": a["hd95_leaves"],
                    "dice_leaves": a["dice_leaves"],
                    "final_validation_dice_leaves": _final_val(Path(run) / arm),
                }
                for name, arm, a in (
                    ("multiscale", "ms_full", ms),
                    ("single_output", "single", single),
                )
            },
            "dice_leaves_paired": paired(ms, single),
        }
    (HERE / "results_seeds.json").write_text(json.dumps(seeds, indent=1) + "\n")
    print(
        "| seed | Dice leaves multiscale | single output | paired difference (s.d.) | cases won "
        "| Dice CSF/GM/WM multiscale | single output |"
    )
    print("|---|---|---|---|---|---|---|")
    for seed, r in seeds.items():
        p = r["dice_leaves_paired"]
        print(
            f"| {seed} | {100 * r['multiscale']['dice_leaves']:.1f} "
            f"| {100 * r['single_output']['dice_leaves']:.1f} "
            f"| {100 * p['mean']:+.2f} ({100 * p['sd']:.2f}) | {p['wins']} of {p['n']} "
            f"| {100 * r['multiscale']['dice']['1']:.1f} "
            f"| {100 * r['single_output']['dice']['1']:.1f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
