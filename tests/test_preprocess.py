"""Tests for msseg.data.preprocess and tools/preprocess.py on small synthetic NIfTI datasets."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from msseg import io
from msseg.data import datasets, prepare, preprocess
from msseg.errors import InputError
from msseg.labels import IGNORE, get_protocol

REPO = Path(__file__).resolve().parents[1]
FOV_MM = np.array([40.0, 44.0, 36.0])
HEAD_CENTRE = np.array([2.0, 1.0, 0.0])  # mm; the head is an ellipsoid ...
HEAD_AXES = np.array([12.0, 13.0, 10.0])  # ... with these semi-axes
LABELS = {"0": "background", "3": "a", "7": "b"}  # raw 3 -> id 1, raw 7 -> id 2
OUTER_MM, INNER_MM = 6.0, 3.0  # sphere radii: raw 3 out to OUTER_MM, raw 7 inside INNER_MM
# name: (axis signs, voxel size mm, sphere centre mm)
CASES = {
    "ras": ((1, 1, 1), (1.0, 1.0, 1.0), (3.0, 2.0, 1.0)),
    "las": ((-1, 1, 1), (1.0, 1.0, 1.0), (-4.0, 4.0, -2.0)),
    "lps_aniso": ((-1, -1, 1), (1.0, 1.0, 2.0), (5.0, -3.0, 2.0)),
}
CFG = prepare.PreprocessConfig(spacing=(2.0, 2.0, 2.0), margin_mm=4.0)


def _affine(signs, zooms) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A grid covering FOV_MM centred on the world origin, axes flipped by `signs`."""
    shape = tuple(int(n) for n in np.round(FOV_MM / zooms))
    affine = np.eye(4)
    affine[:3, :3] = np.diag(np.multiply(signs, zooms))
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine, shape


def _world(affine: np.ndarray, shape) -> np.ndarray:
    """[X, Y, Z, 3] world mm of every voxel centre."""
    ijk = np.indices(shape, dtype=np.float64)
    return np.moveaxis(np.tensordot(affine[:3, :3], ijk, axes=1), 0, -1) + affine[:3, 3]


def _write_case(root: Path, name: str, signs, zooms, centre, *, seed: int = 0, bad=None):
    """A bright head blob in dark noise, and a two-level sphere label inside it."""
    affine, shape = _affine(signs, zooms)
    world = _world(affine, shape)
    rng = np.random.default_rng(seed)
    head = np.sum(((world - HEAD_CENTRE) / HEAD_AXES) ** 2, axis=-1) < 1
    r = np.linalg.norm(world - np.asarray(centre), axis=-1)
    image = np.abs(rng.normal(0, 3, shape)) + 5
    image[head] = 100 + rng.normal(0, 5, int(head.sum()))
    image[r < OUTER_MM] += 40
    raw = np.where(r < INNER_MM, 7, np.where(r < OUTER_MM, 3, 0)).astype(np.uint8)
    label_affine = affine
    if bad == "nan":
        image[3, 4, 5] = np.nan
    elif bad == "value":
        raw[tuple(np.argwhere(raw == 3)[0])] = 5  # not in LABELS
    elif bad == "shifted":
        label_affine = affine.copy()
        label_affine[:3, 3] += 1.5
    elif bad == "shape":
        raw = raw[:, :, :-1]
    img_path = root / "imagesTr" / f"{name}.nii.gz"
    lab_path = root / "labelsTr" / f"{name}.nii.gz"
    img_path.parent.mkdir(parents=True, exist_ok=True)
    lab_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), img_path)
    nib.save(nib.Nifti1Image(raw, label_affine), lab_path)
    return {"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"}


def _dataset(root: Path, bad: dict[str, str] | None = None, extra: dict | None = None) -> Path:
    """The three CASES (+ `extra` name -> case) as an MSD folder; `bad` name -> defect."""
    bad = bad or {}
    cases = {**CASES, **(extra or {})}
    entries = [
        _write_case(root, name, *spec, seed=i, bad=bad.get(name))
        for i, (name, spec) in enumerate(cases.items())
    ]
    meta = {"name": "Toy", "labels": LABELS, "training": entries, "validation": []}
    (root / "dataset.json").write_text(json.dumps(meta, indent=1))
    return root


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _npy_mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted((out / "cases").glob("*.npy"))}


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """(dataset, output folder, manifest) of the three cases preprocessed at 2 mm."""
    root = _dataset(tmp_path_factory.mktemp("toy"))
    dataset = datasets.resolve(root)
    out = tmp_path_factory.mktemp("prep")
    manifest = preprocess.preprocess_dataset(dataset, out, CFG, workers=2)
    return dataset, out, manifest


