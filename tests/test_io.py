"""Tests for msseg.io: canonical loading, exact saving, resampling, and bad-input errors."""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest

from msseg import io
from msseg.errors import InputError

SHAPE = (20, 24, 18)


def _rotation(degrees_z: float, degrees_x: float) -> np.ndarray:
    a, b = np.deg2rad(degrees_z), np.deg2rad(degrees_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def _affine(kind: str, shape=SHAPE) -> np.ndarray:
    """A 4x4 affine of the given orientation, roughly centred on the world origin."""
    linear = {
        "RAS": np.eye(3),
        "LAS": np.diag([-1.0, 1.0, 1.0]),
        "LPI": np.diag([-1.0, -1.0, -1.0]),
        "PIR": np.array([[0, 0, 1.0], [-1.0, 0, 0], [0, -1.0, 0]]),  # sagittal slices
        "oblique": _rotation(15, 5) @ np.diag([1.0, 1.2, 2.5]),
    }[kind]
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = -linear @ ((np.asarray(shape) - 1) / 2) + [3.0, -7.0, 11.0]
    return affine


def _write(path, data, affine, sform_code=2, qform_code=1, dtype=None) -> str:
    img = nib.Nifti1Image(data, affine, dtype=dtype or data.dtype)
    img.set_sform(affine, sform_code)
    img.set_qform(affine, qform_code)
    nib.save(img, path)
    return str(path)


def _world(affine: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """[N, 3] voxel indices -> [N, 3] world mm."""
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _labelled(data: np.ndarray, affine: np.ndarray) -> dict[tuple, int]:
    """{rounded world position (mm): value} for every labelled voxel."""
    idx = np.argwhere(data != 0)
    world = np.round(_world(affine, idx.astype(np.float64)), 3) + 0.0  # -0.0 -> 0.0
    return {tuple(w): int(v) for w, v in zip(world, data[tuple(idx.T)], strict=True)}


def _blobs(shape=SHAPE) -> np.ndarray:
    """A label map of a block and two spheres (values 1, 2, 5) on background 0."""
    grid = np.indices(shape).astype(np.float64)
    labels = np.zeros(shape, np.int32)
    labels[2:9, 3:12, 2:8] = 1
    labels[np.sum((grid - np.array([12, 14, 9])[:, None, None, None]) ** 2, 0) < 25] = 2
    labels[np.sum((grid - np.array([6, 17, 12])[:, None, None, None]) ** 2, 0) < 12] = 5
    return labels


# --------------------------------------------------------------------------- loading / saving

ORIENTATION_CASES = [
    ("RAS", 1, 1),
    ("LAS", 2, 0),
    ("LPI", 0, 1),
    ("PIR", 1, 1),
    ("oblique", 4, 1),
]


@pytest.mark.parametrize(("kind", "sform_code", "qform_code"), ORIENTATION_CASES)
def test_orientation_round_trip(tmp_path, kind, sform_code, qform_code):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, SHAPE).astype(np.int16)
    affine = _affine(kind)
    path = _write(tmp_path / f"{kind}.nii.gz", labels, affine, sform_code, qform_code)
    original = nib.load(path)

    vol = io.load_label(path)
    assert vol.data.dtype == np.int32
    # Same set of (world position, value) pairs as the file.
    assert _labelled(vol.data, vol.affine) == _labelled(labels, original.affine)
    # Canonical order is the closest to RAS+: each axis is dominated by its own, positive.
    linear = vol.affine[:3, :3]
    assert np.array_equal(np.argmax(np.abs(linear), axis=0), [0, 1, 2])
    assert np.all(np.diag(linear) > 0)
    assert vol.spacing == pytest.approx(np.linalg.norm(affine[:3, :3], axis=0), abs=1e-5)

    image = _write(tmp_path / f"{kind}_img.nii", labels.astype(np.float32) * 10, affine)
    assert io.load_image(image).data.dtype == np.float32
    io.check_same_grid(io.load_image(image), vol)

    out = tmp_path / f"{kind}_out.nii.gz"
    io.save_label(out, vol.data, vol.source)
    written = nib.load(out)
    assert written.shape == labels.shape
    assert np.array_equal(np.asarray(written.dataobj), labels)
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(written.affine, original.affine)
    assert written.header.get_sform(coded=True)[1] == sform_code
    assert written.header.get_qform(coded=True)[1] == qform_code
    np.testing.assert_allclose(written.header.get_qform(), original.header.get_qform(), atol=1e-5)


def test_save_image_round_trip_and_compression(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.normal(size=SHAPE).astype(np.float32)
    path = _write(tmp_path / "img.nii.gz", data, _affine("LPI"))
    vol = io.load_image(path)
    io.save_image(tmp_path / "out.nii", vol.data * 2, vol.source)
    io.save_image(tmp_path / "out.nii.gz", vol.data * 2, vol.source)
    with open(tmp_path / "out.nii", "rb") as f:
        assert f.read(2) != b"\x1f\x8b"
    with open(tmp_path / "out.nii.gz", "rb") as f:
        assert f.read(2) == b"\x1f\x8b"
    for name in ("out.nii", "out.nii.gz"):
        written = nib.load(tmp_path / name)
        assert written.get_data_dtype() == np.float32
        np.testing.assert_array_equal(np.asarray(written.dataobj), data * 2)
        np.testing.assert_array_equal(written.affine, vol.source.affine)


def test_scaled_source_and_trailing_singleton(tmp_path):
    """An int16 image with scl_slope, stored as (X, Y, Z, 1): labels still round-trip."""
    rng = np.random.default_rng(2)
    data = (rng.random(SHAPE + (1,)) * 1000).astype(np.float32)
    path = _write(tmp_path / "scaled.nii.gz", data, _affine("LAS"), dtype=np.int16)
    assert nib.load(path).dataobj.slope != 1
    vol = io.load_image(path)
    assert vol.data.shape == SHAPE and vol.data.dtype == np.float32
    labels = np.where(vol.data > 500, 300, -2).astype(np.int32)
    io.save_label(tmp_path / "seg.nii.gz", labels, vol.source)
    written = nib.load(tmp_path / "seg.nii.gz")
    assert written.get_data_dtype() == np.int16
    assert written.dataobj.slope == 1 and written.dataobj.inter == 0
    np.testing.assert_array_equal(io.load_label(tmp_path / "seg.nii.gz").data, labels)


@pytest.mark.parametrize(
    ("values", "dtype", "expected"),
    [
        ((0, 5), None, np.uint8),
        ((-1, 5), None, np.int16),
        ((0, 40000), None, np.int32),
        ((0, 5), np.int16, np.int16),
    ],
)
def test_label_dtype(tmp_path, values, dtype, expected):
    path = _write(tmp_path / "l.nii.gz", np.zeros(SHAPE, np.uint8), _affine("RAS"))
    vol = io.load_label(path)
    labels = np.full(SHAPE, values[0], np.int32)
    labels[0, 0, 0] = values[1]
    io.save_label(tmp_path / "o.nii.gz", labels, vol.source, dtype=dtype)
    assert nib.load(tmp_path / "o.nii.gz").get_data_dtype() == expected
    np.testing.assert_array_equal(io.load_label(tmp_path / "o.nii.gz").data, labels)


def test_mgz_load_and_save(tmp_path):
    labels = _blobs().astype(np.int32)
    affine = _affine("PIR")
    nib.save(nib.MGHImage(labels, affine), tmp_path / "seg.mgz")
    vol = io.load_label(tmp_path / "seg.mgz")
    assert _labelled(vol.data, vol.affine) == _labelled(labels, affine)
    io.save_label(tmp_path / "seg.nii.gz", vol.data, vol.source)
    written = nib.load(tmp_path / "seg.nii.gz")
    np.testing.assert_array_equal(np.asarray(written.dataobj), labels)
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)


def test_atomic_save(tmp_path, monkeypatch):
    path = _write(tmp_path / "l.nii.gz", _blobs().astype(np.uint8), _affine("LAS"))
    vol = io.load_label(path)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ValueError, match="shape"):
        io.save_label(tmp_path / "bad.nii.gz", vol.data[:-1], vol.source)
    assert sorted(os.listdir(tmp_path)) == before

    def crash(img, filename):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise RuntimeError("disk full")

    (tmp_path / "keep.nii.gz").write_bytes(b"previous")
    monkeypatch.setattr(io.nib, "save", crash)
    with pytest.raises(RuntimeError):
        io.save_label(tmp_path / "crash.nii.gz", vol.data, vol.source)
    with pytest.raises(RuntimeError):
        io.save_label(tmp_path / "keep.nii.gz", vol.data, vol.source)
    assert sorted(os.listdir(tmp_path)) == sorted([*before, "keep.nii.gz"])
    assert (tmp_path / "keep.nii.gz").read_bytes() == b"previous"


