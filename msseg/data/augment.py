"""Patch extraction and augmentation on numpy arrays, each drawing from an explicit Generator.

Spatial: a patch is read around a centre, optionally through a small random rotation and
scaling and/or a smooth random (elastic) displacement field (image linear, labels nearest),
padded where it leaves the volume; a left/right flip mirrors axis 0 (x in RAS+) and swaps
left and right label ids. Field of view: a random slab at one side of the patch cut away
(image pad value, labels background), as at the edge of a scan's field of view. Resolution:
the image as if acquired with thicker slices (blur, downsample, back to the grid; labels
untouched).
Intensity: bias field, gamma, contrast and noise on the normalised patch, or SynthSeg-style
random intensities drawn per label. Shapes: image patches [X, Y, Z], label patches [X, Y, Z]
uint8 ids.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage


def random_rotation_scaling(
    rng: np.random.Generator, max_rotation_deg: float, scale_range: tuple[float, float]
) -> np.ndarray:
    """3x3 matrix R(angles) @ diag(scales): angles uniform per axis, one scale per axis."""
    ax, ay, az = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx @ np.diag(rng.uniform(*scale_range, 3))


def extract_patch(
    image: np.ndarray,
    label: np.ndarray,
    centre: np.ndarray,
    size: tuple[int, int, int],
    *,
    matrix: np.ndarray | None = None,
    displacement: np.ndarray | None = None,
    pad_value: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The patch of `size` centred on voxel `centre`, padded outside the volume.

    With `matrix` (3x3, in voxel units) patch offset p reads volume position centre + M p;
    `displacement` ([3, *size], volume voxels, e.g. elastic_offsets) is added to the position
    each patch voxel reads (without a matrix: to the plain patch's voxel positions, so a zero
    displacement gives the plain patch). Labels outside the volume are background (0).
    """
    size = np.asarray(size)
    centre = np.asarray(centre, np.float64)
    if matrix is None and displacement is None:
        lo = np.round(centre).astype(int) - size // 2
        hi = lo + size
        src = tuple(
            slice(max(a, 0), min(b, n)) for a, b, n in zip(lo, hi, image.shape, strict=True)
        )
        dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, lo, strict=True))
        img = np.full(size, pad_value, np.float32)
        lab = np.zeros(size, np.uint8)
        img[dst] = image[src]
        lab[dst] = label[src]
        return img, lab
    if matrix is None:  # the plain patch's voxels: lo + index, as in the slicing above
        lo = np.round(centre) - size // 2
        coords = np.stack(
            np.meshgrid(*[np.arange(n) + a for n, a in zip(size, lo, strict=True)], indexing="ij")
        )
    else:
        offsets = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in size], indexing="ij"))
        coords = np.tensordot(matrix, offsets, axes=(1, 0)) + centre[:, None, None, None]
    if displacement is not None:
        coords = coords + displacement
    img = ndimage.map_coordinates(
        np.asarray(image), coords, order=1, mode="constant", cval=pad_value
    )
    lab = ndimage.map_coordinates(np.asarray(label), coords, order=0, mode="constant", cval=0)
    return img.astype(np.float32), lab.astype(np.uint8)


def elastic_offsets(
    rng: np.random.Generator, size: tuple[int, int, int], std_vox: float, grid_vox: float
) -> np.ndarray:
    """[3, *size] float32 smooth random displacement in voxels: per component, unit-normal
    control points about every `grid_vox` voxels (at least 2 per axis), cubic-spline upsampled
    to the patch (as smooth_noise, done axis by axis), times `std_vox`."""
    size = tuple(int(n) for n in size)
    control = [max(2, int(np.ceil(n / grid_vox)) + 1) for n in size]
    coarse = rng.standard_normal((3, *control))
    wx, wy, wz = (_cubic_upsampling(k, n) for k, n in zip(control, size, strict=True))
    field = np.einsum("xi,yj,zk,cijk->cxyz", wx, wy, wz, coarse, optimize=True)
    return (std_vox * field).astype(np.float32)


@functools.cache
def _cubic_upsampling(k: int, n: int) -> np.ndarray:
    """[n, k] weights: k control values → n points, ndimage.zoom's cubic spline (which is a
    tensor product, so applying this on each axis equals zooming the 3-D grid). Computed once
    per (k, n) in a process (read-only): every patch of a run asks for the same."""
    cols = [ndimage.zoom(e, n / k, order=3, mode="nearest")[:n] for e in np.eye(k)]
    weights = np.stack(cols, axis=1)
    weights.flags.writeable = False
    return weights


