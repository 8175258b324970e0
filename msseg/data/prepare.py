"""The per-image transform the model sees: resample to the model's spacing, find the head
(Otsu threshold, largest component, holes filled), crop to its box plus a margin, clip
intensities to percentiles inside the head and scale them to zero mean / unit std there.

The cache builder (msseg.data.preprocess) and inference (msseg.inference.predict) both call
`prepare_image`, so a scan is seen at inference exactly as the training cases were.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from msseg import io


def check_spacing(spacing) -> tuple[float, float, float]:
    """Three finite voxel sizes > 0 (mm) as floats; ValueError otherwise."""
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be three numbers (mm), got {spacing!r}") from None
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be three finite sizes > 0 (mm), got {spacing!r}")
    return values


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)  # mm
    margin_mm: float = 10.0  # kept around the head box
    clip_percentiles: tuple[float, float] = (0.5, 99.5)  # inside the head
    label_resample: str = "onehot"  # "onehot" (linear on one-hot, argmax) or "nearest"
    max_indices: int = 10_000  # voxel positions kept per label id for patch sampling

    def __post_init__(self):
        check_spacing(self.spacing)
        if not (np.isfinite(self.margin_mm) and self.margin_mm >= 0):
            raise ValueError(f"margin_mm must be a finite number >= 0, got {self.margin_mm}")


@dataclasses.dataclass(frozen=True)
class Prepared:
    """An image as the model sees it, and how to get back to the source grid."""

    image: np.ndarray  # [X, Y, Z] float32, normalised, cropped
    affine: np.ndarray  # 4x4 voxel->world of `image`
    box: tuple[tuple[int, int], ...]  # crop box (lo, hi) per axis in the resampled grid
    resampled_shape: tuple[int, int, int]
    resampled_affine: np.ndarray


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1D sample (maximises the between-class variance)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])  # upper edge of the lower class


def head_mask(image: np.ndarray) -> np.ndarray:
    """[X, Y, Z] bool: the largest bright component above the Otsu threshold, holes filled."""
    top = np.percentile(image, 99.9)
    mask = image > otsu_threshold(np.minimum(image, top).ravel())
    return ndimage.binary_fill_holes(largest_piece(mask))


def largest_piece(mask: np.ndarray) -> np.ndarray:
    """[X, Y, Z] bool: the largest face-connected piece of `mask` (`mask` itself if <= 1)."""
    components, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    sizes[0] = 0
    return components == int(sizes.argmax())


def crop_box(mask: np.ndarray, margin: np.ndarray) -> tuple[tuple[int, int], ...]:
    """(lo, hi) per axis: the mask's bounding box grown by `margin` voxels, inside the volume."""
    if not mask.any():
        return tuple((0, n) for n in mask.shape)
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + 1 + margin, mask.shape)
    return tuple((int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def normalize(image: np.ndarray, mask: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Clip to percentiles inside `mask`, then zero mean / unit std inside `mask`."""
    inside = image[mask] if mask.any() else image.ravel()
    lo, hi = np.percentile(inside, percentiles)
    clipped = np.clip(image, lo, hi)
    inside = np.clip(inside, lo, hi)
    return ((clipped - inside.mean()) / max(float(inside.std()), 1e-6)).astype(np.float32)


def prepare_image(volume: io.Volume, cfg: PreprocessConfig) -> tuple[Prepared, np.ndarray]:
    """Resample, crop and normalise an image; also returns the head mask of the cropped grid."""
    data, affine = io.resample(volume.data, volume.affine, cfg.spacing, order=1)
    mask = head_mask(data)
    box = crop_box(mask, np.ceil(cfg.margin_mm / np.asarray(cfg.spacing)).astype(int))
    sl = tuple(slice(a, b) for a, b in box)
    shift = np.eye(4)
    shift[:3, 3] = [a for a, _ in box]
    image = normalize(data[sl], mask[sl], cfg.clip_percentiles)
    prepared = Prepared(image, affine @ shift, box, tuple(data.shape), affine)
    return prepared, mask[sl]