# --------------------------------------------------------------------------- bad inputs


def _expect_input_error(fn, path, *fragments):
    with pytest.raises(InputError) as err:
        fn(path)
    message = str(err.value)
    assert os.path.basename(str(path)) in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_missing_file(tmp_path):
    _expect_input_error(io.load_image, tmp_path / "nope.nii.gz", "file not found")


def test_truncated_files(tmp_path):
    data = np.random.default_rng(3).normal(size=SHAPE).astype(np.float32)
    for name in ("t.nii.gz", "t.nii"):
        path = _write(tmp_path / name, data, _affine("RAS"))
        raw = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(raw[: len(raw) // 2])
        _expect_input_error(io.load_image, path, "truncated or corrupt")
        _expect_input_error(io.load_label, path, "truncated or corrupt")


@pytest.mark.parametrize("name", ["junk.nii.gz", "junk.nii", "junk.mgz"])
def test_corrupt_file(tmp_path, name):
    (tmp_path / name).write_bytes(np.random.default_rng(4).bytes(2000))
    _expect_input_error(io.load_image, tmp_path / name)


def test_gzip_of_junk(tmp_path):
    with gzip.open(tmp_path / "junk.nii.gz", "wb") as f:
        f.write(np.random.default_rng(5).bytes(2000))
    _expect_input_error(io.load_image, tmp_path / "junk.nii.gz")


def test_not_3d(tmp_path):
    path = _write(tmp_path / "4d.nii.gz", np.zeros((4, 5, 6, 2), np.float32), np.eye(4))
    _expect_input_error(io.load_image, path, "expected a 3D volume", "(4, 5, 6, 2)")
    path = _write(tmp_path / "2d.nii.gz", np.zeros((4, 5), np.float32), np.eye(4))
    _expect_input_error(io.load_image, path, "expected a 3D volume")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_image(tmp_path, bad):
    data = np.zeros(SHAPE, np.float32)
    data[1, 2, 3] = data[4, 5, 6] = bad
    path = _write(tmp_path / "nonfinite.nii.gz", data, np.eye(4))
    _expect_input_error(io.load_image, path, "image contains 2 NaN/Inf voxels")


def test_non_integer_labels(tmp_path):
    data = np.zeros(SHAPE, np.float32)
    data[3, 3, 3] = 1.5
    path = _write(tmp_path / "frac.nii.gz", data, np.eye(4))
    _expect_input_error(io.load_label, path, "label map has non-integer values")
    negative = _write(tmp_path / "neg.nii.gz", np.full(SHAPE, -3, np.int16), np.eye(4))
    assert io.load_label(negative).data.min() == -3


def test_singular_affine(tmp_path):
    affine = np.eye(4)
    affine[2, :3] = affine[1, :3]
    header = nib.Nifti1Header()
    header.set_sform(affine, 2)
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), None, header), tmp_path / "s.nii.gz")
    _expect_input_error(io.load_image, tmp_path / "s.nii.gz", "degenerate")


