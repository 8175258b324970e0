"""Load and save NIfTI volumes in canonical RAS+ and resample them between spacings.

Arrays are ``[X, Y, Z]`` in the closest canonical RAS+ voxel order; an oblique scan keeps
its obliquity in the 4x4 voxel->world (mm) ``affine``. ``SourceGeometry`` lets the savers
write results back on the file's own grid. Resampling maps voxels through
``inv(affine) @ target_affine``, so oblique and anisotropic grids need no special case.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import zlib
from collections.abc import Sequence

import nibabel as nib
import numpy as np
from nibabel import orientations
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from scipy import ndimage

from msseg import files, names
from msseg.errors import InputError

PathLike = str | os.PathLike
Spacing = float | Sequence[float] | np.ndarray

_RAS = orientations.axcodes2ornt(("R", "A", "S"))
_HEADER_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, zlib.error, ValueError)
_DATA_ERRORS = (EOFError, zlib.error, OSError, gzip.BadGzipFile, ValueError)
_LABEL_DTYPES = (np.uint8, np.int16, np.int32)
_EXTENT_TOL = 1e-3  # voxels: how far outside [-0.5, n - 0.5] still counts as inside


@dataclasses.dataclass(frozen=True, eq=False)
class SourceGeometry:
    """What is needed to write an array back on the file's own grid."""

    affine: np.ndarray  # [4, 4] original voxel->world (mm) affine of the file
    shape: tuple[int, int, int]  # original 3D shape
    ornt: np.ndarray  # [3, 2] nibabel orientation transform: original axes -> RAS+ canonical
    header: nib.Nifti1Header  # copy of the original header (converted for .mgz etc.)


@dataclasses.dataclass(frozen=True, eq=False)
class Volume:
    """A 3D volume on its canonical RAS+ grid, with the geometry of the file it came from."""

    data: np.ndarray  # [X, Y, Z] canonical RAS+ voxel order; float32 image or int32 labels
    affine: np.ndarray  # [4, 4] voxel->world (mm) of `data`
    path: str
    source: SourceGeometry

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm: the column norms of ``affine[:3, :3]``."""
        return _spacing_of(self.affine)


# --------------------------------------------------------------------------- loading


def _spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    norms = np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0)
    return (float(norms[0]), float(norms[1]), float(norms[2]))


def _nifti1_header(img: nib.spatialimages.SpatialImage) -> nib.Nifti1Header:
    """A Nifti1Header copy of ``img``'s header whose coded s/q-forms give ``img.affine``."""
    if type(img.header) is nib.Nifti1Header:
        return img.header.copy()
    header = nib.Nifti1Header.from_header(img.header)
    if header.get_sform(coded=True)[1] == 0 and header.get_qform(coded=True)[1] == 0:
        # e.g. .mgz: its vox2ras is a scanner-anatomical transform.
        header.set_sform(img.affine, code=1)
        header.set_qform(img.affine, code=1)
    return header


