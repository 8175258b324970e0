"""Evaluation figures: metric box plots per label and mid-slice overlays of single cases.

Functions build ``matplotlib.figure.Figure`` objects without pyplot (no global state; PNGs
render with Agg); the caller saves them. Overlays expect canonical RAS+ arrays
``[X, Y, Z]`` as ``msseg.io`` loads them: axial = fixed Z, coronal = fixed Y,
sagittal = fixed X, each drawn with the patient's superior/anterior side up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from msseg import labels as labels_lib

VIEWS: tuple[str, ...] = ("axial", "coronal", "sagittal")
_ALPHA = 0.55


@dataclasses.dataclass(frozen=True, eq=False)
class Preview:
    """The three mid slices of one case, small enough to keep for every case.

    ``ref``/``pred``/``image`` hold one 2D array per view in ``VIEWS`` order: axial
    ``[X, Y]``, coronal ``[X, Z]``, sagittal ``[Y, Z]``; ``image`` is None without an image.
    """

    ref: tuple[np.ndarray, ...]
    pred: tuple[np.ndarray, ...]
    image: tuple[np.ndarray, ...] | None
    spacing: tuple[float, float, float]
    centre: tuple[int, int, int]


def _slices(volume: np.ndarray, centre: Sequence[int]) -> tuple[np.ndarray, ...]:
    x, y, z = centre
    return (volume[:, :, z].copy(), volume[:, y, :].copy(), volume[x, :, :].copy())


def make_preview(
    ref: np.ndarray,
    pred: np.ndarray,
    spacing: Sequence[float],
    image: np.ndarray | None = None,
) -> Preview:
    """Mid slices through the centre of the reference foreground's bounding box.

    Args:
      ref: ``[X, Y, Z]`` reference ids (0 background, ``labels.IGNORE`` unlabelled).
      pred: ``[X, Y, Z]`` predicted ids.
      spacing: voxel size in mm per axis.
      image: optional ``[X, Y, Z]`` intensity image on the same grid.
    """
    ref, pred = np.asarray(ref), np.asarray(pred)
    fg = np.argwhere((ref != 0) & (ref != labels_lib.IGNORE))
    if fg.size:
        centre = tuple(int(c) for c in (fg.min(0) + fg.max(0)) // 2)
    else:
        centre = tuple(int(n) // 2 for n in ref.shape)
    return Preview(
        ref=_slices(ref, centre),
        pred=_slices(pred, centre),
        image=None if image is None else _slices(np.asarray(image, np.float32), centre),
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        centre=centre,
    )


def _rgba_table(protocol: labels_lib.Protocol) -> np.ndarray:
    """``[256, 4]`` float RGBA per id: protocol colours, background and IGNORE transparent."""
    table = np.zeros((256, 4))
    table[: protocol.num_ids, :3] = protocol.colours() / 255.0
    table[1 : protocol.num_ids, 3] = _ALPHA
    return table


def _grey(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, (1, 99)) if image.size else (0.0, 1.0)
    return np.clip((image - lo) / max(float(hi - lo), 1e-6), 0, 1)


def overlay_figure(preview: Preview, protocol: labels_lib.Protocol, title: str):
    """Rows: reference, prediction, disagreement (red); columns: axial, coronal, sagittal."""
    from matplotlib.figure import Figure

    sx, sy, sz = preview.spacing
    aspects = (sy / sx, sz / sx, sz / sy)  # rows / columns of each transposed slice
    table = _rgba_table(protocol)
    fig = Figure(figsize=(11, 10.5))
    axes = fig.subplots(3, 3)
    for col, view in enumerate(VIEWS):
        ref, pred = preview.ref[col], preview.pred[col]
        scored = ref != labels_lib.IGNORE
        wrong = np.zeros((*ref.shape, 4))
        wrong[scored & (ref != pred)] = (1.0, 0.1, 0.1, 0.8)
        layers = (table[ref], table[pred], wrong)
        for row, (name, layer) in enumerate(
            zip(("reference", "prediction", "errors"), layers, strict=True)
        ):
            ax = axes[row, col]
            grey = np.zeros(ref.shape) if preview.image is None else _grey(preview.image[col])
            kw = {"origin": "lower", "aspect": aspects[col], "interpolation": "nearest"}
            ax.imshow(grey.T, cmap="gray", vmin=0, vmax=1, **kw)
            ax.imshow(layer.transpose(1, 0, 2), **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}, {view}", fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def boxplot_figure(
    groups: Sequence[np.ndarray],
    names: Sequence[str],
    colours: np.ndarray,
    metric: str,
    unit: str = "",
):
    """One box per label: ``groups[i]`` holds the metric's values of label ``names[i]``.

    ``colours`` is ``[len(groups), 3]`` uint8 RGB (the protocol's label colours).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 0.38 * len(groups) + 2.0), 4.8))
    ax = fig.subplots()
    if groups:
        boxes = ax.boxplot([np.asarray(g, float) for g in groups], patch_artist=True, widths=0.6)
        for patch, rgb in zip(boxes["boxes"], np.asarray(colours) / 255.0, strict=True):
            patch.set_facecolor((*rgb, 0.8))
            patch.set_edgecolor("0.2")
        ax.set_xticks(range(1, len(names) + 1), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(f"{metric} ({unit})" if unit else metric)
    ax.set_title(f"{metric} per label ({len(groups)} labels)")
    ax.grid(axis="y", alpha=0.3)
    if metric in ("dice", "vs"):
        ax.set_ylim(-0.02, 1.02)
    fig.tight_layout()
    return fig
