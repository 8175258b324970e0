"""Plots of the experiment suite's results: one PNG per experiment, two panels drawn by the
experiment's function here (matplotlib Figure objects, no pyplot state, as
msseg.evaluation.plots)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from msseg import files

Draw = Callable[[Sequence[Axes], dict], None]  # draws results.json `res` on the two panels


def _save(fig, path: Path) -> None:
    files.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight"))


def plot(name: str, draw: Draw, res: dict, folder: Path) -> list[str]:
    """Writes experiment `name`'s PNG, drawn by `draw`, into `folder`; returns the file names."""
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    draw(axes, res)
    fig.tight_layout()
    out = f"{name}.png"
    _save(fig, folder / out)
    return [out]


def _bars(ax, groups: list[str], series: dict[str, list[float]], ylabel: str) -> None:
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, groups, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def _levels(r: dict) -> list[str]:
    return sorted(r["dice"], key=int)


def _calibration(arms: dict) -> dict[str, list[float]]:
    """ECE and entropy AUROC x 100 of each arm's evaluation (bar series)."""
    return {
        "ECE x 100": [100 * (r["ece"] or 0) for r in arms.values()],
        "entropy AUROC x 100": [100 * (r["auroc_entropy_error"] or 0) for r in arms.values()],
    }


def _reliability(axes, arms: dict, bars: dict[str, list[float]]) -> None:
    """Each arm's reliability curve, and the bar series `bars` of each arm."""
    for arm, r in arms.items():
        rel = r["reliability"]
        bins = zip(rel["confidence"], rel["accuracy"], rel["count"], strict=True)
        pts = [(c, a) for c, a, n in bins if n]
        if pts:
            c, a = zip(*pts, strict=True)
            axes[0].plot(c, a, "o-", label=arm, ms=3)
    axes[0].plot([0, 1], [0, 1], "k--", lw=0.8)
    axes[0].set_xlabel("confidence of the decided label")
    axes[0].set_ylabel("accuracy")
    axes[0].set_title("Reliability (foreground region)")
    axes[0].legend(fontsize=8)
    _bars(axes[1], list(arms), bars, "x 100")
    axes[1].set_title("Calibration and error detection")


# ------------------------------------------------------------------------ the experiments


def multiscale(axes, res: dict) -> None:
    """Dice per label and per tree level of both models."""
    arms = res["arms"]
    labels = list(next(iter(arms.values()))["labels"])
    _bars(
        axes[0],
        labels,
        {a: [100 * r["labels"][k]["dice"] for k in labels] for a, r in arms.items()},
        "Dice x 100",
    )
    axes[0].set_title("Dice per label")
    lv = _levels(next(iter(arms.values())))
    _bars(
        axes[1],
        [f"level {v}" for v in lv],
        {a: [100 * r["dice"][v] for v in lv] for a, r in arms.items()},
        "Dice x 100",
    )
    axes[1].set_title("Dice per tree level")


def lowres(axes, res: dict) -> None:
    """Dice per tree level of each model on each input, and at the leaves."""
    series, groups = {}, None
    for arm, runs in res["arms"].items():
        for key, r in runs.items():
            groups = groups or [f"level {v}" for v in _levels(r)]
            series[f"{arm}: {key}"] = [100 * r["dice"][v] for v in _levels(r)]
    _bars(axes[0], groups, series, "Dice x 100")
    axes[0].set_title("Dice per tree level and input")
    leaves = {k: v[-1] for k, v in series.items()}
    axes[1].barh(list(leaves), list(leaves.values()))
    axes[1].set_xlabel("Dice x 100 (leaves)")
    axes[1].set_title("Leaves")


def diffusion(axes, res: dict) -> None:
    """Reliability, calibration and error detection of each model."""
    _reliability(axes, res["arms"], _calibration(res["arms"]))


def cost(axes, res: dict) -> None:
    """Dice against denoiser evaluations and against wall time, per sampler setting."""
    rows = res["settings"]
    for key, ax, xlabel in (
        ("denoiser_evals_per_case", axes[0], "denoiser evaluations per case"),
        ("median_seconds_per_case", axes[1], "seconds per case (median)"),
    ):
        for r in rows:
            ax.scatter(r[key], 100 * r["dice_leaves_ddpm_cases"], s=20)
            ax.annotate(r["setting"], (r[key], 100 * r["dice_leaves_ddpm_cases"]), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"Dice x 100 (leaves, {len(res['ddpm_cases'])} DDPM case(s))")
        ax.grid(alpha=0.3)
    axes[0].set_title("Quality vs denoiser evaluations")
    axes[1].set_title("Quality vs wall time")


