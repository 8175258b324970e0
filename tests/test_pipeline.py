"""The grain patch pipeline: determinism, exact resume through orbax, process sharding, pyramid."""

import dataclasses

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from msseg import labels as labels_lib
from msseg.data import augment, pipeline

CFG = pipeline.PipelineConfig(patch_size=(16, 16, 16), batch_size=2, num_threads=1)
ONE = grain.sharding.NoSharding()


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
        np.testing.assert_array_equal(x["case"], y["case"])


def test_batch_layout(tiny_mni_cache):
    batch = next(iter(pipeline.make_dataset(str(tiny_mni_cache), "train", CFG, seed=0, shard=ONE)))
    assert batch["image"].shape == (2, 16, 16, 16, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (2, 16, 16, 16) and batch["label"].dtype == np.uint8
    assert set(batch) == {"image", "label", "case"}  # targets are built on the device
    assert np.isfinite(batch["image"]).all()


def test_deterministic_for_a_seed(tiny_mni_cache):
    make = lambda seed: iter(
        pipeline.make_dataset(str(tiny_mni_cache), "train", CFG, seed=seed, shard=ONE)
    )
    first, again, other = take(make(3), 6), take(make(3), 6), take(make(4), 6)
    assert_batches_equal(first, again)
    assert not all(
        np.array_equal(a["image"], b["image"]) for a, b in zip(first, other, strict=True)
    )
    # successive epochs are reshuffled and re-augmented, not replayed
    assert not np.array_equal(first[0]["image"], first[3]["image"])


def resume_through_orbax(make, tmp_path) -> list[dict]:
    """Takes 3 batches, saves the iterator with orbax, takes 4 more; a new iterator restored
    from the save gives the same 4. Returns them."""
    it = make()
    take(it, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    expected = take(it, 4)
    resumed = make()
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(
            3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(resumed))
        )
    assert_batches_equal(take(resumed, 4), expected)
    return expected


def test_resume_after_orbax_save_restore(tiny_mni_cache, tmp_path):
    make = lambda: iter(pipeline.make_dataset(str(tiny_mni_cache), "train", CFG, seed=7, shard=ONE))
    resume_through_orbax(make, tmp_path)


def test_two_processes_get_disjoint_cases(tiny_mni_cache):
    source = pipeline.CaseSource(str(tiny_mni_cache), "train")
    seen = []
    for index in range(2):
        shard = grain.sharding.ShardOptions(shard_index=index, shard_count=2)
        it = iter(pipeline.make_dataset(str(tiny_mni_cache), "train", CFG, seed=0, shard=shard))
        seen.append({int(c) for b in take(it, 6) for c in b["case"]})
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert seen[0] | seen[1] <= set(range(len(source)))


def test_a_case_source_opens_each_file_once_from_many_threads(tiny_mni_cache, monkeypatch):
    """np.load parses .npy headers with ast, which CPython 3.11 cannot do from two threads at
    once (python/cpython#106905): the loader threads open each case once, under a lock."""
    import concurrent.futures
    import pickle

    source = pipeline.CaseSource(str(tiny_mni_cache), "train")
    real_load, calls = np.load, []
    monkeypatch.setattr(np, "load", lambda *a, **k: calls.append(a[0]) or real_load(*a, **k))
    order = [i % len(source) for i in range(8 * len(source))]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(source.__getitem__, order))
    assert len(calls) == 3 * len(source) == len(set(calls))
    for i, element in zip(order, got, strict=True):
        assert element["case"] == source.index[i]
        assert element["image"] is got[i]["image"]  # the same memory map every time
    clone = pickle.loads(pickle.dumps(source))  # a worker process opens its own
    assert clone._opened == {} and np.array_equal(clone[0]["label"], source[0]["label"])


def test_id_fractions_are_pooled_one_hot_over_every_id():
    protocol = labels_lib.get_protocol("mni-tissue")
    j = protocol.num_ids
    rng = np.random.default_rng(0)
    label = rng.integers(0, 7, (8, 8, 8)).astype(np.uint8)
    label[0, 0, 0] = protocol.id_of("GM")  # a node keeps its own id: "left or right GM"
    label[0, 0, 1] = labels_lib.IGNORE
    pyramid = pipeline.id_fractions(label, j, 3)
    assert [p.shape for p in pyramid] == [(8, 8, 8, j), (4, 4, 4, j), (2, 2, 2, j)]
    np.testing.assert_allclose(pyramid[0][1:, 1:, 1:], np.eye(j)[label[1:, 1:, 1:]])
    np.testing.assert_allclose(pyramid[0][0, 0, 0], np.eye(j)[protocol.id_of("GM")])
    assert pyramid[0][0, 0, 1].sum() == 0
    expected = np.eye(j)[label[2:4, 4:6, 6:8]].mean(axis=(0, 1, 2))
    np.testing.assert_allclose(pyramid[1][1, 2, 3], expected, rtol=1e-6)
    np.testing.assert_allclose(pyramid[2][0, 0, 0].sum(), 1 - 1 / 64, rtol=1e-6)  # one IGNORE voxel


