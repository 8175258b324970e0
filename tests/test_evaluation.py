"""Tests for msseg.evaluation: metrics against a brute-force reference, reports, the CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from msseg import labels as labels_lib
from msseg.evaluation import metrics, plots, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANISO = (1.0, 0.7, 2.5)
MNI = labels_lib.get_protocol("mni-tissue")

# ------------------------------------------------------------------ brute-force reference

_FACES = ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))


def _bf_surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a face neighbour outside: explicit zero padding, six shifted views."""
    d, h, w = mask.shape
    padded = np.zeros((d + 2, h + 2, w + 2), bool)
    padded[1:-1, 1:-1, 1:-1] = mask
    out = np.zeros(mask.shape, bool)
    for dz, dy, dx in _FACES:
        neighbour = padded[1 + dz : 1 + dz + d, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        out |= mask & ~neighbour
    return out


def _bf_directed(a: np.ndarray, b: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """All pairwise surface-voxel distances in mm; minimum per voxel, both directions."""
    pa = np.argwhere(_bf_surface(a)) * np.asarray(spacing)
    pb = np.argwhere(_bf_surface(b)) * np.asarray(spacing)
    dist = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return dist.min(1), dist.min(0)


def _bf_metrics(pred, ref, spacing, mode="pooled") -> dict[str, float]:
    a, b = int(pred.sum()), int(ref.sum())
    voxel = float(np.prod(spacing))
    out = {"ref_vol_mm3": b * voxel, "pred_vol_mm3": a * voxel}
    if a == 0 and b == 0:
        return out | {"dice": 1.0, "vs": 1.0, "hd95": 0.0, "assd": 0.0}
    if a == 0 or b == 0:
        diag = float(np.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, spacing, strict=True))))
        return out | {"dice": 0.0, "vs": 0.0, "hd95": diag, "assd": diag}
    d_ab, d_ba = _bf_directed(pred, ref, spacing)
    pooled = np.concatenate([d_ab, d_ba])
    hd = np.percentile(pooled, 95)
    if mode == "max":
        hd = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    return out | {
        "dice": 2 * int((pred & ref).sum()) / (a + b),
        "vs": 1 - abs(a - b) / (a + b),
        "hd95": float(hd),
        "assd": float(pooled.mean()),
    }


def _check(pred, ref, spacing, mode="pooled"):
    got = metrics.compute_metrics(pred, ref, spacing, hd95_mode=mode)
    want = _bf_metrics(pred, ref, spacing, mode)
    for key, value in want.items():
        assert getattr(got, key) == pytest.approx(value, rel=1e-9, abs=1e-9), key
    return got


def _sphere(shape, centre, radius, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    dist2 = sum(((grid[k] - centre[k]) * spacing[k]) ** 2 for k in range(3))
    return dist2 <= radius**2


def _cube(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return m


# ------------------------------------------------------------------------------ metrics


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), ANISO])
def test_random_masks_match_brute_force(seed, spacing):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(6, 15, size=3))
    pred = rng.random(shape) < rng.uniform(0.1, 0.6)
    ref = rng.random(shape) < rng.uniform(0.1, 0.6)
    assert np.array_equal(metrics.surface(pred), _bf_surface(pred))
    for mode in metrics.HD95_MODES:
        _check(pred, ref, spacing, mode)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), ANISO])
def test_structured_masks_match_brute_force(spacing):
    shape = (20, 24, 16)
    spheres = (_sphere(shape, (10, 12, 8), 7.0, spacing), _sphere(shape, (11, 10, 8), 6.0, spacing))
    cubes = (_cube(shape, (2, 3, 4), (12, 15, 10)), _cube(shape, (5, 3, 0), (20, 24, 16)))
    for pred, ref in (spheres, cubes, (spheres[0], cubes[0]), (cubes[1], spheres[1])):
        assert pred.any() and ref.any()
        for mode in metrics.HD95_MODES:
            _check(pred, ref, spacing, mode)


def test_single_functions_agree_with_compute_metrics():
    rng = np.random.default_rng(7)
    pred = _sphere((16, 16, 16), (8, 8, 8), 5.0) & (rng.random((16, 16, 16)) < 0.9)
    ref = _cube((16, 16, 16), (3, 4, 5), (12, 13, 11))
    got = metrics.compute_metrics(pred, ref, ANISO)
    assert metrics.dice(pred, ref) == got.dice
    assert metrics.volume_similarity(pred, ref) == got.vs
    assert metrics.hd95(pred, ref, ANISO) == got.hd95
    assert metrics.assd(pred, ref, ANISO) == got.assd
    d_ab, d_ba = metrics.surface_distances(pred, ref, ANISO)
    assert d_ab.size == metrics.surface(pred).sum() and d_ba.size == metrics.surface(ref).sum()


def test_shifted_cube_known_values():
    ref = _cube((12, 12, 12), (2, 2, 2), (6, 6, 6))
    pred = _cube((12, 12, 12), (3, 2, 2), (7, 6, 6))  # shifted by one voxel along axis 0
    got = _check(pred, ref, ANISO)
    assert got.dice == pytest.approx(0.75)
    assert got.vs == 1.0
    assert got.ref_vol_mm3 == pytest.approx(64 * 1.0 * 0.7 * 2.5)