# --------------------------------------------------------------------------- building blocks


def test_otsu_threshold_separates_two_modes():
    rng = np.random.default_rng(0)
    low, high = rng.normal(10, 1, 5000), rng.normal(50, 3, 2000)
    t = prepare.otsu_threshold(np.concatenate([low, high]))
    assert low.max() < t < high.min()
    assert prepare.otsu_threshold(np.concatenate([low, high]) * 2 - 7) == pytest.approx(t * 2 - 7)
    # Two overlapping modes: near the midpoint of the means.
    a, b = rng.normal(0, 1, 4000), rng.normal(4, 1, 4000)
    assert prepare.otsu_threshold(np.concatenate([a, b])) == pytest.approx(2.0, abs=0.2)


def test_otsu_threshold_is_the_upper_edge_of_the_lower_class():
    rng = np.random.default_rng(0)
    low, high = rng.normal(-70, 3, 5000), rng.normal(50, 9, 200)  # separable
    t = prepare.otsu_threshold(np.concatenate([low, high]))
    assert low.max() < t < high.min()


def test_head_mask_keeps_the_largest_component_and_fills_holes():
    image = np.random.default_rng(1).normal(5, 1, (30, 30, 30))
    image[5:25, 5:25, 5:25] = 100
    image[12:17, 12:17, 12:17] = 5  # a dark hole inside the head
    image[0:3, 0:3, 0:3] = 100  # a small bright blob elsewhere
    mask = prepare.head_mask(image)
    expected = np.zeros(image.shape, bool)
    expected[5:25, 5:25, 5:25] = True
    np.testing.assert_array_equal(mask, expected)


def test_crop_box():
    mask = np.zeros((10, 12, 8), bool)
    mask[3:6, 4, 2:7] = True
    assert prepare.crop_box(mask, np.array([1, 2, 3])) == ((2, 7), (2, 7), (0, 8))
    assert prepare.crop_box(mask, np.zeros(3, int)) == ((3, 6), (4, 5), (2, 7))
    assert prepare.crop_box(np.zeros((4, 5, 6), bool), np.ones(3, int)) == (
        (0, 4),
        (0, 5),
        (0, 6),
    )


def test_normalize():
    rng = np.random.default_rng(2)
    image = rng.normal(0, 1, (20, 20, 20)) + 3
    mask = np.zeros(image.shape, bool)
    mask[5:15, 5:15, 5:15] = True
    image[mask] = rng.normal(200, 10, mask.sum())
    image[10, 10, 10] = 1e6  # an outlier, clipped at the 99.5th percentile
    out = prepare.normalize(image, mask, (0.5, 99.5))
    assert out.dtype == np.float32 and out.shape == image.shape
    assert abs(float(out[mask].mean())) < 1e-4
    assert float(out[mask].std()) == pytest.approx(1.0, abs=1e-4)
    assert out.max() < 5  # the outlier is clipped
    assert np.all(out[~mask] == out.min())  # the dark background clips to the low percentile
    # Without a mask: the whole volume.
    whole = prepare.normalize(image, np.zeros(image.shape, bool), (0.0, 100.0))
    assert abs(float(whole.mean())) < 1e-4 and float(whole.std()) == pytest.approx(1.0, abs=1e-4)


def test_foreground_indices():
    ids = np.zeros((8, 8, 8), np.uint8)
    ids[1:3, 1:3, 1:3] = 2  # 8 voxels
    ids[5, 5, 5] = 1
    ids[7, 7, 7] = 255  # IGNORE: never sampled
    fg = preprocess.foreground_indices(ids, 4, seed=3)
    assert fg.dtype == np.int16 and fg.shape == (5, 4)
    assert fg[:, 0].tolist() == [1, 2, 2, 2, 2]
    assert np.all(ids[tuple(fg[:, 1:].T)] == fg[:, 0])
    np.testing.assert_array_equal(fg, preprocess.foreground_indices(ids, 4, seed=3))
    assert preprocess.foreground_indices(np.zeros((3, 3, 3), np.uint8), 4, 0).shape == (0, 4)