def test_constant_image_is_not_a_scan(tmp_path):
    for value in (0.0, 7.0):
        path = _write(tmp_path / "flat.nii.gz", np.full(SHAPE, value, np.float32), np.eye(4))
        _expect_input_error(
            io.load_image, path, f"image is constant (every voxel is {value})", "not a scan"
        )
    assert io.load_label(path).data.max() == 7  # a constant label map is fine
    data = np.zeros(SHAPE, np.float32)
    data[1, 2, 3] = 1e-3
    io.load_image(_write(tmp_path / "one.nii.gz", data, np.eye(4)))


def test_complex_image_is_refused(tmp_path):
    data = (np.arange(np.prod(SHAPE)).reshape(SHAPE) * (1 + 2j)).astype(np.complex64)
    path = _write(tmp_path / "complex.nii.gz", data, np.eye(4))
    assert nib.load(path).get_data_dtype() == np.complex64
    for load in (io.load_image, io.load_label):
        _expect_input_error(
            load, path, "complex-valued image (dtype complex64)", "msseg reads real intensities"
        )


def test_header_claiming_more_voxels_than_memory_is_refused_before_reading(tmp_path):
    """A 5000³ float32 header on a tiny .nii: refused with the numbers, nothing allocated."""
    import time

    data = np.random.default_rng(6).normal(size=(4, 5, 6)).astype(np.float32)
    path = _write(tmp_path / "huge.nii", data, np.eye(4))
    header = nib.load(path).header.copy()
    header.set_data_shape((5000, 5000, 5000))
    raw = bytearray(open(path, "rb").read())
    raw[:348] = header.binaryblock
    with open(path, "wb") as f:
        f.write(raw)
    assert nib.load(path).shape == (5000, 5000, 5000)
    start = time.perf_counter()
    for load in (io.load_image, io.load_label):
        message = _expect_input_error(
            load, path, "header claims 5000x5000x5000 voxels: reading them needs 465.7 GiB"
        )
        assert "GiB available" in message
    assert time.perf_counter() - start < 5
    available = io.available_memory()
    assert available is not None and 0 < available < 465 * 2**30


