"""Per-mask segmentation metrics in mm: Dice, HD95, ASSD and volume similarity.

Masks are boolean arrays ``[D, H, W]`` with a voxel spacing in mm per axis (same order).
The surface of a mask is its voxels with at least one face (6-connected) neighbour outside
the mask; the volume border counts as outside. Surface distances are Euclidean, in mm, from
each surface voxel of one mask to the nearest surface voxel of the other (a k-d tree query
over the voxel centres in mm, ``scipy.spatial.cKDTree``: the values of
``scipy.ndimage.distance_transform_edt(~surface, sampling=spacing)`` at those voxels,
without a transform of the whole box).

- HD95 ``"pooled"`` (default, as medpy's ``hd95``): the 95th percentile (``np.percentile``,
  linear interpolation) of the pooled distances pred→ref and ref→pred.
  ``"max"``: the larger of the two directed 95th percentiles.
- ASSD: the mean of the pooled distances (sum of both directions over the number of
  surface voxels of both masks). medpy's ``assd`` instead averages the two directed means.
- VS: ``1 - |A - B| / (A + B)`` with A, B the mask volumes.

Empty-mask policy: both masks empty → Dice 1, VS 1, distances 0; exactly
one empty → Dice 0, VS 0, distances = the image diagonal in mm
(``sqrt(sum((shape * spacing) ** 2))``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import ndimage, spatial

HD95_MODES: tuple[str, ...] = ("pooled", "max")

# Empty-mask policy (module docstring); with one mask empty the distances are `diagonal_mm`.
BOTH_EMPTY_DICE: float = 1.0
BOTH_EMPTY_VS: float = 1.0
BOTH_EMPTY_DISTANCE_MM: float = 0.0
ONE_EMPTY_DICE: float = 0.0
ONE_EMPTY_VS: float = 0.0


@dataclasses.dataclass(frozen=True)
class MaskMetrics:
    """All metrics of one predicted mask against its reference; distances and volumes in mm."""

    dice: float
    hd95: float
    assd: float
    vs: float
    ref_vol_mm3: float
    pred_vol_mm3: float


def _as_spacing(spacing: float | Sequence[float], ndim: int) -> np.ndarray:
    out = np.broadcast_to(np.asarray(spacing, np.float64), (ndim,)).copy()
    if not np.all(np.isfinite(out) & (out > 0)):
        raise ValueError(f"spacing must be positive and finite, got {spacing}")
    return out


def _masks(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if pred.shape != ref.shape:
        raise ValueError(f"pred shape {pred.shape} does not match ref shape {ref.shape}")
    return pred, ref


def diagonal_mm(shape: Sequence[int], spacing: float | Sequence[float]) -> float:
    """The image diagonal in mm, ``sqrt(sum((shape * spacing) ** 2))``: one-empty distance."""
    extent = np.asarray(shape, np.float64) * _as_spacing(spacing, len(shape))
    return float(np.sqrt(np.sum(extent**2)))


def surface(mask: np.ndarray) -> np.ndarray:
    """``[D, H, W]`` bool: mask voxels with a face neighbour outside (the border is outside)."""
    mask = np.asarray(mask, bool)
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, cross, border_value=0)


def surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: float | Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm between two non-empty masks ``[D, H, W]``.

    Returns ``(pred_to_ref, ref_to_pred)``: float64 ``[P]`` distances from each surface
    voxel of ``pred`` to the nearest surface voxel of ``ref`` (C order), and ``[R]`` back.
    Both are computed on the bounding box of ``pred | ref``, which gives the same result as
    the whole volume: every voxel outside the box is outside both masks.
    """
    pred, ref = _masks(pred, ref)
    sampling = _as_spacing(spacing, pred.ndim)
    if not pred.any() or not ref.any():
        raise ValueError("surface distances need two non-empty masks")
    box = _bbox(pred | ref)
    points_pred = np.argwhere(surface(pred[box])) * sampling  # C order, in mm
    points_ref = np.argwhere(surface(ref[box])) * sampling
    pred_to_ref = spatial.cKDTree(points_ref).query(points_pred)[0]
    ref_to_pred = spatial.cKDTree(points_pred).query(points_ref)[0]
    return pred_to_ref, ref_to_pred