# --------------------------------------------------------------------------- the cache


def test_manifest_records(done):
    dataset, out, manifest = done
    assert manifest == preprocess.load_manifest(out)

    assert manifest["version"] == preprocess.FORMAT_VERSION
    assert manifest["dataset"] == "Toy"
    assert list(manifest["config"]["spacing"]) == [2.0, 2.0, 2.0]
    protocol = datasets.resolve(dataset.root).protocol
    assert manifest["protocol"] == protocol.to_json()
    assert list(manifest["cases"]) == list(CASES)  # dataset order
    for name, (_, zooms, _) in CASES.items():
        rec = manifest["cases"][name]
        assert rec["split"] == datasets.hash_split(name, 0.2)
        assert rec["spacing"] == [2.0, 2.0, 2.0]
        assert rec["source_spacing"] == pytest.approx(list(zooms))
        assert rec["source_shape"] == [int(n) for n in np.round(FOV_MM / zooms)]
        affine = np.array(rec["affine"])
        assert affine.shape == (4, 4)
        np.testing.assert_allclose(affine[:3, :3], np.diag([2.0, 2.0, 2.0]), atol=1e-9)
        box = np.array(rec["crop_box"])
        assert box.shape == (3, 2)
        assert rec["shape"] == (box[:, 1] - box[:, 0]).tolist()
        assert np.any(box[:, 0] > 0)  # the 4 mm margin leaves some of the 40 mm view out
        image = np.load(out / rec["files"]["image"])
        label = np.load(out / rec["files"]["label"])
        fg = np.load(out / rec["files"]["fg"])
        assert image.dtype == np.float32 and label.dtype == np.uint8 and fg.dtype == np.int16
        assert list(image.shape) == rec["shape"] == list(label.shape)
        for key in ("image", "label", "fg"):
            assert rec["files"][key] == f"cases/{name}.{key}.npy"
            assert _sha(out / rec["files"][key]) == rec["sha256"][key]
        counts = np.bincount(label.ravel())
        assert rec["voxel_counts"] == {str(i): int(c) for i, c in enumerate(counts) if c}
        assert set(rec["voxel_counts"]) == {"0", "1", "2"}  # protocol ids, not raw 3/7
        assert rec["pad_value"] == pytest.approx(float(image.min()))
        assert rec["sources"]["image"]["path"] == str(
            (Path(dataset.root) / "imagesTr" / f"{name}.nii.gz").resolve()
        )
        assert rec["dataset"] == "Toy"
        assert rec["declared_ids"] == [0, 1, 2]  # a flat protocol: every id


def test_labels_are_protocol_ids_and_fg_indices_point_at_them(done):
    _, out, manifest = done
    for rec in manifest["cases"].values():
        label = np.load(out / rec["files"]["label"])
        fg = np.load(out / rec["files"]["fg"])
        assert set(np.unique(label).tolist()) == {0, 1, 2}
        assert sorted(set(fg[:, 0].tolist())) == [1, 2]
        np.testing.assert_array_equal(label[tuple(fg[:, 1:].T.astype(int))], fg[:, 0])
        for i in (1, 2):  # every voxel of each id, below max_indices
            assert np.sum(fg[:, 0] == i) == rec["voxel_counts"][str(i)]
        assert len({tuple(r) for r in fg.tolist()}) == len(fg)


