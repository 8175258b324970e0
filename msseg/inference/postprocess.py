"""Post-processing of a segmentation on the input's grid, as nnU-Net and FastSurfer do it: the
brain is one connected piece, so whatever a model labels outside it (in the face, the neck, the
skull base of a full-head scan) is dropped.

  none     the labels as decided
  largest  only the largest connected component of the brain (every label > 0, face-connected
           voxels) keeps its labels; every other foreground voxel becomes background
"""

from __future__ import annotations

import enum

import numpy as np
from scipy import ndimage


class Postprocess(enum.StrEnum):
    NONE = "none"
    LARGEST = "largest"


POSTPROCESSES = tuple(p.value for p in Postprocess)


def largest_component(labels: np.ndarray) -> np.ndarray:
    """`labels` [X, Y, Z] with every foreground voxel outside the largest face-connected
    component of the foreground (labels > 0) set to 0; unchanged when it is one piece (or
    empty). Ties between equal components go to the first in scan order."""
    components, n = ndimage.label(labels > 0)
    if n <= 1:
        return labels
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    sizes[0] = 0
    return np.where(components == int(sizes.argmax()), labels, 0).astype(labels.dtype)


def apply(labels: np.ndarray, mode: Postprocess | str) -> np.ndarray:
    """`labels` post-processed by `mode` (a `Postprocess` or its value)."""
    mode = Postprocess(mode)
    if mode == Postprocess.LARGEST:
        return largest_component(labels)
    return labels