def test_hd95_pooled_and_max_differ():
    # A thin far spur on pred only: a few of pred's surface voxels are far from ref, so
    # pred→ref's own 95th percentile is large while the pooled one is diluted.
    ref = _cube((24, 12, 12), (2, 3, 3), (6, 7, 7))
    pred = ref.copy()
    pred[6:20, 5, 5] = True
    pooled = _check(pred, ref, ANISO, "pooled").hd95
    worst = _check(pred, ref, ANISO, "max").hd95
    assert worst > pooled
    with pytest.raises(ValueError, match="hd95 mode"):
        metrics.compute_metrics(pred, ref, ANISO, hd95_mode="mean")


def test_empty_mask_policy():
    shape, empty = (8, 10, 12), np.zeros((8, 10, 12), bool)
    full = _cube(shape, (2, 2, 2), (5, 5, 5))
    both = metrics.compute_metrics(empty, empty, ANISO)
    assert (both.dice, both.vs, both.hd95, both.assd) == (1.0, 1.0, 0.0, 0.0)
    diag = np.sqrt((8 * 1.0) ** 2 + (10 * 0.7) ** 2 + (12 * 2.5) ** 2)
    assert metrics.diagonal_mm(shape, ANISO) == pytest.approx(diag)
    for pred, ref in ((full, empty), (empty, full)):
        one = _check(pred, ref, ANISO)
        assert (one.dice, one.vs) == (0.0, 0.0)
        assert one.hd95 == one.assd == pytest.approx(diag)
        assert metrics.hd95(pred, ref, ANISO, "max") == pytest.approx(diag)


# ------------------------------------------------------------------------------- report


