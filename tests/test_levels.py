"""Tree levels: top-down decoding (labels, segment, predict.to_native) and per-level outputs."""

import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

from msseg import io, labels
from msseg.diffusion import segment
from msseg.inference import predict

ROOT = Path(__file__).parents[1]
MNI = labels.get_protocol("mni-tissue")


@pytest.fixture(params=labels.PROTOCOLS)
def protocol(request):
    return labels.get_protocol(request.param)


def _reference(probs: np.ndarray, p: labels.Protocol) -> list[np.ndarray]:
    """Per level, the top-down decision of every row of probs [N, K] (float64, one voxel at
    a time, from the membership rows alone): the node ids chosen, coarse to fine."""
    rows = p.membership()
    out = [np.zeros(len(probs), np.int64) for _ in p.levels()]
    for v, pv in enumerate(probs.astype(np.float64)):
        allowed = np.ones(p.num_leaves, bool)
        for level, ids in enumerate(p.levels()):
            candidates = [i for i in ids if not (rows[i] & ~allowed).any()]
            best = max(candidates, key=lambda i: (pv[rows[i]].sum(), -i))  # ties: lowest id
            out[level][v] = best
            allowed = rows[best]
    return out


def test_level_tables_describe_the_levels(protocol):
    tables = protocol.level_tables()
    assert protocol.level_tables() is tables  # one object per protocol: a stable jit static
    rows = protocol.membership()
    levels = protocol.levels()
    table = protocol.level_of_leaves()
    assert table.shape == (len(levels), protocol.num_leaves) and table.dtype == np.uint8
    assert [t.tolist() for t in tables.ids] == levels
    for level, ids in enumerate(levels):
        assert set(table[level].tolist()) == set(ids)
        assert rows[table[level], np.arange(protocol.num_leaves)].all()  # ancestor-or-self
        if level:
            parents = tables.ids[level - 1][tables.parent_index[level]]
            for i, parent in zip(ids, parents, strict=True):
                assert (rows[parent] >= rows[i]).all()
    assert (table[-1] == np.arange(protocol.num_leaves)).all()


def test_tree_decision_beats_the_flat_argmax_on_mni_tissue():
    """Left-WM has the largest leaf probability (0.4), but GM (0.3 + 0.3) wins at the tissue
    level, so the leaf is a GM leaf (the left one: ties go to the lowest id)."""
    probs = np.zeros(7, np.float32)
    probs[[MNI.id_of("Left-WM"), MNI.id_of("Left-GM"), MNI.id_of("Right-GM")]] = 0.4, 0.3, 0.3
    tree = MNI.level_tables()
    assert int(np.argmax(probs)) == MNI.id_of("Left-WM")
    assert int(segment.tree_labels(jnp.asarray(probs), tree)) == MNI.id_of("Left-GM")
    assert int(tree.labels(probs)) == MNI.id_of("Left-GM")
    assert int(segment.tree_labels(jnp.asarray(probs))) == MNI.id_of("Left-WM")  # tree=None


def test_decoded_leaf_lies_under_every_levels_decision(protocol):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(protocol.num_leaves, 0.5), size=(6, 7, 8)).astype(np.float32)
    tree = protocol.level_tables()
    leaf = np.asarray(segment.tree_labels(jnp.asarray(probs), tree))
    assert leaf.shape == (6, 7, 8) and leaf.dtype == np.int32
    np.testing.assert_array_equal(tree.labels(probs), leaf)  # numpy and jax agree
    expected = _reference(probs.reshape(-1, protocol.num_leaves), protocol)
    table = protocol.level_of_leaves()
    for level, decision in enumerate(expected):
        np.testing.assert_array_equal(table[level][leaf.ravel()], decision)
    assert (leaf != probs.argmax(-1)).any()  # the tree changes some decisions here


def test_flat_protocol_decodes_as_argmax():
    p = labels.flat_protocol("toy", {0: "bg", 1: "a", 2: "b", 3: "c"})
    probs = np.random.default_rng(1).dirichlet(np.ones(4), size=(50,)).astype(np.float32)
    probs[:5] = [0.0, 0.5, 0.5, 0.0]  # ties go to the lowest id, as argmax
    tree = p.level_tables()
    assert tree.num_levels == 1
    np.testing.assert_array_equal(segment.tree_labels(jnp.asarray(probs), tree), probs.argmax(-1))
    np.testing.assert_array_equal(tree.labels(probs), probs.argmax(-1))


# ------------------------------------------------------------------ predict.to_native


