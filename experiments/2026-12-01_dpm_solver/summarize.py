"""Table of run.sh's evaluations: leaf / brain Dice, leaf HD95, ECE, seconds per case, and the
paired per-case leaf Dice difference against DDIM-5 (mean ± std, cases better).

  python experiments/2026-12-01_dpm_solver/summarize.py OUT [--json results.json]
"""

import argparse
import json
import statistics
from pathlib import Path

RUNS = ("ddim-5", "dpmpp2m-3", "dpmpp2m-5", "ddim-10", "dpmpp2m-10")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--json")
    a = ap.parse_args()
    got = {}
    for r in RUNS:
        f = Path(a.out) / r / "summary.json"
        if f.is_file():
            got[r] = json.loads(f.read_text())
    base = got["ddim-5"]["case_dice"]
    rows = []
    print(
        "| sampler | evaluations / case | leaf Dice | brain Dice | leaf HD95 (mm) | ECE "
        "| s / case (median) | leaf vs DDIM-5 (points, paired) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r, s in got.items():
        lv = s["levels"]
        d = [100 * (s["case_dice"][c] - base[c]) for c in base]
        row = {
            "run": r,
            "evals_per_case": s["segmentation"]["denoiser_evals_per_case"],
            "leaf_dice": lv["2"]["dice"]["mean"],
            "brain_dice": lv["0"]["dice"]["mean"],
            "leaf_hd95": lv["2"]["hd95"]["mean"],
            "ece": s["calibration"]["ece"],
            "median_s_per_case": s["segmentation"]["median_seconds_per_case"],
            "diff_mean": statistics.mean(d),
            "diff_std": statistics.stdev(d),
            "better": sum(x > 0 for x in d),
            "n": len(d),
        }
        rows.append(row)
        paired = f"{row['diff_mean']:+.2f} ± {row['diff_std']:.2f}"
        paired = "–" if r == "ddim-5" else f"{paired} ({row['better']}/{row['n']} better)"
        print(
            f"| {r} | {row['evals_per_case']:.1f} | {row['leaf_dice']:.4f} | "
            f"{row['brain_dice']:.4f} | {row['leaf_hd95']:.2f} | {row['ece']:.3f} | "
            f"{row['median_s_per_case']:.1f} | {paired} |"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
