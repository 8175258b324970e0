"""Export, sample, evaluate: the model directory, both sampling routes, native space, tools."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

from msseg import files
from msseg.errors import InputError
from msseg.export import format as fmt

ROOT = Path(__file__).parents[1]


def _write_reoriented(src: Path, dst: Path, perm, flips, oblique_deg: float = 0.0):
    """Copy of a NIfTI with axes permuted/flipped (same world positions) and optionally the
    whole grid rotated about z (oblique)."""
    img = nib.load(src)
    data, affine = np.asarray(img.dataobj), img.affine
    ornt = np.array([[p, -1 if f else 1] for p, f in zip(perm, flips, strict=True)], float)
    # nibabel: ornt row i says where input axis i goes and whether it flips
    new = nib.orientations.apply_orientation(data, ornt)
    affine = affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)
    if oblique_deg:
        a = np.deg2rad(oblique_deg)
        rot = np.eye(4)
        rot[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
        affine = rot @ affine
    out = nib.Nifti1Image(new, affine)
    out.set_qform(affine, 1)
    out.set_sform(affine, 1)
    nib.save(out, dst)


def test_model_directory_holds_what_the_contract_names(exported):
    _, model_dir, _ = exported
    names = {p.name for p in model_dir.iterdir()}
    assert {"sampler.jaxexport", "sampler_depth1.jaxexport", "params.npz"} <= names
    assert {"config.json", "labels.json", "metadata.json"} <= names
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert set(meta["files"]) == names - {"metadata.json"}
    assert meta["versions"]["jax"] == jax.__version__
    assert meta["source"]["step"] == 3 and meta["entry_depths"] == [0, 1]
    assert "val_dice" in meta["validation"]
    assert meta["platforms"] == ["cpu", "cuda"]
    exp = jax.export.deserialize(bytearray((model_dir / "sampler.jaxexport").read_bytes()))
    image, x_t, _, ts = exp.in_avals[-7:-3]  # after the params leaves
    assert str(image.shape[0]) == str(x_t.shape[0]) == "b" and str(ts.shape[0]) == "s"
    calls = set(re.findall(r"custom_call @(\w+)", exp.mlir_module()))
    assert calls <= {"shape_assertion", "Sharding"}, calls  # portable XLA only
    meta = fmt.verify(model_dir)
    assert (meta["format"], meta["format_version"]) == (fmt.FORMAT, fmt.FORMAT_VERSION)


def test_a_changed_or_missing_file_is_named(exported, tmp_path):
    import shutil

    _, model_dir, _ = exported
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    with open(bad / "params.npz", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(InputError, match="params.npz.*checksum"):
        fmt.verify(bad)
    shutil.copyfile(model_dir / "params.npz", bad / "params.npz")
    fmt.verify(bad)
    (bad / "sampler.jaxexport").unlink()
    with pytest.raises(InputError, match="sampler.jaxexport"):
        fmt.verify(bad)


def test_jax_version_window():
    fmt.check_jax_version("0.10.2", "0.10.2")
    fmt.check_jax_version("0.10.2", "0.11.0")
    with pytest.raises(InputError, match="install jax>=0.10.2"):
        fmt.check_jax_version("0.10.2", "0.9.9")
    with pytest.raises(InputError, match="major version"):
        fmt.check_jax_version("0.10.2", "1.0.0")


def test_params_round_trip(tmp_path):
    tree = {"params": {"a": {"kernel": np.ones((2, 3))}, "b": np.arange(4.0)}}
    fmt.save_params(tmp_path / "p.npz", tree)
    back = fmt.load_params(tmp_path / "p.npz")
    np.testing.assert_array_equal(back["params"]["a"]["kernel"], tree["params"]["a"]["kernel"])
    np.testing.assert_array_equal(back["params"]["b"], tree["params"]["b"])


def test_a_failed_export_keeps_the_previous_model(tmp_path):
    target = tmp_path / "m"

    def write(text):
        def fn(tmp):
            (tmp / "x.txt").write_text(text)
            return {"format": 1}

        return fn

    def fail(tmp):
        (tmp / "x.txt").write_text("two")
        raise RuntimeError("interrupted")

    fmt.write_directory(target, write("one"))
    with pytest.raises(RuntimeError):
        fmt.write_directory(target, fail)
    assert (target / "x.txt").read_text() == "one"
    fmt.write_directory(target, write("three"))  # a successful export replaces it
    assert (target / "x.txt").read_text() == "three"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no partial or old folder left
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not an msseg model directory"):
        fmt.write_directory(other, write("x"))
    assert (other / "keep.txt").read_text() == "mine"


def test_export_replaces_only_msseg_model_directories_and_keeps_other_files(tmp_path):
    """A folder whose metadata.json msseg did not write is never replaced; a user's file
    inside a real model directory survives a re-export (outside the checksums)."""

    def write(text):
        def fn(tmp):
            (tmp / "x.txt").write_text(text)
            return {}

        return fn

    lookalike = tmp_path / "d"
    lookalike.mkdir()
    (lookalike / "notes.txt").write_text("precious")
    (lookalike / "metadata.json").write_text('{"author": "me"}')
    with pytest.raises(InputError, match="not an msseg model directory"):
        fmt.write_directory(lookalike, write("one"))
    assert (lookalike / "notes.txt").read_text() == "precious"
    assert (lookalike / "metadata.json").read_text() == '{"author": "me"}'
    plain = tmp_path / "plain.txt"
    plain.write_text("mine")
    with pytest.raises(InputError, match="a file of that name exists"):
        fmt.write_directory(plain, write("one"))
    assert plain.read_text() == "mine"

    model = tmp_path / "m"
    fmt.write_directory(model, write("one"))
    (model / "NOTES.md").write_text("trained on site A")
    (model / "extra").mkdir()
    (model / "extra" / "fig.png").write_bytes(b"png")
    fmt.write_directory(model, write("two"))
    assert (model / "x.txt").read_text() == "two"
    assert (model / "NOTES.md").read_text() == "trained on site A"
    assert (model / "extra" / "fig.png").read_bytes() == b"png"
    meta = json.loads((model / "metadata.json").read_text())
    assert set(meta["files"]) == {"x.txt"}  # the user's files stay outside the checksums
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "m", "plain.txt"]


def test_metadata_is_checksummed_and_checked_against_the_params(exported, tmp_path):
    """Editing the spacing or the class count in metadata.json is refused by its checksum;
    a re-signed but inconsistent metadata.json is refused against the params' shapes."""
    import shutil

    from msseg.inference import model as model_lib

    _, model_dir, _ = exported
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    meta = json.loads((bad / "metadata.json").read_text())
    wrong = meta["model"]["num_classes"] + 2
    edits = [
        {"preprocess": {**meta["preprocess"], "spacing": [1.25, 1.5, 1.75]}},
        {"model": {**meta["model"], "num_classes": wrong}},
    ]
    for edit in edits:
        (bad / "metadata.json").write_text(json.dumps({**meta, **edit}))
        with pytest.raises(InputError, match="metadata.json: checksum mismatch"):
            model_lib.load_model(bad)
    resigned = {**meta, "model": {**meta["model"], "num_classes": wrong}}
    resigned["metadata_sha256"] = fmt.metadata_digest(resigned)
    (bad / "metadata.json").write_text(json.dumps(resigned))
    with pytest.raises(InputError, match=f"{bad}: inconsistent model directory.*{wrong} classes"):
        model_lib.load_model(bad)
    legacy = {k: v for k, v in meta.items() if k not in ("format_version", "metadata_sha256")}
    (bad / "metadata.json").write_text(json.dumps({**legacy, "format": 1}))
    with pytest.raises(InputError, match="format 1.*re-export"):
        model_lib.load_model(bad)
    older = {**meta, "format_version": 2}
    older["metadata_sha256"] = fmt.metadata_digest(older)
    (bad / "metadata.json").write_text(json.dumps(older))
    with pytest.raises(InputError, match="format 2 .*re-export"):
        model_lib.load_model(bad)