def _volume(tmp_path: Path, shape=(40, 36, 30), oblique_deg=15.0) -> io.Volume:
    """A 2 mm LAS oblique volume with a bright ball near the -x edge (the head crop touches
    that side of the resampled grid and leaves a margin on the others)."""
    a = np.deg2rad(oblique_deg)
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    affine = rot @ affine
    idx = np.indices(shape).astype(np.float32)
    centre = np.array([shape[0] - 10, shape[1] / 2, shape[2] / 2])[:, None, None, None]
    ball = (np.sqrt(((idx - centre) ** 2).sum(0)) < 9).astype(np.float32)
    data = 100 * ball + np.random.default_rng(2).normal(0, 1, shape).astype(np.float32)
    img = nib.Nifti1Image(data.astype(np.float32), affine)
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    nib.save(img, tmp_path / "vol.nii.gz")
    return io.load_image(tmp_path / "vol.nii.gz")


def test_low_res_keeps_the_field_of_view_at_a_coarser_spacing(tmp_path):
    volume = _volume(tmp_path, oblique_deg=0.0)
    assert predict.low_res(volume, (2.0, 2.0, 2.0), 0) is volume
    low = predict.low_res(volume, (2.0, 2.0, 2.0), 1)
    np.testing.assert_allclose(low.spacing, (4.0, 4.0, 4.0))
    assert low.data.shape == tuple(n // 2 for n in volume.data.shape)

    def centre(v):
        return (v.affine @ np.r_[(np.asarray(v.data.shape) - 1) / 2, 1])[:3]

    np.testing.assert_allclose(centre(low), centre(volume), atol=1e-6)
    assert low.path == volume.path


def _native_probs_by_full_grid(probs, prepared, volume):
    """The former to_native's per-leaf interpolation through the whole resampled grid."""
    box = tuple(slice(a, b) for a, b in prepared.box)
    out = []
    for k in range(probs.shape[-1]):
        full = np.full(prepared.resampled_shape, 1.0 if k == 0 else 0.0, np.float32)
        full[box] = probs[..., k]
        out.append(
            io.resample_to_grid(
                full, prepared.resampled_affine, volume.affine, volume.data.shape, order=1
            )
        )
    return np.stack(out, -1)


def test_to_native_decides_top_down_on_interpolated_probabilities(tmp_path, monkeypatch):
    from msseg.data.prepare import PreprocessConfig, prepare_image

    volume = _volume(tmp_path)
    prepared, _ = prepare_image(volume, PreprocessConfig(spacing=(3.0, 3.0, 3.0)))
    box, grid = prepared.box, prepared.resampled_shape
    assert any(lo == 0 or hi == n for (lo, hi), n in zip(box, grid, strict=True))
    assert any(lo > 0 or hi < n for (lo, hi), n in zip(box, grid, strict=True))
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.full(7, 0.5), size=prepared.image.shape).astype(np.float32)
    entropy = rng.uniform(0, 2, prepared.image.shape).astype(np.float32)
    native = _native_probs_by_full_grid(probs, prepared, volume)
    tree = MNI.level_tables()

    flat, ent, conf = predict.to_native(probs, entropy, prepared, volume)
    assert flat.shape == volume.data.shape and flat.dtype == np.uint8
    assert np.mean(flat == native.argmax(-1)) > 0.999
    box_full = tuple(slice(a, b) for a, b in box)
    full = np.zeros(grid, np.float32)
    full[box_full] = entropy
    ref_ent = io.resample_to_grid(full, prepared.resampled_affine, volume.affine, flat.shape)
    np.testing.assert_allclose(ent, ref_ent, atol=1e-4)
    # confidence: the decided leaf's share of the interpolated probabilities
    chosen = np.take_along_axis(native, flat[..., None].astype(np.intp), -1)[..., 0]
    close = np.isclose(conf, chosen / native.sum(-1), atol=1e-4)
    assert conf.dtype == np.float32 and np.mean(close) > 0.999

    whole, _, whole_conf = predict.to_native(probs, entropy, prepared, volume, tree)
    assert (whole_conf <= conf + 1e-6).all()  # the top-down leaf is at most the argmax's
    monkeypatch.setattr(predict, "CHUNK_VALUES", 7 * 36 * 30 * 3)  # slabs of 3 voxels
    chunked, _, _ = predict.to_native(probs, entropy, prepared, volume, tree)
    assert np.mean(chunked == whole) > 0.999
    assert np.mean(chunked == tree.labels(native)) > 0.999
    assert (chunked != flat).any()
    table = MNI.level_of_leaves()
    for level, decision in enumerate(_reference(native.reshape(-1, 7), MNI)):
        assert np.mean(table[level][chunked.ravel()] == decision) > 0.999


# ------------------------------------------------------------------ outputs per level


def _result(tmp_path: Path, protocol: labels.Protocol) -> predict.Result:
    """A fake Result on a real LAS NIfTI: random leaf ids in blocks."""
    volume = _volume(tmp_path, shape=(12, 10, 8), oblique_deg=0.0)
    rng = np.random.default_rng(4)
    coarse = rng.integers(0, protocol.num_leaves, (6, 5, 4))
    leaf_ids = coarse.repeat(2, 0).repeat(2, 1).repeat(2, 2).astype(np.uint8)
    entropy = rng.uniform(0, 1, leaf_ids.shape).astype(np.float32)
    return predict.Result("case", leaf_ids, entropy, 1.0 - entropy, volume, 0.0, 1)


