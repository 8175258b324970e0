"""The recipe screen's table: every arm's tools/evaluate.py report (8 test subjects) and its
training record, with paired per-case leaf Dice differences against a reference arm.

    python experiments/2026-11-30_recipe_screen/summarize.py RUN [--reference=det] > table.md
writes RUN's figures to experiments/2026-11-30_recipe_screen/results.json as well.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

HERE = Path(__file__).parent
LEAVES = ("Left-CSF", "Right-CSF", "Left-GM", "Right-GM", "Left-WM", "Right-WM")


def arm_figures(workdir: Path) -> dict:
    s = json.loads((workdir / "eval" / "summary.json").read_text())
    config = json.loads((workdir / "config.json").read_text())
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    last = [m for m in metrics if "steps_per_s" in m]
    cal = s["calibration"]
    return {
        "leaf_dice": statistics.mean(s["case_dice"].values()),
        "case_dice": s["case_dice"],
        "dice": {n: s["labels"][n]["dice"]["mean"] for n in (*LEAVES, "Brain")},
        "hd95_leaves_mm": s["levels"][str(max(map(int, s["levels"])))]["hd95"]["mean"],
        "ece": cal["ece"],
        "entropy_auroc_errors": cal["auroc_entropy_error"],
        "seconds_per_case": s["segmentation"]["median_seconds_per_case"],
        "denoiser_evals_per_window": s["segmentation"]["denoiser_evals_per_window"],
        "steps": max(m["step"] for m in metrics),
        "train_wall_s": max(m["wall_s"] for m in metrics),
        "steps_per_s_last_window": last[-1]["steps_per_s"] if last else None,
        "diffusion": config["diffusion"] if config["model"]["diffusion"] else None,
        "model": {k: config["model"][k] for k in ("channels", "num_res_blocks", "diffusion")},
    }


def paired(a: dict, b: dict) -> dict:
    diffs = [a[c] - b[c] for c in sorted(a)]
    return {
        "mean": statistics.mean(diffs),
        "sd": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
        "better": sum(d > 0 for d in diffs),
        "n": len(diffs),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--reference", default="det")
    args = ap.parse_args()
    run = Path(args.run)
    arms = {
        w.name: arm_figures(w)
        for w in sorted(run.iterdir())
        if (w / "eval" / "summary.json").is_file()
    }
    ref = arms.get(args.reference)
    for a in arms.values():
        a["vs_reference"] = paired(a["case_dice"], ref["case_dice"]) if ref else None
    (HERE / "results.json").write_text(
        json.dumps({"reference": args.reference, "arms": arms}, indent=1) + "\n"
    )
    print(
        "| arm | leaf Dice | CSF L / R | GM L / R | WM L / R | HD95 leaves (mm) | ECE | "
        f"entropy AUROC | s / case | vs {args.reference} (per case) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, a in arms.items():
        d = {k: 100 * v for k, v in a["dice"].items()}
        p = a["vs_reference"]
        vs = f"{100 * p['mean']:+.1f} (s.d. {100 * p['sd']:.1f}), {p['better']}/{p['n']}"
        print(
            f"| {name} | {100 * a['leaf_dice']:.1f} "
            f"| {d['Left-CSF']:.1f} / {d['Right-CSF']:.1f} "
            f"| {d['Left-GM']:.1f} / {d['Right-GM']:.1f} "
            f"| {d['Left-WM']:.1f} / {d['Right-WM']:.1f} | "
            f"{a['hd95_leaves_mm']:.2f} | {a['ece']:.3f} | {a['entropy_auroc_errors']:.3f} | "
            f"{a['seconds_per_case']:.1f} | {vs if name != args.reference else '—'} |"
        )


if __name__ == "__main__":
    main()