def test_a_models_facts_come_from_its_metadata_alone(exported, tmp_path):
    """metadata.json holds what `setup.load_run(workdir).facts()` says about the run, and
    inference reads nothing else: a config.json that says otherwise (checksums re-signed)
    changes neither the loaded model nor its segmentation."""
    import shutil

    from msseg.inference import model as model_lib
    from msseg.train import setup as setup_lib

    workdir, model_dir, _ = exported
    meta = json.loads((model_dir / "metadata.json").read_text())
    facts = setup_lib.load_run(workdir).facts()
    assert {k: meta[k] for k in facts} == facts
    assert meta["model"]["channels"] and "conv_impl" not in meta["model"]

    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["model"]["channels"] = [7]
    config["data"]["pipeline"]["patch_size"] = [5, 5, 5]
    config["sampler"]["kind"] = "ddpm"
    (other / "config.json").write_text(json.dumps(config))
    meta["files"]["config.json"] = files.sha256_file(other / "config.json")
    meta["metadata_sha256"] = fmt.metadata_digest(meta)
    (other / "metadata.json").write_text(json.dumps(meta))
    a = model_lib.load_model(model_dir, route="local")
    b = model_lib.load_model(other, route="local")
    assert (a.patch, a.num_depths, a.sampler_defaults) == (
        b.patch,
        b.num_depths,
        b.sampler_defaults,
    )
    cfg = model_lib.sampler_config(a, steps=2)
    image = jnp.asarray(np.random.default_rng(0).normal(size=(1, *a.patch, 1)), jnp.float32)
    key = jax.random.key(0)
    out_a = model_lib.segment_batch(a, cfg)(a.params, image, key)["probs"]
    out_b = model_lib.segment_batch(b, cfg)(b.params, image, key)["probs"]
    np.testing.assert_array_equal(np.asarray(out_a), np.asarray(out_b))