def test_image_is_normalised_inside_the_head(done):
    dataset, out, manifest = done
    for case in dataset.cases:
        rec = manifest["cases"][case.case_id]
        cached = np.load(out / rec["files"]["image"])
        # The shared image path gives exactly the cached array, box and affine.
        prepared, mask = prepare.prepare_image(io.load_image(case.image), CFG)
        np.testing.assert_array_equal(prepared.image, cached)
        np.testing.assert_allclose(prepared.affine, rec["affine"])
        assert [list(b) for b in prepared.box] == rec["crop_box"]
        assert abs(float(cached[mask].mean())) < 1e-4
        assert float(cached[mask].std()) == pytest.approx(1.0, abs=1e-4)
        # The head is the bright ellipsoid of the source: ~4/3 pi abc mm3 at 8 mm3 a voxel.
        assert mask.sum() * 8 == pytest.approx(4 / 3 * np.pi * np.prod(HEAD_AXES), rel=0.15)
        # Independently: the ellipsoid the head was drawn as, placed by the cached affine.
        world = _world(np.array(rec["affine"]), cached.shape)
        head = np.sum(((world - HEAD_CENTRE) / HEAD_AXES) ** 2, axis=-1) < 1
        assert np.sum(head != mask) < 0.05 * head.sum()
        assert abs(float(cached[head].mean())) < 0.1
        assert float(cached[head].std()) == pytest.approx(1.0, abs=0.1)
        # A mask recomputed on the normalised array (background clipped flat) lies inside.
        again = prepare.head_mask(cached)
        assert not np.any(again & ~mask) and again.sum() > 0.8 * mask.sum()


def test_crop_box_keeps_every_labelled_voxel(done):
    dataset, out, manifest = done
    for case in dataset.cases:
        rec = manifest["cases"][case.case_id]
        label = io.load_label(case.label)
        ids = dataset.protocol.encode(label.data)
        prepared, _ = prepare.prepare_image(io.load_image(case.image), CFG)
        full, _ = io.resample_label(
            ids, label.affine, CFG.spacing, mode="onehot", shape=prepared.resampled_shape
        )
        box = rec["crop_box"]
        assert all(0 <= lo < hi <= n for (lo, hi), n in zip(box, full.shape, strict=True))
        cached = np.load(out / rec["files"]["label"])
        np.testing.assert_array_equal(cached, full[tuple(slice(a, b) for a, b in box)])
        assert np.count_nonzero(cached) == np.count_nonzero(full) > 0
        # ... and so is the head, found on the whole resampled image.
        source = io.load_image(case.image)
        data, _ = io.resample(source.data, source.affine, CFG.spacing)
        assert data.shape == full.shape
        head = prepare.head_mask(data)
        inside = np.zeros(head.shape, bool)
        inside[tuple(slice(a, b) for a, b in box)] = True
        assert head.any() and not np.any(head & ~inside)


def test_cached_affine_places_the_sphere(done):
    _, out, manifest = done
    for name, (_, _, centre) in CASES.items():
        rec = manifest["cases"][name]
        label = np.load(out / rec["files"]["label"])
        affine = np.array(rec["affine"])
        for ids in ((1, 2), (2,)):
            idx = np.argwhere(np.isin(label, ids)).astype(np.float64)
            world = idx @ affine[:3, :3].T + affine[:3, 3]
            assert np.linalg.norm(world.mean(axis=0) - centre) < 2.0, (name, ids)
            # Every labelled voxel lies within the outer sphere (plus half a voxel diagonal).
            assert np.linalg.norm(world - centre, axis=1).max() < OUTER_MM + np.sqrt(3)


def test_thin_structure_survives_downsampling(tmp_path):
    root = tmp_path / "src"
    entry = _write_case(root, "slab", *CASES["ras"])
    raw = np.zeros(tuple(int(n) for n in FOV_MM), np.uint8)
    raw[12:28, 12:30, 17:19] = 3  # 2 mm thick, 1 mm voxels 17 and 18: 2 mm voxels 8 and 9
    nib.save(nib.Nifti1Image(raw, _affine(*CASES["ras"][:2])[0]), root / entry["label"])
    meta = {"labels": LABELS, "training": [entry]}
    (root / "dataset.json").write_text(json.dumps(meta))
    dataset = datasets.resolve(root)
    (tmp_path / "out" / "cases").mkdir(parents=True)
    rec = preprocess.preprocess_case(dataset.cases[0], dataset.protocol, CFG, tmp_path / "out")
    assert rec["voxel_counts"].get("1", 0) > 0
    assert np.sum(np.load(tmp_path / "out" / rec["files"]["fg"])[:, 0] == 1) > 0


def test_median_spacing(done):
    dataset, _, _ = done
    assert preprocess.median_spacing(dataset) == (1.0, 1.0, 1.0)


