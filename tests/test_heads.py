"""Tests for msseg.data.heads: synthetic heads around the embedded set's brains."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from msseg.data import datasets, heads, mni152

CFG = heads.HeadConfig()
CODE = {name: k for k, name in enumerate(heads.REGIONS)}


def _ball_brain(shape=(40, 44, 40), radius=9.0, spacing=2.0) -> np.ndarray:
    """A ball-shaped 'brain' a bit above the grid's middle (room for the neck below)."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    centre = (shape[0] / 2, shape[1] / 2, shape[2] * 0.6)
    r2 = sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True))
    return r2 <= radius**2


def _flat_field(grid_mm: float) -> np.ndarray:
    return np.zeros((40, 44, 40), np.float32)


def _regions(seed: int, brain=None, cfg=CFG, field=_flat_field) -> np.ndarray:
    brain = _ball_brain() if brain is None else brain
    return heads.head_regions(brain, 2.0, cfg, np.random.default_rng(seed), field)


def test_pad_grid_keeps_world_positions_and_grows_most_below():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-90.0, -120.0, -70.0)
    shape, padded = heads.pad_grid(
        (10, 12, 14), affine, 2.0, heads.HeadConfig(pad_mm=12.0, neck_mm=48.0)
    )
    assert shape == (10 + 12, 12 + 12, 14 + 12 + 24)
    # old voxel (0, 0, 0) is new voxel (6, 6, 30): the same world point
    np.testing.assert_allclose(padded @ [6, 6, 30, 1], affine @ [0, 0, 0, 1])
    np.testing.assert_allclose(padded[:3, :3], affine[:3, :3])


def test_the_brain_is_kept_and_shells_grow_outwards_in_order():
    brain = _ball_brain()
    regions = _regions(0, brain, heads.HeadConfig(eye_prob=0.0, max_blobs=0))
    assert np.array_equal(regions == CODE["brain"], brain)
    dist = ndimage.distance_transform_edt(~brain, sampling=2.0)
    upper = np.arange(40)[None, None, :] > 30  # above the neck
    means = []
    for name, _ in heads.SHELLS:
        sel = (regions == CODE[name]) & upper
        if sel.any():
            means.append(dist[sel].mean())
    assert len(means) >= 6 and np.all(np.diff(means) > 0), means
    assert (regions == CODE["air"]).any()  # the head ends inside the grid
    # directly outside the brain: the dura (or the next shell where the dura is thin)
    shell = ndimage.binary_dilation(brain) & ~brain
    assert set(np.unique(regions[shell])) <= {CODE["dura"], CODE["inner table"], CODE["neck"]}
    assert "csf" not in heads.REGIONS  # the brain label holds its CSF up to the dura


def test_neck_is_below_the_brain_and_eyes_and_blobs_stay_out_of_it():
    brain = _ball_brain()
    with_eyes = 0
    for seed in range(4):
        regions = _regions(seed, brain, heads.HeadConfig(eye_prob=1.0, max_blobs=4))
        assert np.array_equal(regions == CODE["brain"], brain)
        neck_z = np.argwhere((regions == CODE["neck"]) | (regions >= heads.FIRST_BLOB))[:, 2]
        assert len(neck_z) and neck_z.min() == 0  # down to the grid's bottom (blobs may cover it)
        bare = _regions(seed, brain, heads.HeadConfig(eye_prob=1.0, max_blobs=0))
        neck_top = np.argwhere(bare == CODE["neck"])[:, 2].max()
        assert neck_top < np.argwhere(brain)[:, 2].max()
        # the skull base lies between the neck and the brain: no neck voxel touches it
        assert not (ndimage.binary_dilation(brain) & (bare == CODE["neck"])).any()
        others = regions >= CODE["eye"]
        assert not (others & brain).any()
        # eyes and blobs take nothing from the dura: same head without them
        assert np.array_equal(regions == CODE["dura"], bare == CODE["dura"])
        with_eyes += bool((regions == CODE["eye"]).any())
    assert with_eyes >= 3  # drawn with probability 1; shown unless they fall inside the core


def test_smooth_fields_move_the_boundaries_but_not_the_brain():
    brain = _ball_brain()
    rng = np.random.default_rng(5)
    field = lambda grid_mm: rng.standard_normal((40, 44, 40)).astype(np.float32)  # noqa: E731
    a = _regions(1, brain, heads.HeadConfig(max_blobs=0, eye_prob=0.0))
    b = _regions(1, brain, heads.HeadConfig(max_blobs=0, eye_prob=0.0), field)
    assert np.array_equal(a == CODE["brain"], b == CODE["brain"])
    assert (a != b).mean() > 0.01