def available_memory() -> int | None:
    """Bytes of memory a new allocation can count on, or None if unknown: Linux's
    MemAvailable (else the physical memory), at most a cgroup v2 memory limit."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            available = min(available, int(limit))
    except (OSError, ValueError):
        pass
    return available


def _gib(n: int | None) -> str:
    return "an unknown amount of memory" if n is None else f"{n / 2**30:.1f} GiB"


def _read_bytes(img, shape: tuple[int, ...], disk: np.dtype, dtype: type | None) -> int:
    """Peak bytes nibabel holds while reading ``img``'s data as ``dtype``: the raw array, plus
    the scaled/cast copy (counted at 8 bytes a voxel when scaling applies)."""
    n = int(np.prod(shape, dtype=object))
    slope = getattr(img.dataobj, "slope", 1.0)
    inter = getattr(img.dataobj, "inter", 0.0)
    scaled = not (slope == 1 and inter == 0)
    out = disk if dtype is None else np.dtype(dtype)
    extra = max(out.itemsize, 8) if scaled else (out.itemsize if out != disk else 0)
    return n * (disk.itemsize + extra)


def _read(path: PathLike, dtype: type | None) -> tuple[np.ndarray, SourceGeometry, str]:
    """Read a 3D volume and its geometry; ``dtype=None`` keeps the file's (scaled) type.

    Returns the array in the file's own axis order [X0, Y0, Z0], the geometry, and the path.
    InputError for an unreadable file, a non-3D shape, a degenerate affine, complex data,
    data needing more memory than is available (checked before reading), or truncated data.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(path, "file not found")
    try:
        img = nib.load(path, mmap=False)
        shape = tuple(int(n) for n in img.shape)
        affine = np.asarray(img.affine, np.float64)
        header = _nifti1_header(img)
    except _HEADER_ERRORS as e:
        raise InputError(path, f"not a readable image or corrupt header ({e})") from e
    if len(shape) < 3 or any(n != 1 for n in shape[3:]):
        raise InputError(path, f"expected a 3D volume, got shape {shape}")
    shape3 = (shape[0], shape[1], shape[2])
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError(path, "degenerate affine (non-finite values)")
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(norms < 1e-6) or abs(np.linalg.det(affine[:3, :3])) < 1e-6 * np.prod(norms):
        raise InputError(path, f"degenerate (singular) affine {np.round(affine, 4).tolist()}")
    disk = np.dtype(img.get_data_dtype())
    if disk.kind == "c":
        raise InputError(path, f"complex-valued image (dtype {disk}): msseg reads real intensities")
    need, available = _read_bytes(img, shape3, disk, dtype), available_memory()

    def too_big() -> InputError:
        return InputError(
            path,
            f"header claims {'x'.join(map(str, shape3))} voxels: reading them needs "
            f"{_gib(need)}, this machine has {_gib(available)} available",
        )

    if available is not None and need > available:
        raise too_big()
    try:
        data = np.asarray(img.dataobj) if dtype is None else np.asarray(img.dataobj, dtype)
    except MemoryError as e:  # the estimate was too low or memory went meanwhile
        raise too_big() from e
    except _DATA_ERRORS as e:
        raise InputError(path, f"truncated or corrupt image data ({e})") from e
    data = data.reshape(shape3)
    ornt = orientations.io_orientation(affine)
    return data, SourceGeometry(affine=affine, shape=shape3, ornt=ornt, header=header), path


def _to_canonical(data: np.ndarray, source: SourceGeometry) -> tuple[np.ndarray, np.ndarray]:
    """[X0, Y0, Z0] file order -> ([X, Y, Z] canonical RAS+ array, its [4, 4] affine)."""
    canonical = np.ascontiguousarray(orientations.apply_orientation(data, source.ornt))
    affine = source.affine @ orientations.inv_ornt_aff(source.ornt, source.shape)
    return canonical, affine


def _to_source(data: np.ndarray, source: SourceGeometry) -> np.ndarray:
    """[X, Y, Z] canonical RAS+ array -> [X0, Y0, Z0] in the file's own axis order."""
    expected = _canonical_shape(source)
    if data.shape != expected:
        raise ValueError(
            f"array shape {data.shape} does not match the source's canonical shape {expected}"
        )
    back = orientations.ornt_transform(_RAS, source.ornt)
    return np.ascontiguousarray(orientations.apply_orientation(data, back))


def _canonical_shape(source: SourceGeometry) -> tuple[int, ...]:
    return tuple(int(n) for n in np.asarray(source.shape)[np.argsort(source.ornt[:, 0])])