def test_summarize(done):
    _, _, manifest = done
    text = preprocess.summarize(manifest)
    assert "dataset Toy (3 cases" in text
    n_train = sum(r["split"] == "train" for r in manifest["cases"].values())
    assert f"train: {n_train:3d} cases" in text
    for name in ("a", "b"):
        assert any(line.split()[0] == name for line in text.splitlines()[3:])


# --------------------------------------------------------------------------- reruns


def test_rerun_skips_current_cases_and_redoes_changed_ones(tmp_path):
    dataset = datasets.resolve(_dataset(tmp_path / "src"))
    out = tmp_path / "out"
    first = preprocess.preprocess_dataset(dataset, out, CFG, workers=1)
    old = 1_000_000_000_000_000_000  # an mtime far in the past marks "not rewritten"
    for p in (out / "cases").glob("*.npy"):
        os.utime(p, ns=(old, old))
    stamped = _npy_mtimes(out)
    assert len(stamped) == 9

    # Nothing changed: nothing is rewritten, the manifest is the same.
    assert preprocess.preprocess_dataset(dataset, out, CFG, workers=1) == first
    assert _npy_mtimes(out) == stamped

    # A source file with a new mtime: only that case is redone.
    src = Path(dataset.cases[1].image)
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    second = preprocess.preprocess_dataset(dataset, out, CFG, workers=1)
    now = _npy_mtimes(out)
    redone = {k for k in now if now[k] != stamped[k]}
    assert redone == {f"las.{k}.npy" for k in ("image", "label", "fg")}
    assert second["cases"]["las"]["sources"]["image"]["mtime_ns"] == st.st_mtime_ns + 5_000_000_000
    assert second["cases"]["las"]["sha256"] == first["cases"]["las"]["sha256"]  # deterministic
    for p in (out / "cases").glob("*.npy"):
        os.utime(p, ns=(old, old))

    # A corrupted cached array: only that case is redone, and the file is whole again.
    victim = out / "cases" / "lps_aniso.label.npy"
    good = _sha(victim)
    victim.write_bytes(victim.read_bytes()[:-7] + b"garbage")
    os.utime(victim, ns=(old, old))
    third = preprocess.preprocess_dataset(dataset, out, CFG, workers=1)
    now = _npy_mtimes(out)
    assert {k for k in now if now[k] != old} == {
        f"lps_aniso.{k}.npy" for k in ("image", "label", "fg")
    }
    assert _sha(victim) == good
    assert third["cases"] == second["cases"]

    # Other settings: every case is redone.
    for p in (out / "cases").glob("*.npy"):
        os.utime(p, ns=(old, old))
    cfg = prepare.PreprocessConfig(spacing=(2.0, 2.0, 2.0), margin_mm=6.0)
    fourth = preprocess.preprocess_dataset(dataset, out, cfg, workers=1)
    assert all(t != old for t in _npy_mtimes(out).values())
    assert fourth["config"]["margin_mm"] == 6.0


# --------------------------------------------------------------------------- label sets

MNI = get_protocol("mni-tissue")
FULL = {"0": "background", "3": "left WM", "7": "left GM"}  # names as the embedded set writes
COARSE = {"0": "Background", "3": "WM", "7": "GM"}  # tissue without sides: tree nodes
_SOURCE = {"f_ras": "ras", "f_las": "las", "c_aniso": "lps_aniso"}  # case id -> CASES entry


def _tissue(root: Path, name: str, labels: dict, cases: dict[str, str]) -> Path:
    """A dataset labelling the spheres with mni-tissue names; `cases`: id -> CASES entry."""
    entries = [
        _write_case(root, cid, *CASES[c], seed=i) for i, (cid, c) in enumerate(cases.items())
    ]
    meta = {"name": name, "protocol": "mni-tissue", "labels": labels, "training": entries}
    (root / "dataset.json").write_text(json.dumps({**meta, "validation": []}, indent=1))
    return root


def _two(tmp_path: Path) -> str:
    """A full-label and a coarse-label dataset as one comma-separated SPEC."""
    full = _tissue(tmp_path / "full", "Full", FULL, {k: _SOURCE[k] for k in ("f_ras", "f_las")})
    coarse = _tissue(tmp_path / "coarse", "Coarse", COARSE, {"c_aniso": _SOURCE["c_aniso"]})
    return f"{full},{coarse}"