def test_render_t1_like_has_bright_white_matter_and_random_contrast_varies():
    brain = _ball_brain()
    regions = _regions(2, brain)
    gm = np.where(brain, 0.3, 0.0).astype(np.float32)
    wm = np.where(brain, 0.7, 0.0).astype(np.float32)
    t1 = np.where(brain, 0.8, 0.0).astype(np.float32)
    cfg = heads.HeadConfig(random_contrast_prob=0.0, max_blur_mm=0.0)
    img = heads.render(regions, t1, gm, wm, 2.0, cfg, np.random.default_rng(0))
    assert img.dtype == np.float32 and img.shape == regions.shape
    assert abs(float(np.median(img[brain])) - 0.8 / heads.TEMPLATE_WM) < 0.3
    assert img[regions == CODE["air"]].max() == 0.0  # no texture in air before noise
    skull = img[regions == CODE["inner table"]].mean()
    assert skull < img[brain].mean()  # T1: bone is dark
    random = heads.HeadConfig(random_contrast_prob=1.0, max_blur_mm=0.0)
    draw = lambda s: heads.render(regions, t1, gm, wm, 2.0, random, np.random.default_rng(s))  # noqa: E731
    brains = [float(np.median(draw(s)[brain])) for s in range(6)]
    assert np.std(brains) > 0.05  # the brain's level is drawn, not the template's


def test_head_subject_labels_are_the_stripped_rule_on_a_larger_grid():
    """Same warp (no elastic field, which depends on the grid): the labels of a subject with a
    head are the skull-stripped subject's labels, padded with background."""
    stripped = mni152.SynthConfig(spacing=4.0, elastic_std_mm=0.0)
    headed = mni152.SynthConfig(spacing=4.0, elastic_std_mm=0.0, head=heads.HeadConfig())
    t = mni152.load_template()
    img_s, lab_s, aff_s = mni152.synthesize_subject(t, stripped, np.random.default_rng(3))
    img_h, lab_h, aff_h = mni152.synthesize_subject(t, headed, np.random.default_rng(3))
    lo = np.round(np.linalg.inv(aff_h) @ aff_s @ [0, 0, 0, 1])[:3].astype(int)
    inner = tuple(slice(a, a + n) for a, n in zip(lo, lab_s.shape, strict=True))
    assert np.array_equal(lab_h[inner], lab_s)  # (outside it, more of the warped template)
    assert img_h.dtype == np.int16 and img_h.shape == lab_h.shape
    # the head is in the image: bright tissue outside the brain
    assert np.percentile(img_h[lab_h == 0], 95) > 0.3 * np.percentile(img_h[lab_h > 0], 50)


def test_the_heads_set_builds_resolves_and_combines_with_mni152(tmp_path):
    tiny = mni152.SynthConfig(counts=(1, 1, 1), spacing=4.0, head=heads.HeadConfig())
    folder = mni152.build(tiny, cache=tmp_path, workers=1)
    assert folder.name.startswith("mni152-heads-v1-4mm-1-1-1-")
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["name"] == "mni152-heads" and meta["synth_config"]["head"]["max_slice_mm"] == 6.0
    assert meta["test"][0]["image"] == "./imagesTs/mni152-heads_test_000.nii.gz"
    assert mni152.verify(folder) is None
    assert set(datasets.EMBEDDED) == set(mni152.EMBEDDED)
    # a stripped set keeps its key and its dataset.json has no head
    assert "head" not in mni152.SynthConfig().fields()
    assert mni152.dataset_dir(mni152.SynthConfig()).name.endswith("04cf24b9f5")


@pytest.mark.parametrize("spec", ["mni152-head", "heads"])
def test_unknown_embedded_names_are_refused_with_the_known_ones(spec, tmp_path):
    with pytest.raises(datasets.InputError, match="mni152-heads"):
        datasets.resolve(spec, cache=tmp_path)


def test_random_tissue_levels_keep_tissues_apart_in_any_order():
    rng = np.random.default_rng(0)
    draws = np.array([heads.tissue_levels(rng, 0.2) for _ in range(300)])
    assert draws.min() >= 0.0 and draws.max() <= 1.0
    gaps = np.abs(draws[:, [0, 0, 1]] - draws[:, [1, 2, 2]])
    assert gaps.min() >= 0.2
    orders = {tuple(np.argsort(d)) for d in draws}
    assert len(orders) == 6  # T1-like, T2-like and every other order occur