def test_flip_swaps_left_and_right():
    protocol = labels_lib.get_protocol("mni-tissue")
    image = np.zeros((4, 2, 2), np.float32)
    image[0] = 1.0
    label = np.zeros((4, 2, 2), np.uint8)
    label[0] = protocol.id_of("Left-GM")
    img, lab = augment.flip_lr(image, label, protocol.lr_swap())
    assert (
        img[3].min() == 1.0
        and (lab[3] == protocol.id_of("Right-GM")).all()
        and (lab[:3] == 0).all()
    )


def test_patch_pads_small_volume():
    image = np.ones((5, 6, 7), np.float32)
    label = np.full((5, 6, 7), 2, np.uint8)
    img, lab = augment.extract_patch(
        image, label, np.array([2, 3, 3]), (16, 16, 16), pad_value=-3.0
    )
    assert img.shape == lab.shape == (16, 16, 16)
    assert (img == 1).sum() == (lab == 2).sum() == 5 * 6 * 7
    assert set(np.unique(img)) == {-3.0, 1.0} and set(np.unique(lab)) == {0, 2}
    rot = augment.random_rotation_scaling(np.random.default_rng(0), 10, (0.9, 1.1))
    img_r, lab_r = augment.extract_patch(
        image, label, np.array([2, 3, 3]), (16, 16, 16), matrix=rot
    )
    assert img_r.shape == (16, 16, 16) and set(np.unique(lab_r)) <= {0, 2}


def test_identity_matrix_matches_slicing():
    rng = np.random.default_rng(1)
    image = rng.standard_normal((20, 21, 22)).astype(np.float32)
    label = rng.integers(0, 5, (20, 21, 22)).astype(np.uint8)
    centre = np.array([9.5, 10.5, 10.5])  # patch centre between voxels for an even size
    a = augment.extract_patch(image, label, np.array([10, 11, 11]), (8, 8, 8))
    b = augment.extract_patch(image, label, centre, (8, 8, 8), matrix=np.eye(3))
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)
    np.testing.assert_array_equal(a[1], b[1])


def test_foreground_ratio_one_centres_on_labels(tiny_mni_cache):
    cfg = pipeline.PipelineConfig(
        patch_size=(8, 8, 8),
        batch_size=4,
        foreground_ratio=1.0,
        spatial_prob=0.0,
        flip_lr_prob=0.0,
        num_threads=1,
    )
    it = iter(pipeline.make_dataset(str(tiny_mni_cache), "train", cfg, seed=0, shard=ONE))
    for batch in take(it, 3):
        assert (
            batch["label"][:, 4, 4, 4] > 0
        ).all()  # the centre voxel (index size//2) is labelled


@pytest.mark.slow
def test_multiprocess_workers_match_shapes_and_resume(tiny_mni_cache, tmp_path):
    cfg = pipeline.PipelineConfig(patch_size=(16, 16, 16), batch_size=2, num_workers=2)
    make = lambda: iter(pipeline.make_dataset(str(tiny_mni_cache), "train", cfg, seed=5, shard=ONE))
    it = make()
    take(it, 2)
    state = it.get_state()
    expected = take(it, 3)
    resumed = make()
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 3), expected)


# --------------------------------------------------------------------------- dataset weights


@pytest.fixture(scope="module")
def two_dataset_cache(tmp_path_factory):
    """One cache of two datasets (SPEC "Full,Coarse"): two full-label cases, one coarse."""
    from test_preprocess import _two

    from msseg.data import preprocess

    root = tmp_path_factory.mktemp("two")
    spec = _two(root)
    preprocess.run(spec, root / "prep", spacing=(2.0, 2.0, 2.0), workers=1, val_fraction=0.0)
    return str(root / "prep")


def _datasets_of(cache, batches) -> list[str]:
    records = pipeline.CaseSource(cache, "train").records
    return [records[int(c)]["dataset"] for b in batches for c in b["case"]]