def load_image(path: PathLike) -> Volume:
    """Load an intensity image as float32 ``[X, Y, Z]`` in canonical RAS+ order.

    Besides `_read`'s refusals, an image with NaN/Inf voxels, no voxels, or one value
    everywhere (not a scan) is an InputError.
    """
    data, source, path = _read(path, np.float32)
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise InputError(path, f"image contains {bad} NaN/Inf voxels")
    if data.size == 0:
        raise InputError(path, f"image has no voxels (shape {data.shape})")
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise InputError(path, f"image is constant (every voxel is {lo}): not a scan")
    canonical, affine = _to_canonical(data, source)
    return Volume(data=canonical, affine=affine, path=path, source=source)


def load_label(path: PathLike) -> Volume:
    """Load a label map as int32 ``[X, Y, Z]`` in canonical RAS+ order.

    Values are read exactly in the file's own type (not through float32); negative values
    load fine, non-integer or out-of-int32 values are an InputError.
    """
    data, source, path = _read(path, None)
    if data.dtype.kind == "b":
        data = data.astype(np.int32)
    elif data.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(data) | (data != np.rint(data))))
        if bad:
            raise InputError(path, f"label map has non-integer values ({bad} voxels)")
    elif data.dtype.kind not in "iu":
        raise InputError(path, f"label map has non-integer values (dtype {data.dtype})")
    if data.size and (data.min() < -(2**31) or data.max() > 2**31 - 1):
        raise InputError(path, "label values do not fit in int32")
    canonical, affine = _to_canonical(data.astype(np.int32), source)
    return Volume(data=canonical, affine=affine, path=path, source=source)


def check_same_grid(image: Volume, label: Volume, atol: float = 1e-3) -> None:
    """Raise InputError (naming both files) unless image and label share one voxel grid."""
    if image.data.shape != label.data.shape:
        raise InputError(
            label.path,
            f"label shape {label.data.shape} does not match image {image.path} "
            f"shape {image.data.shape}",
        )
    diff = float(np.max(np.abs(np.asarray(image.affine) - np.asarray(label.affine))))
    if diff > atol:
        raise InputError(
            label.path,
            f"label affine differs from image {image.path} affine by up to {diff:.4g} mm "
            f"(tolerance {atol:g} mm)",
        )


# --------------------------------------------------------------------------- saving


def _write(path: PathLike, data: np.ndarray, source: SourceGeometry) -> None:
    """Write ``data`` [X0, Y0, Z0] (file order, final dtype) with the source's geometry.

    Written atomically (`files.atomic_write`): a crash never leaves a half-written output.
    """
    path = os.fspath(path)
    if not path.endswith(names.WRITE_SUFFIXES):
        raise ValueError(f"{path}: output must end in {' or '.join(names.WRITE_SUFFIXES)}")
    header = source.header.copy()
    header.set_data_dtype(data.dtype)
    img = nib.Nifti1Image(data, source.affine, header)
    sform, scode = source.header.get_sform(coded=True)
    qform, qcode = source.header.get_qform(coded=True)
    img.set_sform(source.affine if sform is None else sform, int(scode))
    img.set_qform(source.affine if qform is None else qform, int(qcode))
    img.header.set_slope_inter(1.0, 0.0)
    files.atomic_write(path, lambda tmp: nib.save(img, tmp))


def _label_dtype(lo: int, hi: int) -> np.dtype:
    for dtype in _LABEL_DTYPES:
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    raise ValueError(f"label values [{lo}, {hi}] do not fit in int32")


def save_label(
    path: PathLike,
    labels: np.ndarray,
    source: SourceGeometry,
    dtype: np.dtype | type | None = None,
) -> None:
    """Write canonical ``labels`` [X, Y, Z] back on the source file's own grid.

    The dtype is ``dtype`` or the smallest of uint8/int16/int32 holding the values; no
    intensity scaling is stored, so values round-trip exactly.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biu" and not np.all(labels == np.rint(labels)):  # NaN too
        raise ValueError(f"{os.fspath(path)}: labels have non-integer values")
    lo, hi = int(labels.min()), int(labels.max())
    out_dtype = _label_dtype(lo, hi) if dtype is None else np.dtype(dtype)
    if (
        out_dtype.kind in "iu"
        and not np.iinfo(out_dtype).min <= lo <= hi <= np.iinfo(out_dtype).max
    ):
        raise ValueError(f"label values [{lo}, {hi}] do not fit in {out_dtype}")
    _write(path, _to_source(labels, source).astype(out_dtype), source)


def save_image(path: PathLike, data: np.ndarray, source: SourceGeometry) -> None:
    """Write a canonical float map ``data`` [X, Y, Z] as float32 on the source's own grid."""
    _write(path, _to_source(np.asarray(data, np.float32), source), source)


