"""Tests for msseg.data.mni152: the §3 label rule, building and verifying the embedded set."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from msseg import io
from msseg.data import datasets, mni152

TINY = mni152.SynthConfig(counts=(2, 1, 1), spacing=4.0)

# --------------------------------------------------------------------------- the label rule


def _raw_maps() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """T1, GM, WM as the integers nilearn ships (0..255), and the common affine."""
    folder = mni152.template_dir()
    maps, affines = [], []
    for key in ("t1", "gm", "wm"):
        img = nib.load(folder / mni152.TEMPLATE_FILES[key])
        maps.append(np.asarray(img.dataobj).astype(np.int64))
        affines.append(img.affine)
    assert all(np.array_equal(a, affines[0]) for a in affines)
    return maps[0], maps[1], maps[2], affines[0]


def _rule(t1, gm, wm, affine) -> np.ndarray:
    """The mni-tissue rule in exact integer arithmetic (everything scaled by 255)."""
    brain = t1 * 5 > 255  # T1 / 255 > 0.2
    csf = np.clip(255 - gm - wm, 0, 255)  # 255 * clip(1 - p_gm - p_wm, 0, 1)
    p = np.stack([csf, gm, wm])
    tissue = np.argmax(p, axis=0)  # ties go to the first: CSF, then GM, then WM
    ijk = np.indices(t1.shape, dtype=np.float64).reshape(3, -1)
    x = (affine[0, :3] @ ijk + affine[0, 3]).reshape(t1.shape)  # world x, RAS mm
    side = np.where(x < 0, 0, 3)  # left: 1/2/3, right: 4/5/6
    return np.where(brain, 1 + tissue + side, 0).astype(np.uint8)


@pytest.fixture(scope="module")
def rule():
    """(reference labels, the voxels where the rule sits exactly on a threshold or a tie)."""
    t1, gm, wm, affine = _raw_maps()
    csf = np.clip(255 - gm - wm, 0, 255)
    p = np.stack([csf, gm, wm])
    top = p.max(axis=0)
    edge = (t1 * 5 == 255) | ((p == top).sum(axis=0) > 1)
    return _rule(t1, gm, wm, affine), edge


@pytest.fixture(scope="module")
def template_labels():
    return mni152.template_labels(mni152.load_template())


def test_template_is_ras_1mm_and_shared_by_the_maps():
    t = mni152.load_template()
    assert t.t1.shape == t.gm.shape == t.wm.shape == (197, 233, 189)
    assert t.t1.dtype == np.float32
    assert 0.0 <= t.t1.min() and t.t1.max() <= 1.0
    np.testing.assert_array_equal(np.diag(t.affine)[:3], [1.0, 1.0, 1.0])
    assert t.affine[0, 3] < 0 < t.affine[0, 3] + t.t1.shape[0]  # both hemispheres in view


def test_template_labels_follow_the_rule_exactly(rule, template_labels):
    reference, _ = rule
    assert template_labels.dtype == np.uint8
    differ = int(np.count_nonzero(reference != template_labels))
    assert differ == 0, f"{differ} voxels differ from the mni-tissue rule"


def test_template_labels_follow_the_rule_away_from_ties(rule, template_labels):
    """Everywhere but at exact ties / the exact brain threshold the library matches the rule."""
    reference, edge = rule
    assert template_labels.dtype == np.uint8
    assert template_labels.shape == reference.shape
    np.testing.assert_array_equal(template_labels[~edge], reference[~edge])
    assert np.count_nonzero(edge) < 1e-3 * edge.size  # the exception is tiny
    # All seven values occur, each hemisphere is about half of the brain.
    counts = np.bincount(template_labels.ravel(), minlength=7)
    assert counts.size == 7 and np.all(counts > 50_000)
    left, right = counts[1:4].sum(), counts[4:7].sum()
    assert 0.45 < left / (left + right) < 0.55


@pytest.fixture(scope="module")
def identity_subject():
    cfg = mni152.SynthConfig(spacing=1.0)
    return mni152.synthesize_subject(
        mni152.load_template(), cfg, np.random.default_rng(0), identity=True
    )


def test_identity_subject_equals_template_labels(identity_subject, template_labels):
    image, labels, affine = identity_subject
    t = mni152.load_template()
    np.testing.assert_array_equal(affine, t.affine)
    assert labels.dtype == np.uint8 and image.dtype == np.int16
    np.testing.assert_array_equal(labels, template_labels)
    np.testing.assert_array_equal(image, np.round(t.t1 * 1000).astype(np.int16))


def test_identity_subject_follows_the_rule_exactly(identity_subject, rule):
    _, labels, _ = identity_subject
    np.testing.assert_array_equal(labels, rule[0])


# --------------------------------------------------------------------------- build / verify


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in [root, *sorted(root.rglob("*"))]}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny set built once; tests that damage a cache work on a copy."""
    cache = tmp_path_factory.mktemp("mni152-cache")
    folder = mni152.build(TINY, cache=cache, workers=1)
    return cache, folder


