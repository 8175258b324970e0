"""Tests for msseg.labels: id space, tree structure, encode/decode, mirroring, files."""

import json

import numpy as np
import pytest

from msseg import labels
from msseg.errors import InputError


@pytest.fixture(params=labels.PROTOCOLS)
def protocol(request):
    return labels.get_protocol(request.param)


def _tree_ids(p):
    return range(p.num_leaves + len(p.nodes))


def test_id_space(protocol):
    k = protocol.num_leaves
    assert protocol.num_ids == k + len(protocol.nodes) + len(protocol.sets) < labels.IGNORE
    assert len(protocol.id_names()) == protocol.num_ids
    assert protocol.raw_codes()[0] == 0
    assert protocol.membership()[:k].argmax(1).tolist() == list(range(k))
    assert protocol.colours().shape == (protocol.num_ids, 3)
    assert protocol.colours().dtype == np.uint8


def test_mni_tissue_layout():
    p = labels.get_protocol("mni-tissue")
    assert p.num_leaves == 7 and p.num_ids == 13
    assert p.raw_codes().tolist() == list(range(13))  # leaf ids equal raw values 0..6
    assert [p.id_of(n) for n in ("Brain", "CSF", "GM", "WM")] == [7, 8, 9, 10]
    assert [p.id_of(n) for n in ("Left-Hemisphere", "Right-Hemisphere")] == [11, 12]
    assert p.levels() == [[0, 7], [0, 8, 9, 10], list(range(7))]
    assert p.level_of_leaves().tolist() == [
        [0, 7, 7, 7, 7, 7, 7],
        [0, 8, 9, 10, 8, 9, 10],
        list(range(7)),
    ]
    assert p.membership()[11].nonzero()[0].tolist() == [1, 2, 3]
    assert p.membership()[12].nonzero()[0].tolist() == [4, 5, 6]


def test_aseg_layout():
    p = labels.get_protocol("aseg")
    assert p.num_leaves == 33 and p.leaves[0] == "Unknown"
    leaf_codes = sorted(p.raw_codes()[:33].tolist())
    bilateral = [2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 17, 18, 26, 28]
    right = [41, 42, 43, 44, 46, 47, 49, 50, 51, 52, 53, 54, 58, 60]
    assert leaf_codes == sorted([0, 14, 15, 16, 24, *bilateral, *right])
    assert p.raw_codes()[33:].min() >= 30000
    assert p.leaves[p.encode(np.array([10]))[0]] == "Left-Thalamus"
    for name in p.leaves:
        if name.startswith("Left-"):  # every bilateral structure is a node over L and R
            node = p.parent()[p.id_of(name)]
            pair = p.membership()[node].nonzero()[0]
            assert [p.id_names()[i] for i in pair] == [name, "Right-" + name[5:]]


def test_membership_is_tree_union(protocol):
    rows = protocol.membership()
    parent = protocol.parent()
    k = protocol.num_leaves
    assert (rows[:k] == np.eye(k, dtype=bool)).all()
    for node in range(k, k + len(protocol.nodes)):
        children = [i for i in _tree_ids(protocol) if parent[i] == node]
        assert len(children) >= 2
        assert (rows[children].any(0) == rows[node]).all()
        assert rows[children].sum(0).max() == 1  # children are disjoint
    assert (parent[k + len(protocol.nodes) :] == -1).all()


def test_levels_partition_leaves(protocol):
    rows = protocol.membership()
    levels = protocol.levels()
    for level in levels:
        assert (rows[level].sum(0) == 1).all()
    assert levels[-1] == list(range(protocol.num_leaves))
    roots = [i for i in _tree_ids(protocol) if protocol.parent()[i] == -1]
    assert levels[0] == roots


def test_parent_is_superset(protocol):
    rows, parent = protocol.membership(), protocol.parent()
    for i in _tree_ids(protocol):
        if parent[i] >= 0:
            assert (rows[parent[i]] >= rows[i]).all() and rows[parent[i]].sum() > rows[i].sum()


def test_encode_decode_round_trip(protocol):
    codes = protocol.raw_codes()
    ids = protocol.encode(codes.reshape(1, -1, 1))
    assert ids.dtype == np.uint8 and ids.shape == (1, protocol.num_ids, 1)
    assert ids.ravel().tolist() == list(range(protocol.num_ids))
    assert protocol.decode(ids).dtype == np.int32
    assert (protocol.decode(ids).ravel() == codes).all()
    assert protocol.encode(codes.astype(np.float32)).tolist() == list(range(protocol.num_ids))
    assert protocol.decode(np.array([labels.IGNORE], np.uint8)).tolist() == [0]


