"""Synthetic heads: skull, scalp, eyes and neck around a brain, and random contrasts, built from
the brain's label map alone (the SynthSeg / SynthStrip recipe: Billot et al., MedIA 2023;
Hoopes et al., NeuroImage 2022).

Around the brain mask, shells are grown by distance: dura, inner table, diploë, outer table,
muscle, fat, skin (no CSF shell: the brain label holds its CSF up to the dura). Each shell's
thickness is drawn per subject and its boundaries are moved by smooth random fields, so no two
heads are alike. A neck-like column runs down from under the skull base (the skull's shells lie
between it and the brain, so no tissue of the neck touches the brain), two eye-like ellipsoids
sit in front of and below it (at random), and up to a few random ellipsoids ("blobs") sit
anywhere outside the dura. Each region gets its own intensity: T1-like levels (relative to
white matter = 1) by default; with `random_contrast_prob` > 0 that share of the subjects draws
SynthSeg-style random levels per region, the brain's CSF/GM/WM included. Everything outside the
brain stays background in the labels: a head changes only the image.

Regions are small integer codes ([X, Y, Z] uint8): 0 air, 1 brain, then `REGIONS[2:]`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

# shells outward from the brain, with their thickness ranges in mm. No CSF shell: the brain
# label includes its CSF up to the dura (as skull-stripping masks do), so a dark CSF-like band
# outside the brain labelled background would contradict the label rule at the brain's edge
SHELLS = (
    ("dura", (0.5, 2.0)),
    ("inner table", (0.8, 2.5)),
    ("diploe", (0.5, 5.0)),
    ("outer table", (0.8, 2.5)),
    ("muscle", (0.5, 6.0)),
    ("fat", (1.0, 6.0)),
    ("skin", (1.0, 3.0)),
)
SKULL_SHELLS = 4  # dura, inner table, diploe, outer table: between the brain and the neck
REGIONS = ("air", "brain", *(name for name, _ in SHELLS), "eye", "neck")
FIRST_BLOB = len(REGIONS)  # blob k has code FIRST_BLOB + k
# T1-weighted levels relative to white matter (= 1), drawn uniformly in these ranges
T1_LEVELS = {
    "air": (0.0, 0.0),
    "dura": (0.45, 0.8),
    "inner table": (0.0, 0.15),
    "diploe": (0.4, 1.1),
    "outer table": (0.0, 0.15),
    "muscle": (0.3, 0.7),
    "fat": (0.9, 1.6),
    "skin": (0.4, 0.9),
    "eye": (0.03, 0.35),
    "neck": (0.3, 0.8),
    "blob": (0.0, 1.6),
}
TEMPLATE_WM = 0.84  # mean white-matter value of the template T1 (in [0, 1])


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """How heads are drawn. Part of the embedded set's SynthConfig (and so of its cache key)."""

    generator: int = 4  # raised whenever the drawing code changes, so old caches are not reused

    pad_mm: float = 12.0  # the template's field of view grown by this on every side ...
    neck_mm: float = 48.0  # ... and by this much more below, for the neck
    boundary_jitter: float = 0.25  # shell boundaries x exp(jitter * smooth field) ...
    boundary_std_mm: float = 1.5  # ... + std * smooth field (mm)
    eye_prob: float = 0.8
    max_blobs: int = 4
    random_contrast_prob: float = 0.0  # SynthSeg-style random levels, else T1-like
    min_tissue_gap: float = 0.2  # random levels of CSF, GM and WM at least this far apart
    texture_std: float = 0.06  # max per-region voxel noise, relative to white matter
    max_blur_mm: float = 0.6  # max Gaussian sigma of the rendered image
    lowres_prob: float = 0.2  # share of the subjects seen at a random resolution ...
    max_slice_mm: float = 6.0  # ... with slices up to this thick on one axis