def _copy_cache(built, dest: Path) -> Path:
    cache, folder = built
    shutil.copytree(folder, dest / folder.name)
    return dest / folder.name


def test_build_writes_an_msd_dataset(built):
    cache, folder = built
    assert folder == mni152.dataset_dir(TINY, cache)
    assert folder.parent == cache and folder.name.startswith("mni152-v1-4mm-2-1-1-")
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["protocol"] == "mni-tissue"
    assert meta["labels"] == {str(k): v for k, v in mni152.LABEL_NAMES.items()}
    assert [len(meta[k]) for k in ("training", "validation", "test")] == [2, 1, 1]
    assert meta["synth_config"]["spacing"] == 4.0
    entries = meta["training"] + meta["validation"] + meta["test"]
    for entry in entries:
        assert set(entry) == {"image", "label"}
        assert (folder / entry["image"]).is_file() and (folder / entry["label"]).is_file()

    ds = datasets.resolve(folder)
    assert ds.protocol.name == "mni-tissue"
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [2, 1, 1]
    assert all(c.label is not None for c in ds.cases)


def test_built_files_are_real_nifti_on_one_grid(built):
    _, folder = built
    meta = json.loads((folder / "dataset.json").read_text())
    shape, _ = mni152.subject_grid(mni152.load_template(), 4.0)
    for entry in meta["training"] + meta["validation"] + meta["test"]:
        assert nib.load(folder / entry["image"]).get_data_dtype() == np.int16
        assert nib.load(folder / entry["label"]).get_data_dtype() == np.uint8
        image = io.load_image(folder / entry["image"])
        label = io.load_label(folder / entry["label"])
        io.check_same_grid(image, label)
        np.testing.assert_allclose(image.affine, label.affine)
        assert image.data.shape == shape
        assert image.spacing == pytest.approx((4.0, 4.0, 4.0))
        values = set(np.unique(label.data).tolist())
        assert values == set(range(7)), values  # all of 0..6 and nothing else
        assert image.data.min() >= 0 and image.data[label.data > 0].mean() > 200
        assert image.data[label.data == 0].mean() < image.data[label.data > 0].mean() / 2


def test_manifest_checksums_match(built):
    _, folder = built
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["version"] == mni152.FORMAT_VERSION
    on_disk = _digests(folder)
    on_disk.pop("manifest.json")
    assert manifest["sha256"] == on_disk
    assert len(on_disk) == 9  # dataset.json + 4 images + 4 labels
    assert mni152.verify(folder) is None