def test_check_same_grid(tmp_path):
    data = (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 5).astype(np.float32)
    image = io.load_image(_write(tmp_path / "img.nii.gz", data, _affine("oblique")))
    other = io.load_label(_write(tmp_path / "small.nii.gz", data[:-1], _affine("oblique")))
    with pytest.raises(InputError) as err:
        io.check_same_grid(image, other)
    assert "img.nii.gz" in str(err.value) and "small.nii.gz" in str(err.value)
    assert "(20, 24, 18)" in str(err.value) and "(19, 24, 18)" in str(err.value)

    shifted = _affine("oblique")
    shifted[0, 3] += 0.5
    moved = io.load_label(_write(tmp_path / "moved.nii.gz", data, shifted))
    with pytest.raises(InputError) as err:
        io.check_same_grid(image, moved)
    assert "img.nii.gz" in str(err.value) and "moved.nii.gz" in str(err.value)
    assert "0.5 mm" in str(err.value)

    shifted[0, 3] += 1e-4 - 0.5
    close = io.load_label(_write(tmp_path / "close.nii.gz", data, shifted))
    io.check_same_grid(image, close)


# --------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("shape", [SHAPE, (21, 25, 19)])
@pytest.mark.parametrize("spacing", [2.0, (1.5, 2.0, 3.0), 0.7])
@pytest.mark.parametrize("kind", ["RAS", "oblique"])
def test_resample_grid_geometry(kind, shape, spacing):
    affine = _affine(kind, shape)
    new, new_affine = io.resample(np.zeros(shape, np.float32), affine, spacing)
    old_sp = np.linalg.norm(affine[:3, :3], axis=0)
    expected = np.maximum(1, np.floor(np.asarray(shape) * old_sp / spacing + 0.5))
    assert new.shape == tuple(expected.astype(int)) and new.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(new_affine[:3, :3], axis=0), spacing * np.ones(3))
    # The FOV centre keeps its world position.
    centre_old = _world(affine, (np.asarray(shape) - 1) / 2)
    centre_new = _world(new_affine, (np.asarray(new.shape) - 1) / 2)
    np.testing.assert_allclose(centre_new, centre_old, atol=1e-9)
    if np.allclose(np.asarray(new.shape) * spacing / old_sp, shape):
        # Divisible: the outer edges of the field of view stay fixed.
        np.testing.assert_allclose(
            _world(new_affine, np.full(3, -0.5)), _world(affine, np.full(3, -0.5)), atol=1e-9
        )


def test_resample_image_round_trip():
    grid = np.indices(SHAPE).astype(np.float64)
    centre = np.array([9.3, 12.1, 8.4])[:, None, None, None]
    smooth = np.exp(-np.sum((grid - centre) ** 2, 0) / (2 * 6.0**2)).astype(np.float32)
    affine = _affine("LAS")
    low, low_affine = io.resample(smooth, affine, 2.0)
    assert low.shape == (10, 12, 9)
    back = io.resample_to_grid(low, low_affine, affine, SHAPE)
    assert back.dtype == np.float32 and back.shape == SHAPE
    interior = (slice(2, -2),) * 3
    assert np.max(np.abs(back - smooth)[interior]) < 0.05  # peak 1, linear interpolation
    assert abs(np.mean((back - smooth)[interior])) < 0.01
    same = io.resample_to_grid(smooth, affine, affine, SHAPE)
    np.testing.assert_allclose(same, smooth, atol=1e-6)