def test_dataset_weights_set_each_datasets_share_of_the_patches(two_dataset_cache):
    cfg = dataclasses.replace(CFG, dataset_weights=(1.0, 3.0))
    it = iter(pipeline.make_dataset(two_dataset_cache, "train", cfg, seed=0, shard=ONE))
    seen = _datasets_of(two_dataset_cache, take(it, 8))  # 16 patches
    assert seen.count("Coarse") == 12 and seen.count("Full") == 4  # 3 : 1, not 1 : 2 per case
    # Both full cases still take turns, and every element keeps its index in the split.
    cases = [c for b in take(it, 8) for c in b["case"].tolist()]
    assert {0, 1} <= set(cases) <= {0, 1, 2}
    # A weight of 0 leaves a dataset out; without weights every case is equally likely.
    only = dataclasses.replace(CFG, dataset_weights=(0.0, 1.0))
    it = iter(pipeline.make_dataset(two_dataset_cache, "train", only, seed=0, shard=ONE))
    assert set(_datasets_of(two_dataset_cache, take(it, 4))) == {"Coarse"}
    it = iter(pipeline.make_dataset(two_dataset_cache, "train", CFG, seed=0, shard=ONE))
    assert _datasets_of(two_dataset_cache, take(it, 6)).count("Coarse") == 4  # 1 of 3 cases


def test_dataset_weights_resume_through_orbax(two_dataset_cache, tmp_path):
    cfg = dataclasses.replace(CFG, dataset_weights=(2.0, 1.0))
    make = lambda: iter(pipeline.make_dataset(two_dataset_cache, "train", cfg, seed=4, shard=ONE))
    expected = resume_through_orbax(make, tmp_path)
    again = take(make(), 7)  # the same stream for the same seed
    assert_batches_equal(again[3:], expected)


def test_bad_dataset_weights_name_the_problem(two_dataset_cache):
    with pytest.raises(ValueError, match=r"must be >= 0"):
        pipeline.PipelineConfig(dataset_weights=(1.0, -1.0))
    with pytest.raises(ValueError, match=r"positive sum"):
        pipeline.PipelineConfig(dataset_weights=(0.0, 0.0))
    three = dataclasses.replace(CFG, dataset_weights=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"3 weights for the 2 datasets \['Full', 'Coarse'\]"):
        pipeline.make_dataset(two_dataset_cache, "train", three, seed=0, shard=ONE)
    # Two processes: the one coarse case cannot feed both.
    cfg = dataclasses.replace(CFG, dataset_weights=(1.0, 1.0))
    shard = grain.sharding.ShardOptions(shard_index=1, shard_count=2)
    with pytest.raises(ValueError, match=r"shard 1/2 of 'train' of 'Coarse' is empty"):
        pipeline.make_dataset(two_dataset_cache, "train", cfg, seed=0, shard=shard)


def _energy_of_differences(image: np.ndarray, axis: int) -> float:
    return float((np.diff(image, axis=axis) ** 2).mean())


def test_random_resolution_blurs_one_axis_most_and_keeps_the_grid():
    """The image as a thick-slice scan: same shape, the fine detail along the thick axis
    mostly gone, mean intensity kept; a factor of 1 everywhere is (nearly) the identity."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(24, 20, 16)).astype(np.float32)
    thick = []
    for seed in range(6):
        out = augment.random_resolution(image, np.random.default_rng(seed), max_factor=4.0)
        assert out.shape == image.shape and out.dtype == np.float32
        assert abs(float(out.mean() - image.mean())) < 0.05
        energy = [_energy_of_differences(out, a) for a in range(3)]
        assert max(energy) < 0.8 * _energy_of_differences(image, 0)  # every axis smoothed some
        thick.append(int(np.argmin(energy)))
    assert len(set(thick)) > 1  # the thick axis is drawn
    same = augment.random_resolution(image, np.random.default_rng(0), max_factor=1.0)
    np.testing.assert_allclose(same, image, atol=1e-5)


def test_random_resolution_is_off_by_default_and_changes_only_images(tiny_mni_cache):
    """lowres_prob is 0 by default; at 1 the same patches come out with other images and the
    same labels."""
    on = dataclasses.replace(CFG, lowres_prob=1.0, intensity_prob=0.0)
    off = dataclasses.replace(CFG, intensity_prob=0.0)
    assert CFG.lowres_prob == 0.0
    make = lambda cfg: take(
        iter(pipeline.make_dataset(str(tiny_mni_cache), "train", cfg, seed=3, shard=ONE)), 3
    )
    a, b = make(off), make(on)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["label"], y["label"])
    assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="lowres_prob must be in"):
        dataclasses.replace(CFG, lowres_prob=1.5)