# --------------------------------------------------------------------------- resampling


def _as_spacing(spacing: Spacing) -> np.ndarray:
    out = np.broadcast_to(np.asarray(spacing, np.float64), (3,)).copy()
    if not np.all(np.isfinite(out) & (out > 0)):
        raise ValueError(f"spacing must be positive and finite, got {spacing}")
    return out


def _spacing_grid(
    affine: np.ndarray, in_shape: Sequence[int], spacing: Spacing, shape: Sequence[int] | None
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The [4, 4] new->old voxel map and new shape for resampling to ``spacing`` (mm).

    New voxel i samples old voxel coordinate ``s * i + ((n - 1) - s * (m - 1)) / 2`` with
    ``s = new / old`` spacing: the grid is centred on the old field of view, which is
    ``(i + 0.5) * s - 0.5`` (both outer edges fixed) whenever ``m * s == n``.
    """
    scale = _as_spacing(spacing) / np.asarray(_spacing_of(affine))
    n = np.asarray(in_shape[:3], np.float64)
    if shape is None:
        m = np.maximum(1, np.floor(n / scale + 0.5)).astype(int)
    else:
        m = np.asarray(shape, int).reshape(3)
    vox = np.eye(4)
    vox[:3, :3] = np.diag(scale)
    vox[:3, 3] = ((n - 1) - scale * (m - 1)) / 2
    return vox, (int(m[0]), int(m[1]), int(m[2]))


def _map(
    data: np.ndarray, vox: np.ndarray, out_shape: Sequence[int], order: int, dtype: type
) -> np.ndarray:
    """Sample ``data`` at ``vox @ [i, j, k, 1]`` for every output voxel (edge-replicated)."""
    linear = vox[:3, :3]
    if np.max(np.abs(linear - np.diag(np.diag(linear)))) < 1e-9 * np.max(np.abs(linear)):
        linear = np.diag(linear)  # axis-aligned: scipy's faster separable path
    return ndimage.affine_transform(
        data,
        linear,
        offset=vox[:3, 3],
        output_shape=tuple(out_shape),
        output=dtype,
        order=order,
        mode="nearest",
    )


def _outside(
    vox: np.ndarray, in_shape: Sequence[int], out_shape: Sequence[int]
) -> np.ndarray | None:
    """[X', Y', Z'] bool mask of output voxels whose centre falls outside the source extent.

    The extent of a grid with n voxels along an axis is [-0.5, n - 0.5] in voxel units.
    Returns None when every output voxel is inside (the common case; checked at corners).
    """
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in out_shape], indexing="ij"))
    corners = vox[:3, :3] @ corners.reshape(3, -1) + vox[:3, 3:]
    lo = -0.5 - _EXTENT_TOL
    hi = np.asarray(in_shape[:3], np.float64)[:, None] - 0.5 + _EXTENT_TOL
    if np.all((corners >= lo) & (corners <= hi)):
        return None
    idx = [np.arange(n, dtype=np.float32) for n in out_shape]
    outside = np.zeros(tuple(out_shape), bool)
    for k in range(3):
        coord = (
            np.float32(vox[k, 0]) * idx[0][:, None, None]
            + np.float32(vox[k, 1]) * idx[1][None, :, None]
            + np.float32(vox[k, 2]) * idx[2][None, None, :]
            + np.float32(vox[k, 3])
        )
        outside |= (coord < lo) | (coord > hi[k, 0])
    return outside


def _map_labels(
    labels: np.ndarray, vox: np.ndarray, out_shape: Sequence[int], mode: str
) -> np.ndarray:
    """Resample int labels [X, Y, Z] through ``vox``; voxels outside the extent get 0."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biu":
        raise ValueError(f"labels must have an integer dtype, got {labels.dtype}")
    labels = labels.astype(np.int32, copy=False)
    if mode == "nearest":
        out = _map(labels, vox, out_shape, 0, np.int32)
    elif mode == "onehot":
        # Running max/argmax over per-label indicators: memory O(volume), not O(K * volume).
        # Exact ties (a 2-voxel structure straddling two 2x blocks is 4/8 in each) go to the
        # lowest non-zero value, and to 0 only when nothing else is as likely, so thin
        # structures are not erased by downsampling: non-zero values first, 0 last.
        out = np.zeros(tuple(out_shape), np.int32)
        best = np.zeros(tuple(out_shape), np.float32)
        values = np.unique(labels)
        for value in np.concatenate([values[values != 0], values[values == 0]]):
            prob = _map((labels == value).astype(np.float32), vox, out_shape, 1, np.float32)
            better = prob > best
            best[better] = prob[better]
            out[better] = value
    else:
        raise ValueError(f"mode must be 'onehot' or 'nearest', got {mode!r}")
    outside = _outside(vox, labels.shape, out_shape)
    if outside is not None:
        out[outside] = 0
    return out


def _grid_map(affine: np.ndarray, target_affine: np.ndarray) -> np.ndarray:
    """[4, 4] map from target voxel indices to source voxel coordinates."""
    return np.linalg.inv(np.asarray(affine, np.float64)) @ np.asarray(target_affine, np.float64)


def resample(
    data: np.ndarray,
    affine: np.ndarray,
    spacing: Spacing,
    *,
    order: int = 1,
    shape: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample an image [X, Y, Z] to ``spacing`` mm (scalar or 3 values).

    The new shape is ``max(1, round(n * old / new))`` per axis unless ``shape`` is given;
    the new grid is centred on the old field of view. Returns (float32 [X', Y', Z'],
    its [4, 4] affine), which places every voxel at its true world position.
    """
    data = np.asarray(data, np.float32)
    vox, out_shape = _spacing_grid(affine, data.shape, spacing, shape)
    return _map(data, vox, out_shape, order, np.float32), np.asarray(affine) @ vox


def resample_label(
    labels: np.ndarray,
    affine: np.ndarray,
    spacing: Spacing,
    *,
    mode: str = "onehot",
    shape: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a label map [X, Y, Z] to ``spacing`` mm; returns (int32 labels, affine).

    ``mode="onehot"``: linear interpolation of each label's indicator, then argmax;
    ``mode="nearest"``: nearest neighbour. Output values are the input's label values.
    """
    vox, out_shape = _spacing_grid(affine, np.shape(labels), spacing, shape)
    return _map_labels(labels, vox, out_shape, mode), np.asarray(affine) @ vox


def resample_to_grid(
    data: np.ndarray,
    affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: Sequence[int],
    *,
    order: int = 1,
) -> np.ndarray:
    """Resample an image [X, Y, Z] with ``affine`` onto the grid (target_affine, target_shape).

    Returns float32 ``target_shape``; points outside the source replicate its edge.
    """
    vox = _grid_map(affine, target_affine)
    return _map(np.asarray(data, np.float32), vox, target_shape, order, np.float32)


def resample_label_to_grid(
    labels: np.ndarray,
    affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: Sequence[int],
    *,
    mode: str = "onehot",
) -> np.ndarray:
    """Resample labels [X, Y, Z] with ``affine`` onto (target_affine, target_shape).

    Returns int32 ``target_shape``; voxels outside the source extent are 0 (background).
    """
    return _map_labels(labels, _grid_map(affine, target_affine), target_shape, mode)
