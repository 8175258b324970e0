"""Score predicted against reference id maps per label and tree level; write CSV, JSON, PNGs.

Every label of every tree level (``Protocol.levels()``) is scored, background (leaf 0)
excepted; a node's mask is the union of its leaves (``Protocol.membership()``). A leaf that
sits above the deepest level appears at several levels with the same values.

Reference voxels outside the scored set are excluded: for every label, the voxels where the
reference is ``labels.IGNORE`` (255), or a partial label (a node or named set) that neither
lies inside the label nor misses it (e.g. "white matter, either side" when scoring
Left-WM), are set to False in both the predicted and the reference mask before any metric
(Dice, VS, volumes and surface distances alike) is computed. A predicted voxel belongs to
a label when all the leaves its id names belong to it (IGNORE belongs to none).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from msseg import files
from msseg import labels as labels_lib
from msseg.evaluation import metrics as metrics_lib
from msseg.evaluation import plots

METRICS: tuple[str, ...] = ("dice", "hd95", "assd", "vs")
UNITS: dict[str, str] = {"dice": "", "hd95": "mm", "assd": "mm", "vs": "", "vol": "mm3"}
COLUMNS: tuple[str, ...] = (
    "case",
    "level",
    "label_id",
    "label",
    "dice",
    "hd95",
    "assd",
    "vs",
    "ref_vol_mm3",
    "pred_vol_mm3",
)


@dataclasses.dataclass(frozen=True)
class Row:
    """One case × label × level of ``metrics.csv``; distances in mm, volumes in mm³."""

    case: str
    level: int
    label_id: int
    label: str
    dice: float
    hd95: float
    assd: float
    vs: float
    ref_vol_mm3: float
    pred_vol_mm3: float
    depth: int | None = None


@dataclasses.dataclass(frozen=True)
class Report:
    """What ``write_report`` wrote: the rows, the summary dict and the output paths."""

    rows: tuple[Row, ...]
    summary: dict[str, Any]
    files: tuple[str, ...]


def label_tables(protocol: labels_lib.Protocol) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lookup tables ``[num_ids, 256]`` bool, indexed ``[label, voxel id]``.

    Returns ``(inside, outside, excluded)``: a voxel id is inside a label when all its
    leaves belong to the label, outside when none does, and excluded (reference only)
    when some do (a partial label straddling the label) or the id is IGNORE.
    """
    inside, outside = protocol.relations()
    excluded = ~inside & ~outside
    return inside, outside, excluded


def _check_ids(ids: np.ndarray, protocol: labels_lib.Protocol, what: str) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"{what} ids must be integers, got dtype {ids.dtype}")
    bad = ((ids >= protocol.num_ids) & (ids != labels_lib.IGNORE)) | (ids < 0)
    if bad.any():
        values = np.unique(ids[bad]).tolist()[:10]
        raise ValueError(f"{what} ids not in protocol {protocol.name!r}: {values}")
    return ids.astype(np.uint8)