def _bbox(mask: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of a non-empty mask, one slice per axis."""
    box = []
    for k in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != k)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _hd95(pred_to_ref: np.ndarray, ref_to_pred: np.ndarray, mode: str) -> float:
    if mode == "pooled":
        return float(np.percentile(np.concatenate([pred_to_ref, ref_to_pred]), 95))
    if mode == "max":
        return float(max(np.percentile(pred_to_ref, 95), np.percentile(ref_to_pred, 95)))
    raise ValueError(f"hd95 mode must be one of {HD95_MODES}, got {mode!r}")


def _assd(pred_to_ref: np.ndarray, ref_to_pred: np.ndarray) -> float:
    total = float(pred_to_ref.sum()) + float(ref_to_pred.sum())
    return total / (pred_to_ref.size + ref_to_pred.size)


def _empty_distance(pred: np.ndarray, ref: np.ndarray, spacing) -> float | None:
    """The policy distance when a mask is empty, else None (distances must be measured)."""
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if has_pred and has_ref:
        return None
    if not has_pred and not has_ref:
        return BOTH_EMPTY_DISTANCE_MM
    return diagonal_mm(pred.shape, spacing)


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice ``2|A∩B| / (|A| + |B|)`` of two bool masks ``[D, H, W]``; both empty → 1."""
    pred, ref = _masks(pred, ref)
    a, b = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    if a + b == 0:
        return BOTH_EMPTY_DICE
    return 2.0 * int(np.count_nonzero(pred & ref)) / (a + b)


def volume_similarity(pred: np.ndarray, ref: np.ndarray) -> float:
    """``1 - |A - B| / (A + B)`` of the mask volumes; both empty → 1, one empty → 0."""
    pred, ref = _masks(pred, ref)
    return _vs(int(np.count_nonzero(pred)), int(np.count_nonzero(ref)))


def _vs(a: int, b: int) -> float:
    if a + b == 0:
        return BOTH_EMPTY_VS
    if a == 0 or b == 0:
        return ONE_EMPTY_VS
    return 1.0 - abs(a - b) / (a + b)


def hd95(
    pred: np.ndarray, ref: np.ndarray, spacing: float | Sequence[float], mode: str = "pooled"
) -> float:
    """95th-percentile Hausdorff distance in mm (``mode``: ``"pooled"`` or ``"max"``)."""
    pred, ref = _masks(pred, ref)
    empty = _empty_distance(pred, ref, spacing)
    if mode not in HD95_MODES:
        raise ValueError(f"hd95 mode must be one of {HD95_MODES}, got {mode!r}")
    if empty is not None:
        return empty
    return _hd95(*surface_distances(pred, ref, spacing), mode)


def assd(pred: np.ndarray, ref: np.ndarray, spacing: float | Sequence[float]) -> float:
    """Average symmetric surface distance in mm: the mean of the pooled surface distances."""
    pred, ref = _masks(pred, ref)
    empty = _empty_distance(pred, ref, spacing)
    if empty is not None:
        return empty
    return _assd(*surface_distances(pred, ref, spacing))


def compute_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: float | Sequence[float],
    hd95_mode: str = "pooled",
) -> MaskMetrics:
    """Dice, HD95, ASSD, VS and both volumes of ``pred`` against ``ref`` (bool ``[D, H, W]``).

    The surfaces and distance transforms are computed once, on the bounding box of the two
    masks; results equal those of ``dice``, ``hd95``, ``assd`` and ``volume_similarity``.
    """
    pred, ref = _masks(pred, ref)
    if hd95_mode not in HD95_MODES:
        raise ValueError(f"hd95 mode must be one of {HD95_MODES}, got {hd95_mode!r}")
    voxel_mm3 = float(np.prod(_as_spacing(spacing, pred.ndim)))
    a, b = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    empty = _empty_distance(pred, ref, spacing)
    if empty is None:
        distances = surface_distances(pred, ref, spacing)
        hd, mean = _hd95(*distances, hd95_mode), _assd(*distances)
    else:
        hd = mean = empty
    overlap = int(np.count_nonzero(pred & ref)) if a and b else 0
    return MaskMetrics(
        dice=BOTH_EMPTY_DICE if a + b == 0 else 2.0 * overlap / (a + b),
        hd95=hd,
        assd=mean,
        vs=_vs(a, b),
        ref_vol_mm3=b * voxel_mm3,
        pred_vol_mm3=a * voxel_mm3,
    )