def _leaf_map(rng, shape=(14, 12, 10)) -> np.ndarray:
    """Blocky random leaf ids of mni-tissue (so structures have some extent)."""
    coarse = rng.integers(0, MNI.num_leaves, size=tuple(-(-n // 3) for n in shape))
    return np.kron(coarse, np.ones((3, 3, 3), int))[tuple(slice(n) for n in shape)].astype(np.uint8)


def test_rows_cover_every_label_of_every_level():
    rng = np.random.default_rng(0)
    ref = _leaf_map(rng)
    rows = report.evaluate_case(ref, ref, ANISO, MNI, case="c")
    expected = [(lv, i) for lv, level in enumerate(MNI.levels()) for i in level if i != 0]
    assert [(r.level, r.label_id) for r in rows] == expected
    assert all(r.dice == 1.0 and r.hd95 == 0.0 and r.vs == 1.0 for r in rows)
    assert {r.label for r in rows} >= {"Brain", "GM", "Left-WM"}


def test_node_metrics_equal_union_of_leaves():
    rng = np.random.default_rng(1)
    ref, pred = _leaf_map(rng), _leaf_map(rng)
    rows = {r.label: r for r in report.evaluate_case(pred, ref, ANISO, MNI, case="c")}
    for node in ("Brain", "CSF", "GM", "WM"):
        leaves = np.flatnonzero(MNI.membership()[MNI.id_of(node)])
        want = _bf_metrics(np.isin(pred, leaves), np.isin(ref, leaves), ANISO)
        for key, value in want.items():
            assert getattr(rows[node], key) == pytest.approx(value, rel=1e-9), (node, key)
    leaf = rows["Left-GM"]
    assert leaf.dice == pytest.approx(metrics.dice(pred == 2, ref == 2))


def test_ignore_and_partial_reference_voxels_are_excluded():
    rng = np.random.default_rng(2)
    ref, pred = _leaf_map(rng), _leaf_map(rng)
    ref[:4] = labels_lib.IGNORE
    gm = MNI.id_of("GM")
    ref[-3:] = gm  # partial label: grey matter of either side
    rows = {r.label: r for r in report.evaluate_case(pred, ref, ANISO, MNI, case="c")}
    keep = ref != labels_lib.IGNORE
    for leaf in ("Left-GM", "Left-WM"):
        i = MNI.id_of(leaf)
        scored = keep & ((ref != gm) if leaf == "Left-GM" else True)
        assert rows[leaf].dice == pytest.approx(metrics.dice((pred == i) & scored, ref == i))
        assert rows[leaf].vs == pytest.approx(
            metrics.volume_similarity((pred == i) & scored, ref == i)
        )
    in_gm = np.isin(pred, [2, 5]) & keep
    assert rows["GM"].dice == pytest.approx(metrics.dice(in_gm, np.isin(ref, [2, 5, gm])))
    # Whatever is predicted under IGNORE does not matter.
    pred2 = pred.copy()
    pred2[:4] = rng.integers(0, MNI.num_leaves, size=pred2[:4].shape)
    rows2 = report.evaluate_case(pred2, ref, ANISO, MNI, case="c")
    assert all(r == rows[r.label] for r in rows2)


def test_write_report_files(tmp_path):
    rng = np.random.default_rng(3)
    rows, previews = [], {}
    for name in ("a", "b"):
        ref, pred = _leaf_map(rng), _leaf_map(rng)
        rows += report.evaluate_case(pred, ref, ANISO, MNI, case=name, depth=0)
        previews[name] = plots.make_preview(ref, pred, ANISO)
    out = report.write_report(rows, tmp_path, MNI, previews=previews, worst=1)
    names = sorted(os.listdir(tmp_path))
    assert names == sorted(
        ["metrics.csv", "summary.json", *(f"boxplot_{m}.png" for m in report.METRICS)]
        + [f"overlay_1_{next(iter(out.summary['case_dice']))}.png"]
    )
    with open(tmp_path / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and table[0]["depth"] == "0"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["depths"]["0"]["labels"]["Brain"]["dice"]["n"] == 2


# ---------------------------------------------------------------------------------- CLI


def _save(path, data, spacing=ANISO):
    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))


def _run(*args):
    cmd = [sys.executable, os.path.join(ROOT, "tools", "evaluate.py"), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """pred/ ref/ images/ with three cases in mni-tissue raw codes, and a model dir."""
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(4)
    for d in ("pred", "ref", "images", "model"):
        (root / d).mkdir()
    arrays = {}
    for i, name in enumerate(("case1", "case2", "case3")):
        ref = _leaf_map(rng)
        pred = ref.copy() if i == 0 else _leaf_map(rng)
        raw_ref, raw_pred = MNI.decode(ref), MNI.decode(pred)
        _save(root / "ref" / f"{name}.nii.gz", raw_ref.astype(np.int16))
        seg = f"{name}_seg.nii.gz" if i != 1 else f"{name}.nii"
        _save(root / "pred" / seg, raw_pred.astype(np.uint8))
        _save(root / "images" / f"{name}_0000.nii.gz", rng.random(ref.shape).astype(np.float32))
        arrays[name] = (pred, ref)
    _save(root / "pred" / "case1_uncertainty.nii.gz", np.zeros((14, 12, 10), np.float32))
    (root / "model" / "labels.json").write_text(json.dumps(MNI.to_json()))
    return root, arrays


def test_cli_end_to_end(folders, tmp_path):
    root, arrays = folders
    out = tmp_path / "report"
    r = _run(
        f"--pred={root / 'pred'}",
        f"--ref={root / 'ref'}",
        f"--labels={root / 'model'}",
        f"--images={root / 'images'}",
        f"--output={out}",
        "--hd95=max",
        "--worst=2",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Left-GM" in r.stdout and "3 cases" in r.stdout
    with open(out / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(report.COLUMNS)
    n_labels = sum(len(level) - 1 for level in MNI.levels())
    assert len(table) == 3 * n_labels
    for name, (pred, ref) in arrays.items():
        want = report.evaluate_case(pred, ref, ANISO, MNI, case=name, hd95_mode="max")
        got = [row for row in table if row["case"] == name]
        for w, g in zip(want, got, strict=True):
            assert (g["label"], int(g["level"])) == (w.label, w.level)
            for m in (*report.METRICS, "ref_vol_mm3", "pred_vol_mm3"):
                # float32 affine in the file
                assert float(g[m]) == pytest.approx(getattr(w, m), rel=1e-6)
    assert all(float(row["dice"]) == 1.0 for row in table if row["case"] == "case1")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_cases"] == 3 and summary["hd95_mode"] == "max"
    assert summary["labels"]["Brain"]["dice"]["n"] == 3
    assert set(summary["levels"]) == {"0", "1", "2"}
    assert summary["levels"]["0"]["labels"] == ["Brain"]
    assert list(summary["case_dice"])[-1] == "case1"
    pngs = sorted(p for p in os.listdir(out) if p.endswith(".png"))
    assert len([p for p in pngs if p.startswith("overlay_")]) == 2
    assert len([p for p in pngs if p.startswith("boxplot_")]) == 4
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temporary files left


def test_cli_errors_name_the_file(folders, tmp_path):
    root, _ = folders
    bad = tmp_path / "pred_bad"
    bad.mkdir()
    for p in (root / "pred").iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    _save(bad / "case2.nii", np.zeros((14, 12, 9), np.uint8))  # wrong grid
    r = _run(
        f"--pred={bad}",
        f"--ref={root / 'ref'}",
        "--labels=mni-tissue",
        f"--output={tmp_path / 'o'}",
    )
    assert r.returncode != 0
    assert "case2.nii" in r.stderr and "grid" in r.stderr
    (bad / "case2.nii").unlink()
    r = _run(
        f"--pred={bad}",
        f"--ref={root / 'ref'}",
        "--labels=mni-tissue",
        f"--output={tmp_path / 'o'}",
    )
    assert r.returncode != 0 and "case2_seg.nii.gz" in r.stderr and "no prediction" in r.stderr
    r = _run(
        f"--pred={root / 'pred'}",
        f"--ref={root / 'ref'}",
        "--labels=nope",
        f"--output={tmp_path / 'o'}",
    )
    assert r.returncode != 0 and "nope" in r.stderr