def _run(spec: str, out: Path) -> dict:
    return preprocess.run(spec, out, spacing=(2.0, 2.0, 2.0), workers=1, margin_mm=4.0)


def test_datasets_with_different_label_sets_share_one_cache(tmp_path):
    spec = _two(tmp_path)
    out = tmp_path / "out"
    manifest = _run(spec, out)
    assert manifest["dataset"] == "Full,Coarse" and manifest["root"] == spec
    assert manifest["protocol"] == MNI.to_json()
    assert list(manifest["cases"]) == ["f_ras", "f_las", "c_aniso"]
    inner = {"Full": MNI.id_of("Left-GM"), "Coarse": MNI.id_of("GM")}  # raw 7
    outer = {"Full": MNI.id_of("Left-WM"), "Coarse": MNI.id_of("WM")}  # raw 3
    for cid, rec in manifest["cases"].items():
        name = rec["dataset"]
        assert name == ("Coarse" if cid.startswith("c_") else "Full")
        assert rec["declared_ids"] == sorted({0, inner[name], outer[name]})
        label = np.load(out / rec["files"]["label"])
        assert set(np.unique(label).tolist()) == {0, inner[name], outer[name]}
        fg = np.load(out / rec["files"]["fg"])
        assert sorted(set(fg[:, 0].tolist())) == sorted({inner[name], outer[name]})
        # The inner sphere (raw 7) keeps its id at the sphere's centre.
        centre = np.linalg.solve(np.array(rec["affine"]), [*CASES[_SOURCE[cid]][2], 1.0])[:3]
        assert label[tuple(np.round(centre).astype(int))] == inner[name]
    text = preprocess.summarize(manifest)
    assert "dataset Full,Coarse (3 cases" in text
    assert "from Full: 2 cases" in text and "from Coarse: 1 cases" in text
    # The default spacing is the median over every dataset's labelled images.
    both = datasets.resolve(spec)
    assert preprocess.median_spacing(both) == (1.0, 1.0, 1.0)


def test_datasets_trained_together_need_unique_ids_and_one_protocol(tmp_path):
    full = _tissue(tmp_path / "full", "Full", FULL, {"x": "ras"})
    coarse = _tissue(tmp_path / "coarse", "Coarse", COARSE, {"x": "las"})
    with pytest.raises(InputError, match="case id 'x'") as e:
        _run(f"{full},{coarse}", tmp_path / "out")
    assert e.value.path == str(coarse) and str(full) in str(e.value)
    flat = _dataset(tmp_path / "flat")  # labels of its own: a flat protocol "Toy"
    with pytest.raises(InputError, match="'Toy' differs from protocol 'mni-tissue'") as e:
        _run(f"{full},{flat}", tmp_path / "out")
    assert e.value.path == str(flat) and str(full) in str(e.value)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_changed_mapping_re_encodes_that_datasets_cases(tmp_path):
    spec = _two(tmp_path)
    out = tmp_path / "out"
    first = _run(spec, out)
    old = 1_000_000_000_000_000_000
    for p in (out / "cases").glob("*.npy"):
        os.utime(p, ns=(old, old))
    assert _run(spec, out) == first  # unchanged: nothing redone
    assert all(t == old for t in _npy_mtimes(out).values())

    meta_path = Path(spec.split(",")[1]) / "dataset.json"
    meta = json.loads(meta_path.read_text())
    meta["labels"]["7"] = None  # the inner sphere is no longer taught
    meta_path.write_text(json.dumps(meta))
    second = _run(spec, out)
    now = _npy_mtimes(out)
    assert {k for k, t in now.items() if t != old} == {
        f"c_aniso.{k}.npy" for k in ("image", "label", "fg")
    }
    rec = second["cases"]["c_aniso"]
    assert rec["declared_ids"] == [0, MNI.id_of("WM")]
    label = np.load(out / rec["files"]["label"])
    assert set(np.unique(label).tolist()) == {0, MNI.id_of("WM"), IGNORE}
    assert rec["key"] != first["cases"]["c_aniso"]["key"]
    assert {k: second["cases"][k] for k in ("f_ras", "f_las")} == {
        k: first["cases"][k] for k in ("f_ras", "f_las")
    }


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("defect", "culprit", "message"),
    [
        ("nan", "image", "NaN"),
        ("value", "label", r"not in protocol .*\[5\]"),
        ("shifted", "label", "affine differs"),
        ("shape", "label", "shape"),
    ],
)
def test_bad_case_names_the_file(tmp_path, defect, culprit, message):
    root = tmp_path / "src"
    _write_case(root, "bad", *CASES["ras"], bad=defect)
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "labels": LABELS,
                "training": [{"image": "imagesTr/bad.nii.gz", "label": "labelsTr/bad.nii.gz"}],
            }
        )
    )
    dataset = datasets.resolve(root)
    case = dataset.cases[0]
    with pytest.raises(InputError, match=message) as e:
        preprocess.preprocess_case(case, dataset.protocol, CFG, tmp_path / "out")
    path = case.image if culprit == "image" else case.label
    assert e.value.path == path
    assert str(e.value).startswith(path)