@pytest.mark.parametrize("kind", ["RAS", "oblique"])
def test_resample_label_round_trip(kind):
    labels = _blobs()
    affine = _affine(kind)
    low, low_affine = io.resample_label(labels, affine, 2.0)
    assert low.dtype == np.int32 and set(np.unique(low)) <= {0, 1, 2, 5}
    back = io.resample_label_to_grid(low, low_affine, affine, SHAPE)
    assert back.dtype == np.int32 and set(np.unique(back)) == {0, 1, 2, 5}
    assert np.mean(back == labels) > 0.95
    nearest, _ = io.resample_label(labels, affine, 2.0, mode="nearest")
    assert nearest.shape == low.shape and set(np.unique(nearest)) <= {0, 1, 2, 5}
    with pytest.raises(ValueError):
        io.resample_label(labels, affine, 2.0, mode="cubic")


def test_labels_outside_source_are_background():
    labels = np.full(SHAPE, 3, np.int16)
    affine = _affine("RAS")
    target = affine.copy()
    target[:3, 3] += [5.0, -4.0, 0.0]  # shifted by (5, -4, 0) voxels
    for mode in ("onehot", "nearest"):
        out = io.resample_label_to_grid(labels, affine, target, SHAPE, mode=mode)
        expected = np.zeros(SHAPE, np.int32)
        expected[: SHAPE[0] - 5, 4:, :] = 3
        np.testing.assert_array_equal(out, expected)


def _centroid(mask_or_weights: np.ndarray, affine: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask_or_weights > 0)
    weights = mask_or_weights[tuple(idx.T)].astype(np.float64)
    return _world(affine, idx.astype(np.float64)).T @ weights / weights.sum()


def test_oblique_anisotropic_resampling_keeps_world_positions(tmp_path):
    shape = (36, 30, 16)
    affine = _affine("oblique", shape)
    idx = np.indices(shape).reshape(3, -1).T.astype(np.float64)
    centre = _world(affine, np.array([17.3, 14.6, 7.4]))
    dist = np.linalg.norm(_world(affine, idx) - centre, axis=1).reshape(shape)
    labels = (dist < 9.0).astype(np.uint8) * 4
    image = np.exp(-(dist**2) / (2 * 5.0**2)).astype(np.float32)
    vol = io.load_label(_write(tmp_path / "sphere.nii.gz", labels, affine))
    img = io.load_image(_write(tmp_path / "blob.nii.gz", image, affine))
    assert vol.spacing == pytest.approx((1.0, 1.2, 2.5), abs=1e-5)

    before = _centroid(labels, affine)
    for spacing in (2.0, (1.5, 1.0, 3.0)):
        low, low_affine = io.resample_label(vol.data, vol.affine, spacing)
        half_voxel = np.max(spacing) / 2
        assert np.linalg.norm(_centroid(low, low_affine) - before) < half_voxel
        smooth, smooth_affine = io.resample(img.data, img.affine, spacing)
        assert np.linalg.norm(_centroid(smooth, smooth_affine) - centre) < half_voxel
        # And back onto the file's own canonical grid.
        back = io.resample_label_to_grid(low, low_affine, vol.affine, vol.data.shape)
        assert np.linalg.norm(_centroid(back, vol.affine) - before) < half_voxel


def test_resample_explicit_shape_and_bad_spacing():
    data = np.ones(SHAPE, np.float32)
    out, out_affine = io.resample(data, np.eye(4), 2.0, shape=(12, 12, 12))
    assert out.shape == (12, 12, 12)
    np.testing.assert_allclose(_world(out_affine, np.full(3, 5.5)), (np.asarray(SHAPE) - 1) / 2)
    labels, _ = io.resample_label(np.ones(SHAPE, np.int32), np.eye(4), 2.0, shape=(14, 14, 14))
    assert labels[0, 0, 0] == 0 and labels[7, 7, 7] == 1  # padding is background
    with pytest.raises(ValueError):
        io.resample(data, np.eye(4), 0.0)