def fov_crop(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    max_fraction: float,
    pad_value: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A patch at the edge of a scan's field of view: on one random axis and side, a slab of
    thickness uniform in [0, max_fraction * size] voxels becomes pad_value in the image and
    background (0) in the labels, as inference pads and labels outside the scan. Returns new
    arrays (the inputs may be read-only)."""
    axis = int(rng.integers(3))
    side = int(rng.integers(2))
    n = image.shape[axis]
    width = int(rng.integers(int(max_fraction * n) + 1))
    img, lab = np.array(image, np.float32), np.array(label, np.uint8)
    cut = [slice(None)] * 3
    cut[axis] = slice(0, width) if side == 0 else slice(n - width, n)
    img[tuple(cut)] = pad_value
    lab[tuple(cut)] = 0
    return img, lab


def flip_lr(
    image: np.ndarray, label: np.ndarray, swap: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mirror axis 0 (x) and swap left/right ids through the [256] lookup table `swap`."""
    return image[::-1].copy(), swap[label[::-1]]


# Gaussian sigma of a slice profile whose full width at half maximum is one (new) voxel
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def random_resolution(image: np.ndarray, rng: np.random.Generator, max_factor: float) -> np.ndarray:
    """[X, Y, Z] image → the same grid, as if acquired at a coarser resolution: one random axis
    gets thick slices (voxel size × a factor uniform in [1, max_factor]), the other two a factor
    in [1, max(1, max_factor / 2)]. Each axis is blurred by the slice profile (a Gaussian of
    FWHM = the factor, in voxels), sampled on the coarse grid and interpolated back (linear).
    Labels stay as they are: the model learns the fine labels of a coarse image."""
    hi = max(1.0, max_factor)
    factors = rng.uniform(1.0, max(1.0, hi / 2), 3)
    factors[rng.integers(3)] = rng.uniform(1.0, hi)
    sigma = np.where(factors > 1.0, FWHM_TO_SIGMA * factors, 0.0)
    blurred = ndimage.gaussian_filter(image.astype(np.float32), sigma, mode="nearest")
    low = ndimage.zoom(blurred, 1.0 / factors, order=1, mode="nearest", grid_mode=True)
    back = [n / m for n, m in zip(image.shape, low.shape, strict=True)]
    out = ndimage.zoom(low, back, order=1, mode="nearest", grid_mode=True)
    return out[: image.shape[0], : image.shape[1], : image.shape[2]].astype(np.float32)


def smooth_noise(rng: np.random.Generator, shape, control: int = 4) -> np.ndarray:
    """[*shape] smooth unit-scale random field (cubic upsampling of a control^3 grid)."""
    coarse = rng.standard_normal((control,) * 3)
    return ndimage.zoom(coarse, [n / control for n in shape], order=3, mode="nearest")[
        : shape[0], : shape[1], : shape[2]
    ]


def intensity_augment(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    prob: float,
    gamma_range: tuple[float, float],
    bias_std: float,
    contrast_range: tuple[float, float],
    noise_std: float,
) -> np.ndarray:
    """Bias field, gamma, contrast and Gaussian noise, each applied with probability `prob`.

    Bias and gamma act on the patch rescaled to [0, 1] and map back to its range, so they
    behave the same whatever the normalisation's offset.
    """
    out = image.astype(np.float32)
    lo, hi = float(out.min()), float(out.max())
    if hi > lo and (rng.random() < prob or rng.random() < prob):
        u = (out - lo) / (hi - lo)
        if rng.random() < prob:
            u = u * np.exp(bias_std * smooth_noise(rng, u.shape)).astype(np.float32)
        if rng.random() < prob:
            u = np.clip(u, 0, None) ** rng.uniform(*gamma_range)
        out = (u * (hi - lo) + lo).astype(np.float32)
    if rng.random() < prob:
        mean = out.mean()
        out = (out - mean) * rng.uniform(*contrast_range) + mean
    if rng.random() < prob:
        out = out + rng.uniform(0, noise_std) * rng.standard_normal(out.shape, dtype=np.float32)
    return out.astype(np.float32)


def synth_intensities(
    label: np.ndarray, rng: np.random.Generator, max_blur: float = 1.0
) -> np.ndarray:
    """SynthSeg-style image: a random Gaussian per label id, blurred, then standardised."""
    means = rng.uniform(-2.0, 2.0, 256).astype(np.float32)
    stds = rng.uniform(0.0, 0.35, 256).astype(np.float32)
    img = means[label] + stds[label] * rng.standard_normal(label.shape, dtype=np.float32)
    sigma = rng.uniform(0.0, max_blur)
    if sigma > 0.1:
        img = ndimage.gaussian_filter(img, sigma)
    return ((img - img.mean()) / max(float(img.std()), 1e-6)).astype(np.float32)