def _ids(path: Path, protocol: labels.Protocol) -> np.ndarray:
    return protocol.encode(io.load_label(path).data, path)


def test_level_all_writes_every_level_consistent_with_the_leaves(tmp_path, protocol):
    result = _result(tmp_path, protocol)
    out = tmp_path / "out"
    paths = predict.write_outputs(out, result, protocol, "all")
    levels = protocol.levels()
    names = [f"case_seg_level{lev}.nii.gz" for lev in range(len(levels))]
    assert [p.name for p in paths] == [
        "case_seg.nii.gz",
        *names,
        "case_uncertainty.nii.gz",
        "case_qc.png",
    ]
    assert all(p.is_file() for p in paths)
    written = nib.load(out / "case_seg.nii.gz")
    np.testing.assert_allclose(written.affine, nib.load(tmp_path / "vol.nii.gz").affine)
    leaf = _ids(out / "case_seg.nii.gz", protocol)
    np.testing.assert_array_equal(leaf, result.labels)
    rows, table = protocol.membership(), protocol.level_of_leaves()
    for lev, name in enumerate(names):
        raw = io.load_label(out / name).data
        np.testing.assert_array_equal(raw, protocol.decode(table[lev][leaf]))
        ids = protocol.encode(raw)
        assert set(np.unique(ids).tolist()) <= set(levels[lev])
        assert rows[ids, leaf].all()  # every voxel's leaf lies under its level id


def test_level_number_writes_that_level_and_drops_stale_level_files(tmp_path):
    result = _result(tmp_path, MNI)
    out = tmp_path / "out"
    predict.write_outputs(out, result, MNI, "all")
    paths = predict.write_outputs(out, result, MNI, 1)
    assert [p.name for p in paths] == ["case_seg.nii.gz", "case_uncertainty.nii.gz", "case_qc.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)
    ids = _ids(out / "case_seg.nii.gz", MNI)
    np.testing.assert_array_equal(ids, MNI.level_of_leaves()[1][result.labels])
    assert set(np.unique(ids).tolist()) <= {0, 8, 9, 10}  # background, CSF, GM, WM


def test_level_arguments_are_checked(tmp_path):
    assert predict.parse_level("leaves") == "leaves"
    assert predict.parse_level("all") == "all"
    assert predict.parse_level("2") == 2
    for bad in ("-1", "level1", "", "1.5"):
        with pytest.raises(ValueError, match="'leaves', 'all' or a tree level number"):
            predict.parse_level(bad)
    predict.check_level(2, MNI)
    predict.check_level("all", MNI)
    with pytest.raises(ValueError, match=r"level 3 is out of range.*levels 0\.\.2"):
        predict.check_level(3, MNI)
    with pytest.raises(ValueError, match="level must be"):
        predict.Options(segment.SamplerConfig(), level="coarse")
    with pytest.raises(ValueError, match="level must be"):
        predict.Options(segment.SamplerConfig(), level=-1)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="out of range"):
        predict.write_outputs(out, _result(tmp_path, MNI), MNI, 5)
    assert not out.exists()  # nothing written


def test_sample_tool_rejects_a_bad_level_before_any_work(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "sample.py"),
            f"--model={tmp_path / 'no-model'}",
            f"--input={tmp_path}",
            f"--output={out}",
            "--level=fine",
            "--compilation_cache=",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "sample.py: level must be 'leaves', 'all' or a tree level number" in proc.stderr
    assert not out.exists()


def test_find_inputs_skips_outputs_of_every_level(tmp_path):
    for name in (
        "case",
        "case_seg",
        "case_seg_level0",
        "case_seg_level12",
        "case_uncertainty",
        "case_segmented",
    ):
        (tmp_path / f"{name}.nii.gz").write_bytes(b"")
    found = [p.name for p in predict.find_inputs(str(tmp_path))]
    assert found == ["case.nii.gz", "case_segmented.nii.gz"]


def test_volumes_row_has_mm3_per_leaf_node_and_named_set(tmp_path, protocol):
    result = _result(tmp_path, protocol)
    row = predict.volumes_row(result, protocol)
    assert list(row) == ["case", *protocol.id_names()]
    voxel = 8.0  # 2 mm isotropic
    counts = np.bincount(result.labels.ravel(), minlength=protocol.num_leaves)
    rows = protocol.membership()
    for i, name in enumerate(protocol.id_names()):
        assert row[name] == pytest.approx(voxel * counts[rows[i]].sum())
    assert row[protocol.id_names()[protocol.num_leaves]] > 0  # a tree node's volume
    if protocol.sets:
        left = protocol.id_of("Left-Hemisphere")
        assert row["Left-Hemisphere"] == pytest.approx(voxel * counts[rows[left]].sum())