def label_masks(
    pred: np.ndarray, ref: np.ndarray, protocol: labels_lib.Protocol
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(label id, predicted mask, reference mask) of every non-background id of the tree's
    levels, in id order, each mask restricted to the voxels where the reference decides the
    label (not IGNORE, not a partial label straddling it): the one rule validation and
    evaluation score by."""
    inside, _, excluded = label_tables(protocol)
    for label in sorted({i for level in protocol.levels() for i in level} - {0}):
        keep = ~excluded[label][ref]
        yield label, inside[label][pred] & keep, inside[label][ref] & keep


def level_dice(pred: np.ndarray, ref: np.ndarray, protocol: labels_lib.Protocol) -> dict:
    """Dice of one case: {id name: Dice} for every non-background id of every tree level,
    {"level<l>": the mean over level l's ids} and {"leaves": the mean over the foreground
    leaves} (`label_masks`; `metrics.dice`, both empty → 1)."""
    names = protocol.id_names()
    dice = {
        label: metrics_lib.dice(p, r)
        for label, p, r in label_masks(np.asarray(pred), np.asarray(ref), protocol)
    }
    out = {names[i]: d for i, d in dice.items()}
    for lv, level in enumerate(protocol.levels()):
        scored = [dice[i] for i in level if i != 0]
        out[f"level{lv}"] = float(np.mean(scored)) if scored else float("nan")
    out["leaves"] = float(np.mean([dice[i] for i in range(1, protocol.num_leaves)]))
    return out


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    protocol: labels_lib.Protocol,
    *,
    case: str,
    hd95_mode: str = "pooled",
    depth: int | None = None,
) -> list[Row]:
    """All metrics of one case, one row per label per tree level (level-major, id order).

    Args:
      pred: ``[D, H, W]`` predicted ids (leaf ids; nodes and IGNORE are tolerated).
      ref: ``[D, H, W]`` reference ids; IGNORE voxels and straddling partial labels are
        excluded per label (see the module docstring).
      spacing: voxel size in mm per axis.
      protocol: the label protocol of both id maps.
      case: the case name written in each row.
      hd95_mode: ``"pooled"`` or ``"max"`` (see ``metrics``).
      depth: optional model depth the maps were produced at (a ``depth`` column).
    """
    pred, ref = _check_ids(pred, protocol, "pred"), _check_ids(ref, protocol, "ref")
    if pred.shape != ref.shape:
        raise ValueError(f"{case}: pred shape {pred.shape} does not match ref {ref.shape}")
    n_partial = int(np.count_nonzero(pred >= protocol.num_leaves))
    if n_partial:
        logging.warning("%s: %d predicted voxels are not leaves; scored as such", case, n_partial)
    names = protocol.id_names()
    levels = protocol.levels()
    scores = {
        label: metrics_lib.compute_metrics(p, r, spacing, hd95_mode)
        for label, p, r in label_masks(pred, ref, protocol)
    }
    return [
        Row(
            case=case,
            level=lv,
            label_id=i,
            label=names[i],
            depth=depth,
            **dataclasses.asdict(scores[i]),
        )
        for lv, level in enumerate(levels)
        for i in level
        if i != 0
    ]


def _stats(values: Iterable[float]) -> dict[str, float | int]:
    v = np.asarray(list(values), np.float64)
    if v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError(f"cannot summarise {v.size} values (none, or not all finite)")
    return {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "median": float(np.median(v)),
        "n": int(v.size),
    }


def _summarize_rows(rows: Sequence[Row]) -> dict[str, Any]:
    by_label: dict[int, list[Row]] = defaultdict(list)
    seen = set()
    for r in rows:  # a leaf carried down several levels is counted once per case
        if (r.case, r.label_id) not in seen:
            seen.add((r.case, r.label_id))
            by_label[r.label_id].append(r)
    levels_of: dict[int, list[int]] = defaultdict(list)
    by_level: dict[int, list[Row]] = defaultdict(list)
    for r in rows:
        by_level[r.level].append(r)
        if r.level not in levels_of[r.label_id]:
            levels_of[r.label_id].append(r.level)
    fields = (*METRICS, "ref_vol_mm3", "pred_vol_mm3")
    labels = {
        group[0].label: {
            "label_id": i,
            "levels": levels_of[i],
            **{f: _stats(getattr(r, f) for r in group) for f in fields},
        }
        for i, group in sorted(by_label.items())
    }
    levels = {
        str(lv): {
            "labels": list(dict.fromkeys(r.label for r in group)),
            **{m: _stats(getattr(r, m) for r in group) for m in METRICS},
        }
        for lv, group in sorted(by_level.items())
    }
    return {"labels": labels, "levels": levels}


def case_scores(rows: Sequence[Row]) -> dict[str, float]:
    """Per case, the mean Dice of its labels at the finest level (its leaves)."""
    finest = max((r.level for r in rows), default=0)
    by_case: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r.level == finest:
            by_case[r.case].append(r.dice)
    return {c: float(np.mean(v)) for c, v in by_case.items()}


def summarize(rows: Sequence[Row], **meta: Any) -> dict[str, Any]:
    """The ``summary.json`` dict: mean, std (population), median and n per label and level.

    ``meta`` entries (protocol name, hd95 mode, ...) are stored first. With a depth on the
    rows, labels and levels are given per depth under ``"depths"``. Every number is finite.
    """
    out: dict[str, Any] = dict(meta)
    scores = case_scores(rows)
    out["num_cases"] = len(scores)
    out["units"] = UNITS
    out["empty_policy"] = {
        "both_empty": {
            "dice": metrics_lib.BOTH_EMPTY_DICE,
            "vs": metrics_lib.BOTH_EMPTY_VS,
            "distance_mm": metrics_lib.BOTH_EMPTY_DISTANCE_MM,
        },
        "one_empty": {
            "dice": metrics_lib.ONE_EMPTY_DICE,
            "vs": metrics_lib.ONE_EMPTY_VS,
            "distance_mm": "image diagonal",
        },
    }
    out["case_dice"] = dict(sorted(scores.items(), key=lambda kv: (kv[1], kv[0])))
    depths = sorted({r.depth for r in rows if r.depth is not None})
    if depths:
        out["depths"] = {str(d): _summarize_rows([r for r in rows if r.depth == d]) for d in depths}
    else:
        out.update(_summarize_rows(rows))
    return out


def format_dice_table(summary: Mapping[str, Any]) -> str:
    """A compact text table of mean ± std Dice per label and level (per depth if any)."""
    parts = summary["depths"].items() if "depths" in summary else [(None, summary)]
    lines = []
    for depth, s in parts:
        if depth is not None:
            lines.append(f"depth {depth}")
        width = max([len(n) for n in s["labels"]] + [5])
        lines.append(f"{'level':>5}  {'label':<{width}}  {'dice':>6}  {'± std':>6}  {'n':>4}")
        for lv, entry in s["levels"].items():
            for name in entry["labels"]:
                d = s["labels"][name]["dice"]
                lines.append(
                    f"{lv:>5}  {name:<{width}}  {d['mean']:6.4f}  {d['std']:6.4f}  {d['n']:>4}"
                )
            m = entry["dice"]
            lines.append(f"{lv:>5}  {'(mean)':<{width}}  {m['mean']:6.4f}  {m['std']:6.4f}")
    return "\n".join(lines)


def _write_text(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    files.atomic_write(path, write)


def _save_figure(fig, path: str) -> None:
    files.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))


def rows_to_csv(rows: Sequence[Row]) -> str:
    """``metrics.csv`` text: ``COLUMNS`` (plus ``depth`` when the rows carry one)."""
    columns = COLUMNS + (("depth",) if any(r.depth is not None for r in rows) else ())
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow(
            [
                repr(v) if isinstance(v, float) else "" if v is None else v
                for v in (getattr(r, c) for c in columns)
            ]
        )
    return buf.getvalue()


def _boxplots(rows: Sequence[Row], protocol: labels_lib.Protocol, output: str) -> list[str]:
    depth = min((r.depth for r in rows if r.depth is not None), default=None)
    rows = [r for r in rows if r.depth == depth]  # the finest depth only
    order: list[int] = []
    values: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    seen = set()
    for r in rows:
        if r.label_id not in order:
            order.append(r.label_id)
        if (r.case, r.label_id) not in seen:
            seen.add((r.case, r.label_id))
            for m in METRICS:
                values[r.label_id][m].append(getattr(r, m))
    names = [protocol.id_names()[i] for i in order]
    colours = protocol.colours()[order] if order else np.zeros((0, 3), np.uint8)
    paths = []
    for m in METRICS:
        fig = plots.boxplot_figure([values[i][m] for i in order], names, colours, m, UNITS[m])
        path = os.path.join(output, f"boxplot_{m}.png")
        _save_figure(fig, path)
        paths.append(path)
    return paths


def write_report(
    rows: Sequence[Row],
    output: str | os.PathLike,
    protocol: labels_lib.Protocol,
    *,
    previews: Mapping[str, plots.Preview] | None = None,
    worst: int = 3,
    **meta: Any,
) -> Report:
    """Write ``metrics.csv``, ``summary.json``, ``boxplot_<metric>.png`` and overlays.

    ``overlay_<rank>_<case>.png`` shows the ``worst`` cases with the lowest mean leaf Dice
    (those with a preview). Every file is written atomically. ``meta`` goes into the summary.
    """
    output = os.fspath(output)
    os.makedirs(output, exist_ok=True)
    rows = tuple(rows)
    summary = summarize(rows, protocol=protocol.name, **meta)
    files = [os.path.join(output, "metrics.csv"), os.path.join(output, "summary.json")]
    _write_text(files[0], rows_to_csv(rows))
    _write_text(files[1], json.dumps(summary, indent=1, allow_nan=False) + "\n")
    files += _boxplots(rows, protocol, output)
    ranked = [c for c in summary["case_dice"] if previews and c in previews][: max(worst, 0)]
    for rank, case in enumerate(ranked, 1):
        score = summary["case_dice"][case]
        title = f"{case}: mean leaf Dice {score:.4f} (worst #{rank})"
        path = os.path.join(output, f"overlay_{rank}_{_safe(case)}.png")
        _save_figure(plots.overlay_figure(previews[case], protocol, title), path)
        files.append(path)
    logging.info("evaluation report: %d rows, %d files in %s", len(rows), len(files), output)
    return Report(rows=rows, summary=summary, files=tuple(files))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]
