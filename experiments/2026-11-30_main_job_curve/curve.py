"""Validation leaf Dice against training wall-clock time, from a training run's metrics.jsonl.

    python experiments/2026-11-30_main_job_curve/curve.py WORKDIR [WORKDIR ...] --output=DIR

Training time is the run's wall clock with the validations' own time taken out (a validation
row's wall_s minus that of the step row before it), so the curve says what a run of that many
training seconds would score without the intermediate validations. Writes DIR/curve.json
(per run: step, training seconds, validation leaf Dice at depth 0, steps/s) and DIR/curve.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def curve(workdir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    points, val_s, last_wall = [], 0.0, 0.0
    for r in rows:
        if "val/depth0/leaves" in r:
            points.append(
                {
                    "step": r["step"],
                    "train_s": round(last_wall - val_s, 1),
                    "val_leaf_dice": r["val/depth0/leaves"],
                }
            )
            val_s += r["wall_s"] - last_wall
        last_wall = r["wall_s"]
    return points


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdirs", nargs="+", type=Path)
    ap.add_argument("--output", type=Path, required=True)
    args = ap.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    runs = {str(w): curve(w) for w in args.workdirs}
    (args.output / "curve.json").write_text(json.dumps(runs, indent=1) + "\n")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, pts in runs.items():
        ax.plot(
            [p["train_s"] / 60 for p in pts],
            [100 * p["val_leaf_dice"] for p in pts],
            "o-",
            label=Path(name).name,
        )
    ax.set_xlabel("training wall clock (min, validations excluded)")
    ax.set_ylabel("validation leaf Dice x 100")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output / "curve.png", dpi=120)
    for name, pts in runs.items():
        print(name)
        for p in pts:
            print(
                f"  step {p['step']:5d}  {p['train_s']:7.1f} s",
                f"val leaf Dice {p['val_leaf_dice']:.4f}",
            )


if __name__ == "__main__":
    main()