def test_left_and_right_are_anatomical(built):
    _, folder = built
    meta = json.loads((folder / "dataset.json").read_text())
    for entry in meta["training"] + meta["validation"] + meta["test"]:
        label = io.load_label(folder / entry["label"])
        idx = np.argwhere(label.data > 0).astype(np.float64)
        x = idx @ label.affine[0, :3] + label.affine[0, 3]
        values = label.data[label.data > 0]
        left, right = x[values <= 3], x[values >= 4]
        assert left.mean() < -20 and right.mean() > 20, (left.mean(), right.mean())
        # The few voxels across the midline come from the rotation and shift only.
        assert np.mean(left > 10) < 0.02 and np.mean(right < -10) < 0.02


def test_build_is_deterministic(built, tmp_path):
    _, folder = built
    other = mni152.build(TINY, cache=tmp_path / "other", workers=2)
    assert other.name == folder.name
    assert _digests(other) == _digests(folder)


def test_second_build_returns_without_rewriting(built):
    cache, folder = built
    before = _mtimes(cache)
    start = time.perf_counter()
    assert mni152.build(TINY, cache=cache, workers=1) == folder
    assert time.perf_counter() - start < 3.0
    assert _mtimes(cache) == before


def test_truncated_file_is_detected_and_rebuilt(built, tmp_path):
    folder = _copy_cache(built, tmp_path)
    good = _digests(folder)
    victim = folder / "imagesTr" / "mni152_train_001.nii.gz"
    victim.write_bytes(victim.read_bytes()[:1000])
    assert mni152.verify(folder) == "checksum mismatch for imagesTr/mni152_train_001.nii.gz"
    assert mni152.build(TINY, cache=tmp_path, workers=1) == folder
    assert mni152.verify(folder) is None
    assert _digests(folder) == good


def test_missing_file_is_detected(built, tmp_path):
    folder = _copy_cache(built, tmp_path)
    (folder / "labelsTs" / "mni152_test_000.nii.gz").unlink()
    assert mni152.verify(folder) == "missing labelsTs/mni152_test_000.nii.gz"


def test_unreadable_manifest_is_detected(built, tmp_path):
    folder = _copy_cache(built, tmp_path)
    (folder / "manifest.json").write_text("{")
    assert mni152.verify(folder).startswith("unreadable manifest.json")


def test_missing_manifest_is_rebuilt_and_stale_tmp_removed(built, tmp_path):
    """A cache without manifest (never finished) is rebuilt; dead builds' tmp folders go."""
    folder = _copy_cache(built, tmp_path)
    good = _digests(folder)
    (folder / "manifest.json").unlink()
    assert mni152.verify(folder) == "no manifest.json (never finished)"

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{folder.name}.tmp-{dead.pid}"
    (stale / "imagesTr").mkdir(parents=True)
    (stale / "imagesTr" / "half.nii.gz").write_bytes(b"\x1f\x8b")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / f"{folder.name}.tmp-{live.pid}"
        busy.mkdir()
        assert mni152.build(TINY, cache=tmp_path, workers=1) == folder
        assert not stale.exists()
        assert busy.exists()  # another build still running: left alone
    finally:
        live.kill()
        live.wait()
    assert _digests(folder) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([folder.name, busy.name])


# --------------------------------------------------------------------------- cache location


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("MSSEG_CACHE", str(tmp_path / "env"))
    assert mni152.cache_root() == tmp_path / "env"
    assert mni152.dataset_dir(TINY).parent == tmp_path / "env"
    assert mni152.cache_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert mni152.cache_root("~/x") == Path(os.path.expanduser("~/x"))
    monkeypatch.delenv("MSSEG_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert mni152.cache_root() == tmp_path / "home" / ".cache" / "msseg"


def test_dataset_dir_depends_on_the_config():
    base = mni152.dataset_dir(TINY, "/c")
    assert mni152.dataset_dir(TINY, "/c") == base
    other = mni152.SynthConfig(counts=(2, 1, 1), spacing=4.0, bias_std=0.3)
    assert mni152.dataset_dir(other, "/c") != base
    assert mni152.dataset_dir(mni152.SynthConfig(counts=(2, 1, 2), spacing=4.0), "/c") != base