def test_sampler_settings_that_would_be_ignored_or_are_meaningless_are_refused(exported):
    from msseg.inference import model as model_lib

    _, model_dir, _ = exported
    for kw, match in [
        ({"eta": float("nan")}, "eta must be in"),
        ({"eta": -1.0}, "eta must be in"),
        ({"kind": "ddpm", "steps": 7}, "--steps.*ddpm"),
        ({"kind": "multiscale", "steps": 7}, "--steps.*multiscale"),
        ({"kind": "ddpm", "eta": 0.5}, "--eta.*ddpm"),
    ]:
        with pytest.raises(ValueError, match=match):
            model_lib.open_model(model_dir, "exported", **kw)
    model_lib.open_model(model_dir, "exported", kind="ddim", steps=3, eta=0.5)


@pytest.mark.parametrize(
    "kind,kw",
    [
        ("ddim", {"eta": 0.0}),
        ("ddim", {"eta": 0.5, "ensemble": 2}),
        pytest.param("ddpm", {}, marks=pytest.mark.slow),  # 100 steps
        ("multiscale", {"coarse_steps": 2, "refine_steps": 2}),
        ("anchored", {"refine_steps": 2}),
    ],
)
def test_exported_and_local_routes_give_the_same_segmentation(exported, kind, kw):
    from msseg import io
    from msseg.data.prepare import prepare_image
    from msseg.inference import model as model_lib
    from msseg.inference import predict

    _, model_dir, raw = exported
    image = sorted((raw / "imagesTs").glob("*.nii.gz"))[0]
    out = {}
    for route in ("exported", "local"):
        model = model_lib.load_model(model_dir, route=route)
        assert model.route == route
        cfg = model_lib.sampler_config(model, kind=kind, steps=3, **kw)
        seg = predict.Segmenter(model, predict.Options(cfg, batch=8))
        prepared, _ = prepare_image(io.load_image(image), model.preprocess)
        crop = prepared.image[:24, :24, :24]  # 8 windows of 16³
        out[route] = seg.segment_array(crop, jax.random.key(3))
    np.testing.assert_allclose(out["exported"][0], out["local"][0], atol=2e-3)
    same = np.mean(out["exported"][0].argmax(-1) == out["local"][0].argmax(-1))
    assert same > 0.995, same
    assert out["exported"][2] == out["local"][2] == 8