def test_encode_unknown_values_raises():
    p = labels.get_protocol("aseg")
    with pytest.raises(InputError) as info:
        p.encode(np.array([[0, 1000], [999, 2]]), path="/data/sub-01_aseg.nii.gz")
    assert info.value.path == "/data/sub-01_aseg.nii.gz"
    assert str(info.value) == (
        "/data/sub-01_aseg.nii.gz: label values not in protocol 'aseg': [999, 1000]"
    )
    with pytest.raises(InputError, match=r"\[100, 101, .*, 109\] and 5 more"):
        p.encode(np.arange(100, 115))
    with pytest.raises(InputError, match="not integers"):
        p.encode(np.array([0.5]))
    with pytest.raises(InputError, match="values not in protocol 'mni-tissue': \\[-1, 13\\]"):
        labels.get_protocol("mni-tissue").encode(np.array([-1, 0, 13, 7]))


def test_aliases():
    p = labels.get_protocol("aseg")
    ids = p.encode(np.array([77, 31, 63, 85, 30, 251, 255])).tolist()
    wm, ign = p.id_of("Cerebral-White-Matter"), labels.IGNORE
    assert ids == [wm, p.id_of("Left-Lateral-Ventricle"), p.id_of("Right-Lateral-Ventricle")] + [
        ign,
        ign,
        wm,
        wm,
    ]
    assert wm >= p.num_leaves  # a node: a partial label


def test_lr_swap(protocol):
    lut = protocol.lr_swap()
    assert lut.shape == (256,) and lut.dtype == np.uint8
    assert (lut[lut] == np.arange(256)).all()
    assert lut[labels.IGNORE] == labels.IGNORE
    names = protocol.id_names()
    for i, name in enumerate(names):
        if name.startswith("Left-"):
            assert names[lut[i]] == "Right-" + name[5:]
        elif not name.startswith("Right-"):
            assert lut[i] == i  # midline ids map to themselves
    rows = protocol.membership()
    assert (rows[lut[: protocol.num_ids]] == rows[:, lut[: protocol.num_leaves]]).all()


def test_json_round_trip(protocol):
    d = protocol.to_json()
    assert labels.Protocol.from_json(d) == protocol
    assert labels.Protocol.from_json(json.loads(json.dumps(d))) == protocol
    assert json.loads(json.dumps(d)) == d


def test_invalid_protocol_rejected():
    d = labels.get_protocol("mni-tissue").to_json()
    with pytest.raises(ValueError, match="no mirror"):
        labels.Protocol.from_json({**d, "set_members": [[1, 2, 3], [4, 5]]})
    with pytest.raises(ValueError, match="unique"):
        labels.Protocol.from_json({**d, "codes": [0] * 13})


def test_freesurfer_lut(protocol, tmp_path):
    path = tmp_path / "FreeSurferColorLUT.txt"
    protocol.write_freesurfer_lut(path)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("#")
    rows = [line.split() for line in lines if line.strip() and not line.startswith("#")]
    parsed = {int(r[0]): (r[1], tuple(map(int, r[2:5])), int(r[5])) for r in rows}
    assert len(parsed) == len(rows) == protocol.num_ids  # unique raw codes
    assert [int(r[0]) for r in rows] == sorted(parsed)
    for code, name, rgb in zip(
        protocol.raw_codes(), protocol.id_names(), protocol.colours(), strict=True
    ):
        assert parsed[int(code)] == (name, tuple(rgb.tolist()), 0)


def test_itksnap_labels(protocol, tmp_path):
    path = tmp_path / "labels.txt"
    protocol.write_itksnap_labels(path)
    text = path.read_text()
    assert text.startswith(
        "################################################\n"
        "# ITK-SnAP Label Description File\n"
        "# File format: \n"
        "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL\n"
        "# Fields: \n"
    )
    rows = [line for line in text.splitlines() if not line.startswith("#")]
    assert len(rows) == protocol.num_ids
    names = {}
    for row in rows:
        head, name, tail = row.split('"')
        assert tail == ""
        idx, r, g, b, a, vis, msh = map(int, head.split())
        names[idx] = name
        assert a == (0 if idx == 0 else 1)
    assert names == dict(zip(protocol.raw_codes().tolist(), protocol.id_names(), strict=True))
    assert rows[0].startswith("    0     0    0    0        0  0  0    ")


def test_get_protocol_unknown():
    with pytest.raises(ValueError, match="mni-tissue, aseg"):
        labels.get_protocol("nope")


def test_flat_protocol():
    p = labels.flat_protocol("toy", {0: "background", 1: "a", 2: "b"})
    assert p.leaves == ("background", "a", "b") and p.num_ids == 3
    assert p.levels() == [[0, 1, 2]]
    assert p.level_of_leaves().tolist() == [[0, 1, 2]]
    assert p.parent().tolist() == [-1, -1, -1]
    assert p.encode(np.array([2, 0, 1])).tolist() == [2, 0, 1]
    assert labels.Protocol.from_json(p.to_json()) == p
    assert len(set(map(tuple, p.colours().tolist()))) == 3

    q = labels.flat_protocol("lr", {"0": "bg", "3": "Right hippo", "7": "Left hippo", "9": "x"})
    assert q.raw_codes().tolist() == [0, 3, 7, 9]
    assert q.lr_swap()[:4].tolist() == [0, 2, 1, 3]
    with pytest.raises(ValueError, match="value 0"):
        labels.flat_protocol("bad", {1: "a"})