def recipe(axes, res: dict) -> None:
    """As `diffusion`, for each seed's two models, with their leaf Dice."""
    arms = {
        f"{arm} (seed {seed})": r
        for seed, runs in res["seeds"].items()
        for arm, r in runs["arms"].items()
    }
    bars = _calibration(arms)
    bars["Dice leaves x 100"] = [100 * r["dice_leaves"] for r in arms.values()]
    _reliability(axes, arms, bars)


def screen(axes, res: dict) -> None:
    """Leaf Dice, calibration and error detection of each screened arm."""
    arms = res["arms"]
    axes[0].barh(list(arms), [100 * r["dice_leaves"] for r in arms.values()])
    axes[0].set_xlabel("Dice x 100 (leaves)")
    axes[0].set_title(f"Leaf Dice after {res['steps']} steps")
    _bars(axes[1], list(arms), _calibration(arms), "x 100")
    axes[1].set_title("Calibration and error detection")


def skips(axes, res: dict) -> None:
    """Leaf Dice against the time per train step, and each case's leaf Dice against the plain
    U-Net's."""
    for d, r in res["arms"].items():
        x = res["costs"][d]["s_per_train_step"] or 0
        axes[0].scatter(x, 100 * r["dice_leaves"], s=30)
        axes[0].annotate(d, (x, 100 * r["dice_leaves"]), fontsize=8)
    axes[0].set_xlabel("seconds per train step (benchmark, median)")
    axes[0].set_ylabel("Dice x 100 (leaves)")
    axes[0].set_title("Accuracy vs cost")
    axes[0].grid(alpha=0.3)
    plain = res["arms"]["unet"]["case_dice"]
    for d, r in res["arms"].items():
        if d == "unet":
            continue
        cases = sorted(set(plain) & set(r["case_dice"]))
        axes[1].scatter(
            [100 * plain[c] for c in cases], [100 * r["case_dice"][c] for c in cases], s=15, label=d
        )
    lo, hi = axes[1].get_xlim()
    axes[1].plot([lo, hi], [lo, hi], "k--", lw=0.8)
    axes[1].set_xlabel("U-Net leaf Dice x 100 (per case)")
    axes[1].set_ylabel("design's leaf Dice x 100")
    axes[1].set_title("Case by case against the plain U-Net")
    axes[1].legend(fontsize=8)


def sota(axes, res: dict) -> None:
    """Leaf Dice against training wall-clock, every model's curve (msseg: one point per
    budget, each a run of its own; peers: the snapshots of one constant-rate run), and leaf
    Dice against seconds per case at each budget's equal wall-clock."""
    for name, points in res["curves"].items():
        if points:
            axes[0].plot(
                [p["train_s"] for p in points],
                [100 * p["dice_leaves"] for p in points],
                "o-",
                ms=4,
                label=name,
            )
    for r in res["budgets"].values():
        axes[0].axvline(r["clock_s"], color="k", lw=0.6, ls=":")
    axes[0].set_xlabel("training wall-clock (s, this machine)")
    axes[0].set_ylabel("Dice x 100 (leaves)")
    axes[0].set_title("Dice vs training time (dotted: msseg's budgets)")
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3)
    for b, r in res["budgets"].items():
        arms = {**r["msseg"], **{p: v for p, v in r["equal_time"].items() if v is not None}}
        for name, v in arms.items():
            axes[1].scatter(v["median_seconds_per_case"], 100 * v["dice_leaves"], s=20)
            axes[1].annotate(
                f"{name} ({b})", (v["median_seconds_per_case"], 100 * v["dice_leaves"]), fontsize=6
            )
    axes[1].set_xscale("log")
    axes[1].set_xlabel("seconds per case (median)")
    axes[1].set_ylabel("Dice x 100 (leaves)")
    axes[1].set_title("Equal wall-clock: accuracy vs inference cost")
    axes[1].grid(alpha=0.3)