@pytest.mark.parametrize("copy", ["ras", "las", "oblique"])
def test_probabilities_map_back_onto_the_native_grid(exported, tmp_path, copy):
    """An oracle segmenter (the reference itself, resampled onto the model grid and one-hot)
    mapped back by `to_native` must reproduce the reference on the input's own grid."""
    from msseg import io
    from msseg.data.prepare import PreprocessConfig, prepare_image
    from msseg.inference import predict
    from msseg.labels import get_protocol

    _, _, raw = exported
    image = sorted((raw / "imagesTs").glob("*.nii.gz"))[0]
    label = raw / "labelsTs" / image.name.replace("_0000", "")
    perm, flips, deg = {
        "ras": ((0, 1, 2), (False, False, False), 0.0),
        "las": ((0, 1, 2), (True, False, False), 0.0),
        "oblique": ((1, 0, 2), (True, False, True), 20.0),
    }[copy]
    _write_reoriented(image, tmp_path / "i.nii.gz", perm, flips, deg)
    _write_reoriented(label, tmp_path / "l.nii.gz", perm, flips, deg)
    volume, ref = io.load_image(tmp_path / "i.nii.gz"), io.load_label(tmp_path / "l.nii.gz")
    protocol = get_protocol("mni-tissue")
    ids = protocol.encode(ref.data)
    prepared, _ = prepare_image(volume, PreprocessConfig(spacing=(3.0, 3.0, 3.0)))
    on_grid = io.resample_label_to_grid(ids, ref.affine, prepared.affine, prepared.image.shape)
    probs = np.eye(protocol.num_leaves, dtype=np.float32)[on_grid]
    labels, entropy, _ = predict.to_native(
        probs, np.zeros(on_grid.shape, np.float32), prepared, volume
    )
    assert labels.shape == ref.data.shape and entropy.shape == ref.data.shape
    for leaf in range(1, protocol.num_leaves):
        a, b = labels == leaf, ids == leaf
        dice = 2 * np.sum(a & b) / max(np.sum(a) + np.sum(b), 1)
        assert dice > 0.8, (protocol.leaves[leaf], dice)
    assert np.mean(labels == ids) > 0.93


def test_segmenting_a_reoriented_copy_gives_the_same_labels_in_world_space(exported, tmp_path):
    from msseg.inference import model as model_lib
    from msseg.inference import predict

    _, model_dir, raw = exported
    src = sorted((raw / "imagesTs").glob("*.nii.gz"))[0]
    a, b = tmp_path / "ras" / "case.nii.gz", tmp_path / "pil" / "case.nii.gz"  # same name,
    a.parent.mkdir()  # so the same noise (the key depends on the name only)
    b.parent.mkdir()
    _write_reoriented(src, a, (0, 1, 2), (False, False, False))
    _write_reoriented(src, b, (2, 0, 1), (True, False, True))  # another voxel order
    assert nib.aff2axcodes(nib.load(b).affine) != nib.aff2axcodes(nib.load(a).affine)
    model = model_lib.load_model(model_dir)
    opts = predict.Options(model_lib.sampler_config(model, steps=2))
    seg = predict.Segmenter(model, opts)
    for path in (a, b):
        predict.write_outputs(
            path.parent, seg.segment_file(path, jax.random.key(0)), model.protocol
        )
    sa = nib.as_closest_canonical(nib.load(a.parent / "case_seg.nii.gz"))
    sb = nib.as_closest_canonical(nib.load(b.parent / "case_seg.nii.gz"))
    np.testing.assert_allclose(sa.affine, sb.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(sa.dataobj), np.asarray(sb.dataobj))
    assert nib.load(b.parent / "case_seg.nii.gz").shape == nib.load(b).shape  # input's grid


