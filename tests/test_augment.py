"""Elastic deformation and field-of-view crops: the functions on small arrays, and the pipeline
with them off (the stream unchanged) and on (labels change only as each allows)."""

import dataclasses
import itertools

import grain
import numpy as np
import pytest

from msseg.data import augment, pipeline

CFG = pipeline.PipelineConfig(patch_size=(16, 16, 16), batch_size=2, num_threads=1)
ONE = grain.sharding.NoSharding()


def blocks(shape=(24, 26, 28), seed=0):
    """A label volume of a few ids in 4-voxel blocks, and a random image."""
    rng = np.random.default_rng(seed)
    coarse = rng.choice(np.array([0, 3, 7, 9], np.uint8), [-(-n // 4) for n in shape])
    label = coarse.repeat(4, 0).repeat(4, 1).repeat(4, 2)[: shape[0], : shape[1], : shape[2]]
    return rng.standard_normal(shape).astype(np.float32), np.ascontiguousarray(label)


@pytest.mark.parametrize("centre", [(12, 13, 14), (2, 25, 1)])  # inside; across two edges
def test_elastic_with_zero_std_is_the_plain_patch(centre):
    image, label = blocks()
    size = (10, 9, 8)
    zero = augment.elastic_offsets(np.random.default_rng(1), size, 0.0, 4.0)
    assert zero.shape == (3, *size) and zero.dtype == np.float32 and not zero.any()
    plain = augment.extract_patch(image, label, np.array(centre), size, pad_value=-5.0)
    moved = augment.extract_patch(
        image, label, np.array(centre), size, displacement=zero, pad_value=-5.0
    )
    np.testing.assert_array_equal(plain[0], moved[0])
    np.testing.assert_array_equal(plain[1], moved[1])
    rot = augment.random_rotation_scaling(np.random.default_rng(2), 10, (0.9, 1.1))
    a = augment.extract_patch(image, label, np.array(centre), size, matrix=rot)
    b = augment.extract_patch(image, label, np.array(centre), size, matrix=rot, displacement=zero)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_elastic_labels_keep_their_ids_and_move():
    image, label = blocks()
    size, centre = (16, 16, 16), np.array([12, 13, 14])
    plain = augment.extract_patch(image, label, centre, size)[1]
    field = augment.elastic_offsets(np.random.default_rng(3), size, 2.0, 6.0)
    img, lab = augment.extract_patch(image, label, centre, size, displacement=field)
    assert img.shape == lab.shape == size and img.dtype == np.float32 and lab.dtype == np.uint8
    assert set(np.unique(lab)) <= set(np.unique(label))  # nearest: no in-between ids
    changed = (lab != plain).mean()
    assert 0.02 < changed < 0.6, changed  # moved, yet the same blocks


def test_image_and_label_are_deformed_by_the_same_field():
    """A cube whose image is 1 inside and 0 outside: each label voxel is its image's nearest
    corner, which weighs >= 1/8 in the linear image, so label 5 means image >= 1/8 and
    background image <= 7/8; where the image is exactly 0 or 1 the label agrees."""
    label = np.zeros((30, 30, 30), np.uint8)
    label[9:21, 8:20, 10:22] = 5
    image = (label > 0).astype(np.float32)
    size, centre = (20, 20, 20), np.array([15, 15, 15])
    field = augment.elastic_offsets(np.random.default_rng(4), size, 2.5, 5.0)
    img, lab = augment.extract_patch(image, label, centre, size, displacement=field)
    assert (img[lab == 5] >= 0.125 - 1e-6).all() and (img[lab == 0] <= 0.875 + 1e-6).all()
    assert (lab[img == 1.0] == 5).all() and (lab[img == 0.0] == 0).all()
    plain = augment.extract_patch(image, label, centre, size)[1]
    assert (lab != plain).any()


def test_displacement_scales_with_std_and_is_smooth():
    size = (32, 24, 16)
    unit = augment.elastic_offsets(np.random.default_rng(5), size, 1.0, 8.0)
    triple = augment.elastic_offsets(np.random.default_rng(5), size, 3.0, 8.0)
    np.testing.assert_allclose(triple, 3.0 * unit, rtol=1e-6, atol=1e-6)
    assert 0.4 < unit.std() < 1.3, unit.std()  # unit-normal control points, interpolated
    step = np.abs(np.diff(unit, axis=1)).mean()
    assert step < 0.3 * unit.std(), step  # neighbours move together
    rough = augment.elastic_offsets(np.random.default_rng(5), size, 1.0, 2.0)
    assert np.abs(np.diff(rough, axis=1)).mean() > step  # closer control points, rougher


def slabs(shape, max_fraction):
    """Every mask fov_crop may cut: (axis, side, width) → [X, Y, Z] bool."""
    out = {}
    for axis, side in itertools.product(range(3), range(2)):
        n = shape[axis]
        for width in range(int(max_fraction * n) + 1):
            mask = np.zeros(shape, bool)
            cut = [slice(None)] * 3
            cut[axis] = slice(0, width) if side == 0 else slice(n - width, n)
            mask[tuple(cut)] = True
            out[axis, side, width] = mask
    return out


def test_fov_crop_cuts_one_slab_at_one_side_and_leaves_its_inputs():
    shape, fraction, pad = (6, 7, 8), 0.5, -9.0
    rng = np.random.default_rng(6)
    image = rng.uniform(0, 1, shape).astype(np.float32)
    label = rng.integers(1, 6, shape).astype(np.uint8)
    image.setflags(write=False)  # as a memory-mapped cache is
    label.setflags(write=False)
    image0, label0 = image.copy(), label.copy()
    allowed = slabs(shape, fraction)
    seen = set()
    for seed in range(60):
        img, lab = augment.fov_crop(image, label, np.random.default_rng(seed), fraction, pad)
        assert img.dtype == np.float32 and lab.dtype == np.uint8 and img.shape == shape
        assert not np.shares_memory(img, image) and not np.shares_memory(lab, label)
        cut = lab != label
        np.testing.assert_array_equal(cut, img != image)
        assert (img[cut] == pad).all() and (lab[cut] == 0).all()
        match = [k for k, m in allowed.items() if np.array_equal(m, cut)]
        assert match, f"seed {seed}: not a slab at one side"
        seen.update((a, s) for a, s, w in match if w > 0)
    assert seen == set(itertools.product(range(3), range(2)))  # every axis and side
    np.testing.assert_array_equal(image, image0)
    np.testing.assert_array_equal(label, label0)
    img, lab = augment.fov_crop(image, label, np.random.default_rng(0), 0.0, pad)
    np.testing.assert_array_equal(img, image)
    np.testing.assert_array_equal(lab, label)


def batches(cache, cfg, n=3, seed=3):
    it = iter(pipeline.make_dataset(str(cache), "train", cfg, seed=seed, shard=ONE))
    return [next(it) for _ in range(n)]


def test_off_by_default_and_the_stream_unchanged_when_off(tiny_mni_cache):
    """With the probabilities at 0 nothing is drawn: the other knobs do not matter and the
    batches are byte-identical to the default configuration's."""
    assert CFG.elastic_prob == 0.0 and CFG.fov_crop_prob == 0.0
    knobs = dict(elastic_std_vox=5.0, elastic_grid_vox=3.0, fov_crop_max_fraction=0.9)
    a = batches(tiny_mni_cache, CFG)
    b = batches(tiny_mni_cache, dataclasses.replace(CFG, **knobs))
    for x, y in zip(a, b, strict=True):
        assert x["image"].tobytes() == y["image"].tobytes()
        assert x["label"].tobytes() == y["label"].tobytes()
        np.testing.assert_array_equal(x["case"], y["case"])


def test_elastic_in_the_pipeline_keeps_ids_and_shapes(tiny_mni_cache):
    base = dataclasses.replace(CFG, intensity_prob=0.0)
    off = batches(tiny_mni_cache, base)
    on = batches(tiny_mni_cache, dataclasses.replace(base, elastic_prob=1.0))
    source = pipeline.CaseSource(str(tiny_mni_cache), "train")
    ids = set().union(*(np.unique(source[i]["label"]).tolist() for i in range(len(source))))
    for x, y in zip(off, on, strict=True):
        assert x["image"].shape == y["image"].shape and x["label"].shape == y["label"].shape
        assert y["label"].dtype == np.uint8 and np.isfinite(y["image"]).all()
        assert set(np.unique(y["label"]).tolist()) <= ids
        np.testing.assert_array_equal(x["case"], y["case"])  # the same patches, deformed
    same = np.mean([(x["label"] == y["label"]).mean() for x, y in zip(off, on, strict=True)])
    assert 0.5 < same < 1.0, same


def test_fov_crop_in_the_pipeline_only_zeroes_labels_in_a_padded_slab(tiny_mni_cache):
    base = dataclasses.replace(CFG, intensity_prob=0.0)  # images differ only where cut
    off = batches(tiny_mni_cache, base, n=4)
    on = batches(tiny_mni_cache, dataclasses.replace(base, fov_crop_prob=1.0), n=4)
    source = pipeline.CaseSource(str(tiny_mni_cache), "train")
    widest = [m for (_, _, w), m in slabs(base.patch_size, 0.4).items() if w == 6]
    cut_any = False
    for x, y in zip(off, on, strict=True):
        assert x["image"].shape == y["image"].shape and x["label"].shape == y["label"].shape
        np.testing.assert_array_equal(x["case"], y["case"])
        for img0, img1, lab0, lab1, case in zip(
            x["image"][..., 0], y["image"][..., 0], x["label"], y["label"], x["case"], strict=True
        ):
            assert ((lab1 == lab0) | (lab1 == 0)).all()  # cut to background, nothing else
            changed = img1 != img0
            assert (img1[changed] == source[int(case)]["pad_value"]).all()
            cut = changed | (lab1 != lab0)  # within one slab of at most 0.4 x 16 voxels
            assert any((cut <= m).all() for m in widest), "not a slab at one side"
            cut_any |= bool((lab1 != lab0).any())
    assert cut_any


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("elastic_prob", 1.5),
        ("elastic_prob", -0.1),
        ("elastic_std_vox", -1.0),
        ("elastic_std_vox", float("nan")),
        ("elastic_grid_vox", 0.5),
        ("fov_crop_prob", 2.0),
        ("fov_crop_max_fraction", 1.0),
        ("fov_crop_max_fraction", -0.1),
    ],
)
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(CFG, **{field: value})
