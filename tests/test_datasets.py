"""Tests for msseg.data.datasets: MSD and nnU-Net folders, protocols, hash splits, bad input."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from msseg import names
from msseg.data import datasets
from msseg.errors import InputError
from msseg.labels import IGNORE, get_protocol

SHAPE = (6, 5, 4)


def _nifti(path: Path, value: int = 0, dtype=np.uint8) -> Path:
    """A tiny real NIfTI file (RAS, 1 mm) at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.full(SHAPE, value, dtype)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def _copies(template: Path, paths: list[Path]) -> None:
    """Many files with the bytes of one small NIfTI (cheaper than writing each)."""
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, p)


def _json(path: Path, meta: dict) -> Path:
    path.write_text(json.dumps(meta, indent=1))
    return path


def _msd(root: Path, train_ids, test_ids=(), validation=None, **extra) -> Path:
    """An MSD-style folder: imagesTr/labelsTr/imagesTs + dataset.json listing them."""
    for cid in train_ids:
        _nifti(root / "imagesTr" / f"{cid}.nii.gz", 1)
        _nifti(root / "labelsTr" / f"{cid}.nii.gz", 1)
    for cid in test_ids:
        _nifti(root / "imagesTs" / f"{cid}.nii.gz", 1)
    meta = {
        "name": "Toy",
        "labels": {"0": "background", "1": "a"},
        "training": [
            {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
            for c in train_ids
        ],
        "test": [f"./imagesTs/{c}.nii.gz" for c in test_ids],
        **extra,
    }
    if validation is not None:
        for cid in validation:
            _nifti(root / "imagesTr" / f"{cid}.nii.gz", 1)
            _nifti(root / "labelsTr" / f"{cid}.nii.gz", 1)
        meta["validation"] = [
            {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
            for c in validation
        ]
    _json(root / "dataset.json", meta)
    return root


def _nnunet(root: Path, train_ids, test_ids=(), meta: dict | None = None) -> Path:
    """An nnU-Net-style folder: imagesTr/<id>_0000, labelsTr/<id>, imagesTs/<id>_0000."""
    for cid in train_ids:
        _nifti(root / "imagesTr" / f"{cid}_0000.nii.gz", 1)
        _nifti(root / "labelsTr" / f"{cid}.nii.gz", 1)
    for cid in test_ids:
        _nifti(root / "imagesTs" / f"{cid}_0000.nii.gz", 1)
    if meta is not None:
        _json(root / "dataset.json", meta)
    return root


def _by_id(dataset: datasets.Dataset) -> dict[str, datasets.Case]:
    return {c.case_id: c for c in dataset.cases}


def _real(p: Path) -> str:
    return str(p.resolve())


# --------------------------------------------------------------------------- MSD-style


def test_msd_folder(tmp_path):
    root = _msd(tmp_path / "Task01", ["case_a", "case_b", "case_c"], ["case_t"])
    ds = datasets.resolve(root)
    assert ds.name == "Toy"
    assert ds.root == str(root)
    assert ds.protocol.leaves == ("background", "a")
    cases = _by_id(ds)
    assert sorted(cases) == ["case_a", "case_b", "case_c", "case_t"]
    for cid in ("case_a", "case_b", "case_c"):
        c = cases[cid]
        assert c.image == _real(root / "imagesTr" / f"{cid}.nii.gz")
        assert c.label == _real(root / "labelsTr" / f"{cid}.nii.gz")
        assert c.split in ("train", "val")  # no validation list: by hash (see below)
        assert Path(c.image).is_absolute() and Path(c.image).is_file()
    t = cases["case_t"]
    assert (t.image, t.label, t.split) == (_real(root / "imagesTs" / "case_t.nii.gz"), None, "test")
    assert ds.split("test") == (t,)
    assert {c.case_id for c in ds.split("train") + ds.split("val")} == {
        "case_a",
        "case_b",
        "case_c",
    }
    # Cases keep the dataset.json order (training, validation, test).
    assert [c.case_id for c in ds.cases] == ["case_a", "case_b", "case_c", "case_t"]


def test_msd_hash_split_per_case(tmp_path):
    ids = ["case_a", "case_b", "case_c"]  # hashes at 0.2: val, train, train
    ds = datasets.resolve(_msd(tmp_path / "d", ids))
    assert {c.case_id: c.split for c in ds.cases} == {i: datasets.hash_split(i, 0.2) for i in ids}


def test_msd_validation_list_is_used_as_given(tmp_path):
    train = [f"tr{i:02d}" for i in range(20)]
    root = _msd(tmp_path / "d", train, validation=["v1", "v2"])
    ds = datasets.resolve(root, val_fraction=0.5)
    assert {c.case_id for c in ds.split("train")} == set(train)  # no hash split at all
    assert {c.case_id for c in ds.split("val")} == {"v1", "v2"}


def test_msd_test_entry_as_dict_keeps_its_label(tmp_path):
    root = _msd(tmp_path / "d", ["a"])
    _nifti(root / "imagesTs" / "t.nii.gz")
    _nifti(root / "labelsTs" / "t.nii.gz")
    meta = json.loads((root / "dataset.json").read_text())
    meta["test"] = [{"image": "imagesTs/t.nii.gz", "label": "labelsTs/t.nii.gz"}]
    _json(root / "dataset.json", meta)
    t = _by_id(datasets.resolve(root))["t"]
    assert (t.split, t.label) == ("test", _real(root / "labelsTs" / "t.nii.gz"))


def test_protocol_override_and_declared_protocol(tmp_path):
    root = _msd(tmp_path / "d", ["a", "b"])
    assert datasets.resolve(root).protocol.name == "Toy"
    over = datasets.resolve(root, protocol="mni-tissue").protocol
    assert over.name == "mni-tissue"
    assert over.leaves[0] == "Background" and over.num_leaves == 7

    labels = {"0": "Background", "1": "Left-CSF"}  # with a protocol: names in it
    declared = _msd(tmp_path / "e", ["a"], protocol="mni-tissue", labels=labels)
    assert datasets.resolve(declared).protocol.name == "mni-tissue"
    # The override wins over the declared protocol as well.
    assert datasets.resolve(declared, protocol="aseg").protocol.name == "aseg"


def test_msd_labels_may_be_nnunet_v2_style(tmp_path):
    root = _msd(tmp_path / "d", ["a"])
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "lesion": 3, "edema": 1}
    _json(root / "dataset.json", meta)
    p = datasets.resolve(root).protocol
    assert p.leaves == ("background", "edema", "lesion")  # sorted by raw value
    assert p.codes[:3] == (0, 1, 3)


# --------------------------------------------------------------------------- nnU-Net-style


def test_nnunet_folder_with_v2_dataset_json(tmp_path):
    meta = {
        "channel_names": {"0": "T1"},
        "labels": {"background": 0, "a": 1},
        "numTraining": 3,
        "file_ending": ".nii.gz",
    }
    root = _nnunet(
        tmp_path / "Dataset001_Toy", ["toy_001", "toy_002", "toy_003"], ["toy_101"], meta
    )
    ds = datasets.resolve(root)
    assert ds.name == "Dataset001_Toy"
    assert ds.protocol.leaves == ("background", "a")
    cases = _by_id(ds)
    assert sorted(cases) == ["toy_001", "toy_002", "toy_003", "toy_101"]
    for cid in ("toy_001", "toy_002", "toy_003"):
        c = cases[cid]
        assert c.image == _real(root / "imagesTr" / f"{cid}_0000.nii.gz")
        assert c.label == _real(root / "labelsTr" / f"{cid}.nii.gz")
        assert c.split == datasets.hash_split(cid, 0.2)
    t = cases["toy_101"]
    assert (t.image, t.label, t.split) == (
        _real(root / "imagesTs" / "toy_101_0000.nii.gz"),
        None,
        "test",
    )


def test_nnunet_folder_without_dataset_json_needs_protocol(tmp_path):
    root = _nnunet(tmp_path / "plain", ["s1", "s2"])
    ds = datasets.resolve(root, protocol="mni-tissue")
    assert ds.protocol.name == "mni-tissue"
    assert ds.name == "plain"
    assert sorted(_by_id(ds)) == ["s1", "s2"]
    with pytest.raises(InputError, match="protocol") as e:
        datasets.resolve(root)
    assert str(root) in str(e.value)


def test_nnunet_split_uses_val_fraction(tmp_path):
    ids = [f"c{i:03d}" for i in range(30)]
    root = _nnunet(tmp_path / "d", ids, meta={"labels": {"background": 0, "a": 1}})
    for frac in (0.0, 0.3, 1.0):
        ds = datasets.resolve(root, val_fraction=frac)
        assert {c.case_id: c.split for c in ds.cases} == {
            i: datasets.hash_split(i, frac) for i in ids
        }
    assert all(c.split == "train" for c in datasets.resolve(root, val_fraction=0.0).cases)
    assert all(c.split == "val" for c in datasets.resolve(root, val_fraction=1.0).cases)


def test_nnunet_case_ids_ending_in_four_digits(tmp_path):
    """AMOS-style ids (amos_0001): image amos_0001_0000.nii.gz, label amos_0001.nii.gz."""
    root = _nnunet(tmp_path / "amos", ["amos_0001", "amos_0002"], meta={"labels": {"bg": 0}})
    assert sorted(_by_id(datasets.resolve(root))) == ["amos_0001", "amos_0002"]


def test_msd_case_ids_ending_in_four_digits(tmp_path):
    root = _msd(tmp_path / "d", ["sub_0001", "sub_0002"])
    assert sorted(_by_id(datasets.resolve(root))) == ["sub_0001", "sub_0002"]


def test_a_case_id_is_the_file_name_without_its_volume_suffix():
    assert names.stem("/x/imagesTr/BRATS_001_0000.nii.gz", channel=True) == "BRATS_001"
    assert names.stem("/x/labelsTr/amos_0001.nii.gz") == "amos_0001"
    assert names.stem("labelsTr/BRATS_001.nii.gz") == "BRATS_001"
    assert names.stem("a/sub-01_T1w.nii") == "sub-01_T1w"
    assert names.stem("aseg.mgz") == "aseg"


# --------------------------------------------------------------------------- hash split


def test_hash_split_is_deterministic_and_near_fraction():
    ids = [f"sub-{i:03d}" for i in range(200)]
    first = {i: datasets.hash_split(i, 0.2) for i in ids}
    assert first == {i: datasets.hash_split(i, 0.2) for i in reversed(ids)}
    n_val = sum(s == "val" for s in first.values())
    assert 0.1 * 200 <= n_val <= 0.3 * 200
    assert set(first.values()) == {"train", "val"}
    # Monotone in the fraction: a larger fraction only adds validation cases.
    bigger = {i for i in ids if datasets.hash_split(i, 0.5) == "val"}
    assert {i for i, s in first.items() if s == "val"} <= bigger
    assert 0.4 * 200 <= len(bigger) <= 0.6 * 200
    assert all(datasets.hash_split(i, 0.0) == "train" for i in ids)
    assert all(datasets.hash_split(i, 1.0) == "val" for i in ids)


def test_split_from_dataset_json_is_stable(tmp_path):
    """Same split twice, independent of entry order, ~20 % val, and adding a case moves none."""
    ids = [f"sub-{i:03d}" for i in range(200)]
    one = _nifti(tmp_path / "one.nii.gz", 1)
    root = tmp_path / "big"
    _copies(one, [root / "imagesTr" / f"{i}.nii.gz" for i in ids + ["sub-new"]])
    _copies(one, [root / "labelsTr" / f"{i}.nii.gz" for i in ids + ["sub-new"]])

    def write(order):
        _json(
            root / "dataset.json",
            {
                "labels": {"0": "background", "1": "a"},
                "training": [
                    {"image": f"imagesTr/{i}.nii.gz", "label": f"labelsTr/{i}.nii.gz"}
                    for i in order
                ],
            },
        )
        return {c.case_id: c.split for c in datasets.resolve(root).cases}

    first = write(ids)
    assert first == write(ids)
    shuffled = list(ids)
    random.Random(0).shuffle(shuffled)
    assert write(shuffled) == first
    n_val = sum(s == "val" for s in first.values())
    assert 20 <= n_val <= 60, n_val
    grown = write([*ids[:100], "sub-new", *ids[100:]])
    assert {k: v for k, v in grown.items() if k != "sub-new"} == first
    assert len(grown) == 201


# --------------------------------------------------------------------------- errors


def test_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(InputError, match="not found") as e:
        datasets.resolve(missing)
    assert e.value.path == str(missing)
    assert str(e.value).startswith(str(missing))


def test_spec_that_is_a_file(tmp_path):
    path = _nifti(tmp_path / "scan.nii.gz")
    with pytest.raises(InputError) as e:
        datasets.resolve(path)
    assert e.value.path == str(path)


def test_folder_without_dataset(tmp_path):
    (tmp_path / "empty").mkdir()
    _nifti(tmp_path / "empty" / "stray.nii.gz")
    with pytest.raises(InputError, match="no dataset found") as e:
        datasets.resolve(tmp_path / "empty")
    assert e.value.path == str(tmp_path / "empty")

    (tmp_path / "noimages" / "imagesTr").mkdir(parents=True)
    with pytest.raises(InputError, match="no NIfTI images") as e:
        datasets.resolve(tmp_path / "noimages", protocol="mni-tissue")
    assert str(tmp_path / "noimages" / "imagesTr") in str(e.value)


@pytest.mark.parametrize("which", ["image", "label", "test"])
def test_missing_file_referenced_by_dataset_json(tmp_path, which):
    root = _msd(tmp_path / "d", ["a", "b"], ["t"])
    gone = {
        "image": root / "imagesTr" / "b.nii.gz",
        "label": root / "labelsTr" / "b.nii.gz",
        "test": root / "imagesTs" / "t.nii.gz",
    }[which]
    gone.unlink()
    with pytest.raises(InputError, match="not found") as e:
        datasets.resolve(root)
    assert e.value.path == _real(gone)
    assert str(e.value).startswith(_real(gone))


def test_training_entry_without_label(tmp_path):
    root = _msd(tmp_path / "d", ["a"])
    _json(
        root / "dataset.json",
        {"labels": {"0": "bg"}, "training": ["imagesTr/a.nii.gz"]},
    )
    with pytest.raises(InputError, match="without a label") as e:
        datasets.resolve(root)
    assert e.value.path == str(root / "dataset.json")


def test_unreadable_dataset_json(tmp_path):
    root = _msd(tmp_path / "d", ["a"])
    (root / "dataset.json").write_text('{"training": [')
    with pytest.raises(InputError, match="JSON") as e:
        datasets.resolve(root)
    assert e.value.path == str(root / "dataset.json")


def test_image_without_label_in_imagesTr(tmp_path):
    root = _nnunet(tmp_path / "d", ["c1", "c2"], meta={"labels": {"background": 0, "a": 1}})
    (root / "labelsTr" / "c2.nii.gz").unlink()
    with pytest.raises(InputError, match="no label file") as e:
        datasets.resolve(root)
    assert e.value.path == str(root / "imagesTr" / "c2_0000.nii.gz")


def test_second_channel_is_refused(tmp_path):
    root = _nnunet(tmp_path / "d", ["c1"], meta={"labels": {"background": 0, "a": 1}})
    _nifti(root / "imagesTr" / "c1_0001.nii.gz")
    with pytest.raises(InputError, match="channel") as e:
        datasets.resolve(root)
    assert e.value.path == str(root / "imagesTr" / "c1_0001.nii.gz")


@pytest.mark.parametrize("style", ["msd", "nnunet", "declared"])
def test_unknown_protocol(tmp_path, style):
    if style == "msd":
        root, kw = _msd(tmp_path / "d", ["a"]), {"protocol": "freesurfer-99"}
    elif style == "nnunet":
        root, kw = _nnunet(tmp_path / "d", ["a"]), {"protocol": "freesurfer-99"}
    else:
        root, kw = _msd(tmp_path / "d", ["a"], protocol="freesurfer-99"), {}
    with pytest.raises(InputError, match="unknown label protocol 'freesurfer-99'") as e:
        datasets.resolve(root, **kw)
    where = root / "dataset.json" if (root / "dataset.json").is_file() else root
    assert e.value.path == str(where)
    assert "mni-tissue" in str(e.value)  # lists the known names


def test_bad_labels_mapping(tmp_path):
    root = _msd(tmp_path / "d", ["a"])
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": "zero"}
    _json(root / "dataset.json", meta)
    with pytest.raises(InputError, match="labels") as e:
        datasets.resolve(root)
    assert e.value.path == str(root / "dataset.json")


def test_duplicate_case_id(tmp_path):
    root = tmp_path / "d"
    _nifti(root / "site1" / "x.nii.gz")
    _nifti(root / "site1" / "x_seg.nii.gz")
    _nifti(root / "site2" / "x.nii.gz")
    _nifti(root / "site2" / "x_seg.nii.gz")
    _json(
        root / "dataset.json",
        {
            "labels": {"0": "background"},
            "training": [
                {"image": "site1/x.nii.gz", "label": "site1/x_seg.nii.gz"},
                {"image": "site2/x.nii.gz", "label": "site2/x_seg.nii.gz"},
            ],
        },
    )
    with pytest.raises(InputError, match="duplicate case id 'x'") as e:
        datasets.resolve(root)
    assert e.value.path == str(root / "dataset.json")

    # Also across splits: a test image named like a training case.
    root2 = _msd(tmp_path / "e", ["a"])
    meta = json.loads((root2 / "dataset.json").read_text())
    meta["test"] = ["imagesTr/a.nii.gz"]
    _json(root2 / "dataset.json", meta)
    with pytest.raises(InputError, match="duplicate case id 'a'"):
        datasets.resolve(root2)


# --------------------------------------------------------------------------- declared labels


def _labelled(root: Path, labels, ids=("a",), name=None, protocol="mni-tissue") -> Path:
    """An MSD folder whose dataset.json declares `protocol` and the `labels` mapping."""
    extra = {"protocol": protocol} if protocol else {}
    root = _msd(root, list(ids), **extra)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = labels
    if name is not None:
        meta["name"] = name
    _json(root / "dataset.json", meta)
    return root


def test_coarse_mapping_declares_tree_nodes(tmp_path):
    mni = get_protocol("mni-tissue")
    labels = {"0": "Background", "1": "CSF", "2": "GM", "3": "WM", "4": None, "5": "ignore"}
    ds = datasets.resolve(_labelled(tmp_path / "d", labels, ids=("a", "b")))
    assert ds.protocol == mni
    want = (
        (0, 0),
        (1, mni.id_of("CSF")),
        (2, mni.id_of("GM")),
        (3, mni.id_of("WM")),
        (4, IGNORE),
        (5, IGNORE),
    )
    assert all(c.codes == want and c.dataset == "Toy" for c in ds.cases)
    raw = np.arange(6).reshape(1, 2, 3)
    ids = mni.encode(raw, codes=dict(ds.cases[0].codes))
    assert ids.ravel().tolist() == [0, 8, 9, 10, 255, 255]
    assert datasets.declared_ids(mni, ds.cases[0].codes) == (0, 8, 9, 10)
    assert datasets.declared_ids(mni, None) == tuple(range(mni.num_ids))


def test_mapping_names_ignore_case_spaces_and_may_be_nnunet_v2(tmp_path):
    mni = get_protocol("mni-tissue")
    msd = {"0": "BACKGROUND", "2": "left hemisphere", "3": "right_gm", "9": "unknown"}
    nnunet = {"BACKGROUND": 0, "left hemisphere": 2, "right_gm": 3, "unknown": 9}
    want = ((0, 0), (2, mni.id_of("Left-Hemisphere")), (3, mni.id_of("Right-GM")), (9, IGNORE))
    for i, labels in enumerate((msd, nnunet)):
        ds = datasets.resolve(_labelled(tmp_path / str(i), labels))
        assert ds.cases[0].codes == want


def test_embedded_style_mapping_gives_the_leaf_ids(tmp_path):
    from msseg.data import mni152

    labels = {str(k): v for k, v in mni152.LABEL_NAMES.items()}  # "left CSF", ...
    ds = datasets.resolve(_labelled(tmp_path / "d", labels))
    mni = get_protocol("mni-tissue")
    assert ds.cases[0].codes == tuple((i, i) for i in range(7))
    assert [mni.id_names()[i] for _, i in ds.cases[0].codes] == list(mni.leaves)
    raw = np.arange(7)
    np.testing.assert_array_equal(mni.encode(raw, codes=dict(ds.cases[0].codes)), mni.encode(raw))


def test_unknown_label_name_is_an_error(tmp_path):
    root = _labelled(tmp_path / "d", {"0": "Background", "1": "Grey-Matter"})
    with pytest.raises(InputError, match="'Grey-Matter'") as e:
        datasets.resolve(root)
    assert e.value.path == str(root / "dataset.json")
    assert "Left-CSF" in str(e.value)  # lists the known names
    # "unknown" is a name in aseg (its background), so there it is no IGNORE.
    aseg = datasets.resolve(_labelled(tmp_path / "e", {"0": "Unknown"}, protocol="aseg"))
    assert aseg.cases[0].codes == ((0, 0),)


def test_mapping_without_protocol_or_outside_an_override(tmp_path):
    # No "protocol": the mapping is a flat protocol of its own, no code table (as before).
    flat = datasets.resolve(_labelled(tmp_path / "d", {"0": "bg", "1": "CSF"}, protocol=None))
    assert flat.protocol.leaves == ("bg", "CSF")
    assert all(c.codes is None for c in flat.cases)
    # --protocol with a mapping naming things outside it: the protocol's raw codes.
    over = datasets.resolve(tmp_path / "d", protocol="mni-tissue")
    assert over.protocol.name == "mni-tissue" and all(c.codes is None for c in over.cases)
    # ... and with a mapping inside it, the mapping holds.
    inside = _labelled(tmp_path / "e", {"0": "Background", "1": "GM"}, protocol=None)
    assert datasets.resolve(inside, protocol="mni-tissue").cases[0].codes == ((0, 0), (1, 9))
    # No mapping: the protocol's raw codes.
    plain = _nnunet(tmp_path / "f", ["s1"], meta={"protocol": "mni-tissue"})
    assert datasets.resolve(plain).cases[0].codes is None


def test_several_specs_make_one_dataset(tmp_path):
    full = _labelled(tmp_path / "full", {"0": "background", "1": "left GM"}, ids=("f1", "f2"))
    coarse = _labelled(tmp_path / "coarse", {"0": "Background", "1": "GM"}, ("c1",), "Coarse")
    ds = datasets.resolve(f"{full},{coarse}", val_fraction=0.0)
    assert ds.name == "Toy,Coarse" and ds.root == f"{full},{coarse}"
    assert ds.protocol.name == "mni-tissue"
    assert [(c.case_id, c.dataset, c.split) for c in ds.cases] == [
        ("f1", "Toy", "train"),
        ("f2", "Toy", "train"),
        ("c1", "Coarse", "train"),
    ]
    assert [c.codes[1] for c in ds.cases] == [(1, 2), (1, 2), (1, 9)]
    # Each dataset keeps its own split rules: a validation list stays as given.
    val = _msd(tmp_path / "val", ["t1"], validation=["v1"], protocol="mni-tissue", labels=None)
    both = datasets.resolve(f"{full},{val}", val_fraction=0.0)
    assert {c.case_id: c.split for c in both.cases}["v1"] == "val"
    # One SPEC with a comma in an existing folder name stays one SPEC.
    odd = _labelled(tmp_path / "a,b", {"0": "Background"}, ids=("o1",))
    assert datasets.resolve(odd).root == str(odd)


def test_several_specs_need_unique_case_ids_and_one_protocol(tmp_path):
    one = _labelled(tmp_path / "one", {"0": "Background"}, ids=("x", "y"))
    two = _labelled(tmp_path / "two", {"0": "Background", "1": "WM"}, ids=("z", "x"))
    with pytest.raises(InputError, match="case id 'x'") as e:
        datasets.resolve(f"{one},{two}")
    assert e.value.path == str(two) and str(one) in str(e.value)

    flat = _msd(tmp_path / "flat", ["q"])  # a flat protocol "Toy" of its own
    with pytest.raises(InputError, match="protocol") as e:
        datasets.resolve(f"{one},{flat}")
    assert e.value.path == str(flat) and str(one) in str(e.value)
    # --protocol applies to every SPEC: then they agree.
    ds = datasets.resolve(f"{one},{flat}", protocol="mni-tissue")
    assert [c.codes for c in ds.cases] == [((0, 0),), ((0, 0),), None]
