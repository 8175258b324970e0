"""Post-processing of a segmentation on the input's grid, as nnU-Net and FastSurfer do it: the
brain is one connected piece, so whatever a model labels outside it (in the face, the neck, the
skull base of a full-head scan) is dropped. `brain_mask` is what a stripping model's output
becomes before the second model segments the stripped scan (`--strip_model`); `bounded` keeps
it within a second stripper's brain (`--strip_bound_model`).

  none     the labels as decided
  largest  only the largest connected component of the brain (every label > 0, face-connected
           voxels) keeps its labels; every other foreground voxel becomes background
"""

from __future__ import annotations

import enum

import numpy as np
from scipy import ndimage

from msseg.data.prepare import largest_piece


class Postprocess(enum.StrEnum):
    NONE = "none"
    LARGEST = "largest"


POSTPROCESSES = tuple(p.value for p in Postprocess)
OPEN_MM = 6.0  # brain_mask's opening radius (chosen on the mni152-heads validation split)
BOUND_MM = 2.0  # how far a bounding stripper's brain is grown (chosen on the same split)


def largest_component(labels: np.ndarray) -> np.ndarray:
    """`labels` [X, Y, Z] with every foreground voxel outside the largest face-connected
    component of the foreground (labels > 0) set to 0; unchanged when it is one piece (or
    empty). Ties between equal components go to the first in scan order."""
    brain = labels > 0
    piece = largest_piece(brain)
    if piece is brain:
        return labels
    return np.where(piece, labels, 0).astype(labels.dtype)


def brain_mask(labels: np.ndarray, spacing, open_mm: float = OPEN_MM) -> np.ndarray:
    """[X, Y, Z] bool: the brain of a full-head segmentation (labels > 0 on a grid of `spacing`
    mm). Its largest piece is opened by `open_mm` (eroded by that Euclidean distance, the
    largest piece kept, grown back by the same distance inside the foreground), which cuts the
    thin bridges by which false brain in the skull base, the face or the neck hangs on the
    brain; then holes are filled."""
    brain = largest_piece(labels > 0)
    if open_mm > 0 and brain.any():
        sampling = tuple(float(s) for s in spacing)
        core = ndimage.distance_transform_edt(brain, sampling=sampling) > open_mm
        if core.any():
            core = largest_piece(core)
            grown = ndimage.distance_transform_edt(~core, sampling=sampling) <= open_mm
            brain = largest_piece(grown & brain)
    return ndimage.binary_fill_holes(brain)


def bounded(brain: np.ndarray, bound: np.ndarray, spacing, grow_mm: float = BOUND_MM):
    """[X, Y, Z] bool: `brain` where it lies within `grow_mm` (Euclidean, on a grid of
    `spacing` mm) of `bound`, another stripper's brain. A coarse stripper that sees the whole
    head in one window does not take the neck for brain, and a fine one draws the sharper
    boundary: the fine brain bounded by the coarse keeps the best of both."""
    sampling = tuple(float(s) for s in spacing)
    near = ndimage.distance_transform_edt(~bound, sampling=sampling) <= grow_mm
    return brain & near


def apply(labels: np.ndarray, mode: Postprocess | str) -> np.ndarray:
    """`labels` post-processed by `mode` (a `Postprocess` or its value)."""
    mode = Postprocess(mode)
    if mode == Postprocess.LARGEST:
        return largest_component(labels)
    return labels
