"""Sliding windows over a volume, blended with a Gaussian importance map (as nnU-Net does).

Windows of the model's patch size step by `patch * (1 - overlap)` (rounded down, at least
1) and the last window on each axis is flush with the end, so every voxel is covered; a
volume smaller than the patch is padded by the caller. Each window's prediction is
weighted by a Gaussian centred on the window (sigma = patch / 8), so voxels near window
borders, where the network sees less context, count less; the blend is the weighted mean.
"""

from __future__ import annotations

import itertools

import numpy as np


def gaussian_weights(patch: tuple[int, int, int], sigma_scale: float = 0.125) -> np.ndarray:
    """[X, Y, Z] float32 importance map: a Gaussian with max 1, its minimum clipped above 0."""
    axes = []
    for n in patch:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2
        sigma = max(n * sigma_scale, 1e-6)
        axes.append(np.exp(-0.5 * (x / sigma) ** 2))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    w /= w.max()
    return np.maximum(w, 1e-3).astype(np.float32)


def _starts(n: int, p: int, overlap: float) -> list[int]:
    if n <= p:
        return [0]
    step = max(1, int(p * (1 - overlap)))
    starts = list(range(0, n - p, step))
    return [*starts, n - p]


def window_starts(
    shape: tuple[int, int, int], patch: tuple[int, int, int], overlap: float = 0.5
) -> list[tuple[int, int, int]]:
    """Corner of every window over `shape` (each axis >= the patch), in C order."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if any(n < p for n, p in zip(shape, patch, strict=True)):
        raise ValueError(f"volume {shape} is smaller than the patch {patch}: pad it first")
    per_axis = [_starts(n, p, overlap) for n, p in zip(shape, patch, strict=True)]
    return list(itertools.product(*per_axis))


def pad_to(
    image: np.ndarray, patch: tuple[int, int, int], value: float
) -> tuple[np.ndarray, tuple[slice, ...]]:
    """[X, Y, Z, ...] → padded to at least `patch` (centred, constant `value`) and the slices
    that cut the original back out."""
    pads, crop = [], []
    for n, p in zip(image.shape[:3], patch, strict=True):
        extra = max(0, p - n)
        pads.append((extra // 2, extra - extra // 2))
        crop.append(slice(extra // 2, extra // 2 + n))
    pads += [(0, 0)] * (image.ndim - 3)
    return np.pad(image, pads, constant_values=value), tuple(crop)


class Blender:
    """Accumulates weighted window predictions [*patch, ...] into a volume; `result()` divides."""

    def __init__(self, shape: tuple[int, int, int], patch: tuple[int, int, int], channels: int):
        self.patch = tuple(patch)
        self.weights = gaussian_weights(self.patch)
        self.sum = np.zeros((*shape, channels), np.float32)
        self.norm = np.zeros(shape, np.float32)

    def add(self, start: tuple[int, int, int], values: np.ndarray) -> None:
        """values [X, Y, Z, channels] of the window at `start`."""
        sl = tuple(slice(s, s + p) for s, p in zip(start, self.patch, strict=True))
        self.sum[sl] += values * self.weights[..., None]
        self.norm[sl] += self.weights

    def result(self) -> np.ndarray:
        return self.sum / self.norm[..., None]