def _blocker(tmp_path: Path) -> Path:
    """A folder that, first on sys.path, makes importing flax, optax, orbax or grain fail."""
    block = tmp_path / "block"
    for name in ("flax", "optax", "orbax", "grain"):
        (block / name).mkdir(parents=True)
        (block / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked')\n")
    return block


@pytest.mark.slow
def test_tools_end_to_end_with_an_oblique_las_input_and_no_training_packages(exported, tmp_path):
    """sample.py runs with jax + numpy only (flax/optax/orbax/grain unimportable), on an LAS
    oblique volume (with flip TTA) and a truncated file (reported, exit code 1), then
    evaluate.py scores it."""
    _, model_dir, raw = exported
    image = sorted((raw / "imagesTs").glob("*.nii.gz"))[0]
    label = raw / "labelsTs" / image.name.replace("_0000", "")
    inputs, refs = tmp_path / "in", tmp_path / "ref"
    inputs.mkdir()
    refs.mkdir()
    las = (0, 1, 2), (True, False, False)
    _write_reoriented(image, inputs / "case.nii.gz", *las, oblique_deg=12.0)
    _write_reoriented(label, refs / "case.nii.gz", *las, oblique_deg=12.0)
    assert nib.aff2axcodes(nib.load(inputs / "case.nii.gz").affine)[0] == "L"
    blob = image.read_bytes()
    (inputs / "broken.nii.gz").write_bytes(blob[: len(blob) // 3])
    env = {**os.environ, "PYTHONPATH": f"{_blocker(tmp_path)}{os.pathsep}{ROOT}"}
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "sample.py"),
            f"--model={model_dir}",
            f"--input={inputs}",
            f"--output={out}",
            "--steps=2",
            "--ensemble=2",
            "--level=all",
            "--tta=flip",
            f"--compilation_cache={tmp_path / 'jaxcache'}",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 of 2 segmented" in proc.stdout and "FAILED" in proc.stdout
    assert "broken.nii.gz" in proc.stdout
    assert "route exported" in proc.stderr
    seg = nib.load(out / "case_seg.nii.gz")
    np.testing.assert_allclose(seg.affine, nib.load(inputs / "case.nii.gz").affine, atol=1e-5)
    assert (out / "case_uncertainty.nii.gz").is_file() and (out / "case_qc.png").is_file()
    # every tree level, each voxel's leaf under its level's id (mni-tissue raw codes)
    leaf = np.asarray(seg.dataobj)
    brain = np.asarray(nib.load(out / "case_seg_level0.nii.gz").dataobj)
    tissue = np.asarray(nib.load(out / "case_seg_level1.nii.gz").dataobj)
    assert set(np.unique(brain)) <= {0, 7} and ((leaf > 0) == (brain == 7)).all()
    np.testing.assert_array_equal(tissue, np.array([0, 8, 9, 10, 8, 9, 10])[leaf])
    vols = (out / "volumes.csv").read_text().splitlines()
    assert len(vols) == 2 and vols[0].startswith("case,")
    report = tmp_path / "report"
    proc = _evaluate(
        tmp_path, f"--pred={out}", f"--ref={refs}", f"--labels={model_dir}", f"--output={report}"
    )
    summary = json.loads((report / "summary.json").read_text())
    assert summary["num_cases"] == 1 and summary["hd95_mode"] == "pooled"
    rows = (report / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("case,level,label_id") and len(rows) > 1
    assert all(r.startswith("case,") for r in rows[1:])
    # evaluate.py --model: segment the dataset's test split and score it in one go
    report2 = tmp_path / "report2"
    model_flags = (f"--model={model_dir}", f"--data={raw}", "--split=test", "--steps=2")
    proc = _evaluate(tmp_path, *model_flags, f"--output={report2}", "--depths=0,1")
    summary = json.loads((report2 / "summary.json").read_text())
    assert set(summary["depths"]) == {"0", "1"} and summary["entry_depths"] == [0, 1]
    assert "depth 1" in proc.stdout
    assert list((report2 / "samples" / "depth0").glob("*_seg.nii.gz"))
    for depth in ("0", "1"):  # calibration of the voxel probabilities, per depth
        calib = summary["calibration"][depth]
        assert 0 <= calib["ece"] <= 1 and calib["voxels"] > 0
        assert set(calib["cases"]) == set(summary["case_dice"])
    assert "calibration (depth 1): ECE" in proc.stdout
    # --input_depth=1: a 2x coarser scan, upsampled and entered at depth 0
    report3 = tmp_path / "report3"
    _evaluate(tmp_path, *model_flags, f"--output={report3}", "--max_cases=1", "--input_depth=1")
    low = json.loads((report3 / "summary.json").read_text())
    assert low["input_depth"] == 1 and low["num_cases"] == 1
    from msseg.data import datasets

    (case,) = [c for c in datasets.resolve(str(raw)).cases if c.case_id in low["case_dice"]]
    seg = report3 / "samples" / f"{case.case_id}_seg.nii.gz"
    assert nib.load(seg).shape == nib.load(case.label).shape  # the scan's own grid


def _evaluate(cwd: Path, *flags: str) -> subprocess.CompletedProcess:
    """Runs tools/evaluate.py with `flags`; asserts that it succeeded."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "evaluate.py"), *flags],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
def test_benchmark_reports_sampling_throughput_with_a_baseline(exported, tmp_path):
    _, model_dir, _ = exported
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "benchmark.py"),
            f"--model={model_dir}",
            "--route=local",
            "--samplers=ddim",
            "--steps=2",
            "--ensembles=1,2",
            "--sizes=16",
            "--repeats=1",
            "--compare=exported",
            f"--output={out}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    assert [r["ensemble"] for r in figures["runs"]] == [1, 2]
    assert {r["route"] for r in figures["baseline"]} == {"exported"}
    for r in figures["runs"]:
        assert r["windows"] == 1 and r["denoiser_evals"] == 2 * r["ensemble"]
        assert r["median_s"] > 0 and r["voxels_per_s"] == pytest.approx(
            16**3 / r["median_s"], rel=0.05
        )
    assert "speed-up" in proc.stdout


def test_training_validation_scores_what_evaluate_reports(exported, tmp_path):
    """The windowed validation of a checkpoint gives the leaf Dice evaluate.py reports for the
    exported model on the same split with the same key: the best checkpoint is chosen on the
    number users get."""
    import ml_collections

    from msseg.inference import evaluate as evaluate_lib
    from msseg.inference import model as model_lib
    from msseg.inference import predict
    from msseg.train import checkpoint, loop
    from msseg.train import setup as setup_lib

    workdir, model_dir, _ = exported
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    assert config.train.val_windows
    setup = setup_lib.build_setup(config, config.data.cache)
    _, ema, _ = checkpoint.restore_params(workdir)
    val = loop.make_validation(config, setup)(ema, jax.random.key(0))

    model, sampler = model_lib.open_model(model_dir, route="local")
    opts = predict.Options(
        sampler, seed=0, overlap=config.train.val_overlap, batch=config.train.val_batch
    )
    rep = evaluate_lib.evaluate_model(
        model, config.data.spec, "val", tmp_path / "report", opts, worst=0
    )
    cases = rep.summary["case_dice"]
    assert len(cases) >= 1
    assert val["val/depth0/leaves"] == pytest.approx(np.mean(list(cases.values())), abs=1e-6)
    assert val["val_dice"] == val["val/depth0/leaves"]


def test_validation_without_the_raw_scans_segments_the_cache_grid(exported):
    """A run given only its cache (no raw files): validation windows the cache's arrays at
    each entry depth and scores them against the pooled cache labels."""

    from msseg.inference import model as model_lib
    from msseg.train import checkpoint, validate
    from msseg.train import setup as setup_lib

    workdir, _, _ = exported
    run = setup_lib.load_run(workdir)
    config, setup = run.config, run.setup
    cases = validate.load_window_cases(config.data.cache, "val")
    assert cases and all(isinstance(c.image, np.ndarray) for c in cases)
    model = model_lib.in_memory(run.facts(), setup.protocol, None)
    validator = validate.WindowValidator(model, setup.sampler, (0, 1), 0.25, 2)
    _, ema, _ = checkpoint.restore_params(workdir)
    val = validator(ema, cases, jax.random.key(0))
    for d in (0, 1):
        assert 0.0 <= val[f"val/depth{d}/leaves"] <= 1.0
        ref = validate.pooled_ids(cases[0].ref, d, setup.protocol)
        assert ref.shape == tuple(-(-n // 2**d) for n in cases[0].ref.shape)
    assert val["val_dice"] == val["val/depth0/leaves"]