def test_bad_cases_are_listed_after_the_good_ones_are_written(tmp_path):
    extra = {"bad_nan": CASES["las"], "bad_value": CASES["ras"]}
    root = _dataset(tmp_path / "src", bad={"bad_nan": "nan", "bad_value": "value"}, extra=extra)
    dataset = datasets.resolve(root)
    out = tmp_path / "out"
    with pytest.raises(InputError, match="2 case") as e:
        preprocess.preprocess_dataset(dataset, out, CFG, workers=2)
    text = str(e.value)
    by_id = {c.case_id: c for c in dataset.cases}
    assert by_id["bad_nan"].image in text and by_id["bad_value"].label in text
    # no manifest.json: the cache is not complete; the good cases' records wait in PARTIAL
    assert not (out / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="no preprocessed cache"):
        preprocess.load_manifest(out)
    partial = json.loads((out / preprocess.PARTIAL).read_text())
    assert set(partial["cases"]) == set(CASES)
    for rec in partial["cases"].values():
        assert all((out / f).is_file() for f in rec["files"].values())
    # without the bad cases, the next run redoes nothing and writes the manifest
    good = dataclasses.replace(
        dataset, cases=tuple(c for c in dataset.cases if not c.case_id.startswith("bad"))
    )
    stamps = _npy_mtimes(out)
    manifest = preprocess.preprocess_dataset(good, out, CFG, workers=1)
    assert manifest["cases"] == partial["cases"] and _npy_mtimes(out) == stamps
    assert not (out / preprocess.PARTIAL).exists()


# --------------------------------------------------------------------------- the binary


def _tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "tools/preprocess.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_tool_preprocesses_and_summarises(tmp_path):
    root = _dataset(tmp_path / "src")
    out = tmp_path / "out"
    args = (f"--data={root}", f"--output={out}", "--workers=1")
    run = _tool(*args)
    assert run.returncode == 0, run.stderr
    assert "dataset Toy (3 cases, protocol Toy, 1x1x1 mm)" in run.stdout
    manifest = preprocess.load_manifest(out)
    n_train = sum(r["split"] == "train" for r in manifest["cases"].values())
    assert f"train: {n_train:3d} cases" in run.stdout
    assert set(manifest["cases"]) == set(CASES)
    assert manifest["config"]["spacing"] == [1.0, 1.0, 1.0]  # the dataset's median
    again = _tool(*args)
    assert again.returncode == 0, again.stderr
    assert "3 cases current, 0 to do" in again.stderr
    assert again.stdout == run.stdout


def test_tool_reports_a_bad_file_without_traceback(tmp_path):
    root = _dataset(tmp_path / "src", bad={"las": "nan"})
    run = _tool(f"--data={root}", f"--output={tmp_path / 'out'}", "--workers=1")
    assert run.returncode != 0
    assert str((root / "imagesTr" / "las.nii.gz").resolve()) in run.stderr
    assert "Traceback" not in run.stderr


def test_tool_reports_a_bad_dataset_without_traceback(tmp_path):
    """Errors found before the pool starts (here: a missing label file) already work."""
    root = _dataset(tmp_path / "src")
    (root / "labelsTr" / "las.nii.gz").unlink()
    run = _tool(f"--data={root}", f"--output={tmp_path / 'out'}", "--workers=1")
    assert run.returncode != 0
    assert str((root / "labelsTr" / "las.nii.gz").resolve()) in run.stderr
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().startswith("preprocess.py:")
