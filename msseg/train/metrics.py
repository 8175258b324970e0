"""Training logs: metrics.jsonl (and the same scalars as a TensorBoard events file), a
one-line progress display with ETA, and the curves as PNG.

Only process 0 writes (house style 12); every process may call these and the others no-op.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
from absl import logging

from msseg.cluster import is_main
from msseg.files import atomic_write
from msseg.train import tensorboard as _tb


class MetricsLog:
    """Appends one JSON object per logged step to `<workdir>/metrics.jsonl`; with
    `tensorboard`, also each numeric field as a scalar (tag `tensorboard.scalar_tag(key)`) to
    a new events file in `<workdir>/tensorboard/`.

    A fresh run (start_step 0) starts the file anew; a run resumed from the checkpoint of
    `start_step` first drops the rows past that step (logged after the checkpoint by a run
    that was then stopped), so the rows it appends hold every step once. The events files
    of earlier runs are cut the same way (`tensorboard.truncate_events`; also when
    `tensorboard` is off, so they never disagree with metrics.jsonl).
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        total_steps: int,
        start_step: int = 0,
        tensorboard: bool = False,
    ):
        self.path = Path(workdir) / "metrics.jsonl"
        self.total = total_steps
        self.start_step = start_step
        self.start = time.time()
        self.main = is_main()
        self.events = None
        if not self.main:
            return
        if self.path.exists():
            if start_step == 0:
                self.path.unlink()
            else:
                truncate_metrics(self.path, start_step)
        events_dir = Path(workdir) / _tb.SUBDIR
        _tb.truncate_events(events_dir, start_step)
        if tensorboard:
            self.events = _tb.EventWriter(events_dir, start_step)

    def write(self, step: int, metrics: dict) -> None:
        if not self.main:
            return
        row = {"step": int(step), "wall_s": round(time.time() - self.start, 3)}
        values = {k: float(np.asarray(v)) for k, v in metrics.items()}
        for k, v in values.items():
            row[k] = v if math.isfinite(v) else str(v)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.events is not None:  # wall_s: TensorBoard has each event's wall time
            self.events.write(int(step), {_tb.scalar_tag(k): v for k, v in values.items()})

    def progress(self, step: int, metrics: dict) -> None:
        """`step 120/600 (20%) loss 0.0412 | 1.85 steps/s | eta 4m19s`."""
        if not self.main:
            return
        done = step - self.start_step
        elapsed = time.time() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        loss = float(np.asarray(metrics.get("loss", float("nan"))))
        logging.info(
            "step %d/%d (%d%%) loss %.4g | %.2f steps/s | eta %s",
            step,
            self.total,
            100 * step // max(self.total, 1),
            loss,
            rate,
            _duration(eta),
        )


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def truncate_metrics(path: str | os.PathLike, last_step: int) -> int:
    """Rewrites a metrics.jsonl atomically without its rows past `last_step` (and any line
    that is not a whole row, e.g. one cut off by a kill); returns how many lines it dropped."""
    kept, dropped = [], 0
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        try:
            step = json.loads(line)["step"]
            keep = int(step) <= last_step
        except (ValueError, TypeError, KeyError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        text = "".join(f"{line}\n" for line in kept)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        logging.info("%s: dropped %d rows past step %d (resumed there)", path, dropped, last_step)
    return dropped


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a metrics.jsonl; for repeated steps (a resumed run) the last row wins."""
    rows = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[(row["step"], "val_dice" in row)] = row
    return [rows[k] for k in sorted(rows)]


def plot_curves(metrics_path: str | os.PathLike, out_png: str | os.PathLike) -> None:
    """Loss terms per depth, learning rate and validation Dice per depth against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_dice" in r]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    steps = [r["step"] for r in train]
    for key in sorted({k for r in train for k in r}):
        if key == "loss" or key.startswith(("mse/", "ce/", "dice/")):
            axes[0].plot(steps, [_num(r.get(key)) for r in train], label=key, lw=1)
    axes[0].set_yscale("log")
    axes[0].set_title("training loss")
    axes[0].legend(fontsize=7)
    axes[1].plot(steps, [_num(r.get("lr")) for r in train])
    axes[1].set_title("learning rate")
    vsteps = [r["step"] for r in val]
    for key in sorted({k for r in val for k in r if k.endswith("/leaves")}):
        axes[2].plot(vsteps, [_num(r.get(key)) for r in val], marker="o", label=key)
    axes[2].set_title("validation Dice (foreground leaves)")
    axes[2].set_ylim(0, 1)
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(out_png, lambda tmp: fig.savefig(tmp, dpi=90))
    plt.close(fig)


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")