def pad_grid(
    shape: tuple[int, ...], affine: np.ndarray, spacing: float, cfg: HeadConfig
) -> tuple[tuple[int, int, int], np.ndarray]:
    """The grid `shape`/`affine` (RAS, axis-aligned) grown by pad_mm, and neck_mm more below."""
    pad = round(cfg.pad_mm / spacing)
    below = pad + round(cfg.neck_mm / spacing)
    lo = np.array([pad, pad, below])
    new_shape = tuple(int(n) + int(a) + pad for n, a in zip(shape, lo, strict=True))
    shift = np.eye(4)
    shift[:3, 3] = -lo
    return new_shape, affine @ shift


def _ellipsoid(shape, spacing: float, centre_vox, radii_mm) -> np.ndarray:
    """[X, Y, Z] bool: the axis-aligned ellipsoid with `radii_mm` around voxel `centre_vox`."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    r = sum(
        ((g - c) * spacing / max(rad, 1e-3)) ** 2
        for g, c, rad in zip(grids, centre_vox, radii_mm, strict=True)
    )
    return r <= 1.0


def head_regions(
    brain: np.ndarray, spacing: float, cfg: HeadConfig, rng: np.random.Generator, field
) -> np.ndarray:
    """[X, Y, Z] uint8 region codes for a head around `brain` (bool, RAS grid, `spacing` mm).

    field(grid_mm) -> a smooth unit random field on the grid (the caller's B-spline field).
    """
    shape = brain.shape
    idx = np.argwhere(brain)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    mid = (lo + hi) / 2.0
    half_mm = (hi - lo) * spacing / 2.0
    # neck: an elliptic column from a little above the brain's lowest point to the grid's
    # bottom, kept outside the skull (the skull base lies between it and the brain)
    neck_top = lo[2] + round(rng.uniform(15.0, 35.0) / spacing)
    neck_centre = (mid[0], mid[1] - rng.uniform(0.1, 0.3) * half_mm[1] / spacing)
    neck_r = (rng.uniform(0.45, 0.6) * half_mm[0], rng.uniform(0.35, 0.5) * half_mm[1])
    gx, gy = np.ogrid[: shape[0], : shape[1]]
    ring = ((gx - neck_centre[0]) * spacing / neck_r[0]) ** 2 + (
        (gy - neck_centre[1]) * spacing / neck_r[1]
    ) ** 2 <= 1.0
    neck = np.zeros(shape, bool)
    neck[:, :, : max(neck_top, 0)] = ring[:, :, None]
    thickness = np.array([rng.uniform(*r) for _, r in SHELLS], np.float32)
    scale = np.exp(cfg.boundary_jitter * field(48.0))
    shift = cfg.boundary_std_mm * field(24.0)
    edges = np.cumsum(thickness)
    # the skull's shells (dura to outer table) by distance from the brain; the neck outside
    # them; the soft tissue's shells (muscle, fat, skin) by distance from brain, skull and neck
    dist = ndimage.distance_transform_edt(~brain, sampling=spacing).astype(np.float32)
    outer = np.zeros(shape, np.int8)  # how many shell boundaries lie below each voxel
    for edge in edges[:SKULL_SHELLS]:
        outer += dist > edge * scale + shift
    skull = ~brain & (outer < SKULL_SHELLS)
    neck &= ~brain & ~skull
    core = brain | skull | neck
    dist = ndimage.distance_transform_edt(~core, sampling=spacing).astype(np.float32)
    for edge in edges[SKULL_SHELLS:] - edges[SKULL_SHELLS - 1]:
        outer += ~core & (dist > edge * scale + shift)
    del scale, shift, dist
    regions = np.full(shape, REGIONS.index("air"), np.uint8)
    shells = ~brain & ~neck & (outer < len(SHELLS))
    regions[shells] = REGIONS.index(SHELLS[0][0]) + outer[shells]
    regions[neck] = REGIONS.index("neck")
    regions[brain] = REGIONS.index("brain")
    beyond_dura = outer >= 1  # from the inner table out
    outside_dura = ~brain & ~neck & beyond_dura & (outer < len(SHELLS))
    core = brain | neck
    del shells
    if rng.random() < cfg.eye_prob:
        # in front of the brain, below its middle: a pair mirrored about its centre line
        dx = rng.uniform(0.35, 0.5) * half_mm[0] / spacing
        y = hi[1] - rng.uniform(5.0, 25.0) / spacing
        z = lo[2] + rng.uniform(0.2, 0.4) * (hi[2] - lo[2])
        radii = rng.uniform(9.0, 13.0, 3)
        for side in (-1, 1):
            eye = _ellipsoid(shape, spacing, (mid[0] + side * dx, y, z), radii)
            regions[eye & ~core & beyond_dura] = REGIONS.index("eye")
    candidates = np.argwhere(outside_dura | (neck & ~brain))
    for k in range(rng.integers(0, cfg.max_blobs + 1) if len(candidates) else 0):
        centre = candidates[rng.integers(len(candidates))]
        blob = _ellipsoid(shape, spacing, centre, rng.uniform(4.0, 20.0, 3))
        regions[blob & (outside_dura | (neck & ~brain))] = FIRST_BLOB + k
    return regions


def tissue_levels(rng: np.random.Generator, gap: float) -> np.ndarray:
    """Random CSF, GM and WM levels in [0, 1], in any order, pairwise at least `gap` apart (a
    contrast in which the tissues cannot be told apart teaches nothing)."""
    while True:
        levels = rng.uniform(0.0, 1.0, 3)
        if np.min(np.abs(levels[:, None] - levels[None, :]) + 2 * np.eye(3)) >= gap:
            return levels


def render(
    regions: np.ndarray,
    t1: np.ndarray,
    gm: np.ndarray,
    wm: np.ndarray,
    spacing: float,
    cfg: HeadConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """[X, Y, Z] float32 image of the head, white matter near 1.

    T1-like subjects keep the template's own brain (its T1, with GM/WM contrast and gamma
    jittered as in the skull-stripped set); random-contrast subjects draw CSF, GM and WM levels
    (`tissue_levels`) and mix them by the tissue maps (partial volume). Every region gets a
    random voxel noise ("texture"), and the image a random blur.
    """
    names = [*REGIONS, *("blob",) * (int(regions.max()) + 1 - FIRST_BLOB)]
    random_contrast = rng.random() < cfg.random_contrast_prob
    if random_contrast:
        levels = rng.uniform(0.0, 1.0, len(names)).astype(np.float32)
        levels[0] = 0.0  # air
    else:
        levels = np.array([rng.uniform(*T1_LEVELS.get(n, (0.0, 0.0))) for n in names], np.float32)
    brain_code = REGIONS.index("brain")
    levels[brain_code] = 0.0  # the brain's own levels come from its tissue maps below
    texture = rng.uniform(0.0, cfg.texture_std, len(names)).astype(np.float32)
    texture[0] = 0.0
    img = levels[regions] + texture[regions] * rng.standard_normal(regions.shape, np.float32)
    brain = regions == brain_code
    if random_contrast:
        csf_l, gm_l, wm_l = tissue_levels(rng, cfg.min_tissue_gap)
        g, w = gm[brain], wm[brain]
        tissue = np.clip(1.0 - g - w, 0.0, 1.0) * csf_l + g * gm_l + w * wm_l
    else:
        c_gm, c_wm = rng.uniform(-0.1, 0.1, 2)
        tissue = t1[brain] * (1 + c_gm * gm[brain]) * (1 + c_wm * wm[brain]) / TEMPLATE_WM
    img[brain] += tissue.astype(np.float32)
    img = np.clip(img, 0.0, None)
    sigma = rng.uniform(0.0, cfg.max_blur_mm) / spacing
    if sigma > 0.1:
        img = ndimage.gaussian_filter(img, sigma)
    if not random_contrast:
        img **= rng.uniform(0.8, 1.25)
    return img.astype(np.float32)
