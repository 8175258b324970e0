"""sample.py's output folder: reruns, failures, volumes.csv and unusable --output paths.

A tiny deterministic model with random params (`msseg.train.setup.random_model`) segments tiny real
NIfTI scans through `predict.run`: the outputs are what matters here, not their quality.
"""

import os
import runpy
from pathlib import Path

import jax
import nibabel as nib
import numpy as np
import pytest

from msseg.diffusion import segment as seg
from msseg.errors import InputError
from msseg.inference import model as model_lib
from msseg.inference import predict
from msseg.train import setup as setup_lib

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def model():
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.model.diffusion = False  # one forward pass per window
    return setup_lib.random_model(c.to_dict())


def _scan(path: Path) -> Path:
    """A 4 mm head-like blob, 20x22x18 voxels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    g = np.indices((20, 22, 18)).astype(np.float32)
    blob = 100 * np.exp(-((g - np.array([10, 11, 9])[:, None, None, None]) ** 2).sum(0) / 30)
    nib.save(nib.Nifti1Image(blob.astype(np.float32), np.diag([4.0, 4.0, 4.0, 1.0])), path)
    return path


def _opts(model, level="leaves") -> predict.Options:
    return predict.Options(model_lib.sampler_config(model), level=level)


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_failed_rerun_keeps_the_earlier_outputs(model, tmp_path):
    scan = _scan(tmp_path / "in" / "case.nii.gz")
    out = tmp_path / "out"
    done, failures = predict.run(model, [scan], out, _opts(model, "all"))
    assert [d.name for d in done] == ["case"] and not failures
    before = _contents(out)
    levels = [f"case_seg_level{lev}.nii.gz" for lev in range(len(model.protocol.levels()))]
    assert set(before) == {
        "case_seg.nii.gz",
        *levels,
        "case_uncertainty.nii.gz",
        "case_qc.png",
        "volumes.csv",
    }

    blob = scan.read_bytes()
    scan.write_bytes(blob[: len(blob) // 2])  # the input replaced by a truncated copy
    done, failures = predict.run(model, [scan], out, _opts(model))  # leaves: no level files
    assert not done and [p for p, _ in failures] == [scan]
    assert "truncated or corrupt" in failures[0][1]
    assert _contents(out) == before  # byte-identical, level files too; no temporary files

    scan.write_bytes(blob)
    done, _ = predict.run(model, [scan], out, _opts(model))  # a good rerun replaces them
    assert done
    assert sorted(p.name for p in out.iterdir()) == sorted(set(before) - set(levels))


def test_staging_renames_only_when_every_file_was_written(tmp_path):
    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "b.txt").write_text("old b")
    (tmp_path / "stale.txt").write_text("stale")
    with pytest.raises(RuntimeError, match="disk full"):
        with predict.Staging() as stage:
            stage.stale.append(tmp_path / "stale.txt")
            stage.path(tmp_path / "a.txt").write_text("new a")
            stage.path(tmp_path / "b.txt")
            raise RuntimeError("disk full")  # b never written
    assert _contents(tmp_path) == {"a.txt": b"old a", "b.txt": b"old b", "stale.txt": b"stale"}
    with predict.Staging() as stage:
        stage.stale.append(tmp_path / "stale.txt")
        stage.path(tmp_path / "a.txt").write_text("new a")
        stage.path(tmp_path / "b.txt")
        with pytest.raises(RuntimeError, match="b.txt"):
            stage.commit()  # a staged file missing: nothing is replaced
    assert _contents(tmp_path) == {"a.txt": b"old a", "b.txt": b"old b", "stale.txt": b"stale"}
    with predict.Staging() as stage:
        stage.stale.append(tmp_path / "stale.txt")
        tmp = stage.path(tmp_path / "x_seg.nii.gz")
        assert tmp.name.startswith(".x_seg.") and tmp.name.endswith(".tmp.nii.gz")
        tmp.write_bytes(b"new")
        stage.commit()
    assert _contents(tmp_path) == {"a.txt": b"old a", "b.txt": b"old b", "x_seg.nii.gz": b"new"}


@pytest.mark.parametrize(
    "content,fragments",
    [
        ("case,Left-Thing,Right-Thing\nx,1.0,2.0\n", ["another label protocol", "Left-Thing"]),
        (b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00binary", ["unreadable volumes.csv"]),
        ("name,volume\nx,3\n", ["no 'case' column"]),
        ("case,a\nx,1,2,3\n", ["garbled volumes.csv", "line 2"]),
    ],
)
def test_a_foreign_volumes_csv_is_refused_before_any_file(model, tmp_path, content, fragments):
    scan = _scan(tmp_path / "in" / "case.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    table = out / "volumes.csv"
    if isinstance(content, str):
        table.write_text(content)
    else:
        table.write_bytes(content)
    before = _contents(out)
    with pytest.raises(InputError) as err:
        predict.run(model, [scan], out, _opts(model))
    message = str(err.value)
    assert message.startswith(f"{table}: ")
    assert "choose another --output or move the file away" in message
    for fragment in fragments:
        assert fragment in message
    assert _contents(out) == before  # nothing segmented, nothing written


def test_volumes_csv_rows_are_replaced_per_case(model, tmp_path):
    a, b = _scan(tmp_path / "in" / "a.nii.gz"), _scan(tmp_path / "in" / "b.nii.gz")
    out = tmp_path / "out"
    predict.run(model, [a, b], out, _opts(model))
    rows = (out / "volumes.csv").read_text().splitlines()
    assert rows[0].split(",") == ["case", *model.protocol.id_names()]
    assert [r.split(",")[0] for r in rows[1:]] == ["a", "b"]
    predict.run(model, [b], out, _opts(model))
    assert (out / "volumes.csv").read_text().splitlines() == rows


def test_an_unusable_output_folder_is_refused_before_any_file(model, tmp_path):
    scan = _scan(tmp_path / "in" / "case.nii.gz")
    plain = tmp_path / "file.txt"
    plain.write_text("mine")
    for output, problem in [
        (plain / "out", f"cannot create the output folder: {plain} is not a folder"),
        (plain / "a" / "b", f"cannot create the output folder: {plain} is not a folder"),
        (plain, "cannot create the output folder: a file of that name exists"),
    ]:
        with pytest.raises(InputError) as err:
            predict.run(model, [scan], output, _opts(model))
        assert str(err.value) == f"{output}: {problem}"
    assert plain.read_text() == "mine"
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(InputError, match="locked/out: cannot create the output folder"):
            predict.run(model, [scan], locked / "out", _opts(model))


def test_find_inputs_skips_hidden_files(tmp_path):
    for name in ("case.nii.gz", ".case_seg.nii.gz.0123abcd.tmp.nii.gz", "._case.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in predict.find_inputs(str(tmp_path))] == ["case.nii.gz"]


def test_flip_tta_averages_in_the_mirror_images_probabilities_with_sides_swapped(model):
    """tta=flip: the mirror image is segmented too (its own noise stream), its probabilities
    mirrored back with left and right leaves swapped and averaged in; windows count both
    passes. A volume of one window makes the result mirror-equivariant."""
    cfg = model_lib.sampler_config(model)
    plain = predict.Segmenter(model, predict.Options(cfg))
    flip = predict.Segmenter(model, predict.Options(cfg, tta="flip"))
    mirror = np.asarray(model.protocol.leaf_mirror)
    assert (
        sorted(mirror) == list(range(model.num_classes))
        and (mirror != np.arange(len(mirror))).any()
    )
    image = np.random.default_rng(0).normal(size=(19, 17, 15)).astype(np.float32)
    key = jax.random.key(0)
    a, _, n = plain.segment_array(image, key)
    b, _, _ = plain.segment_array(image[::-1].copy(), jax.random.fold_in(key, predict._FLIP_STREAM))
    probs, entropy, windows = flip.segment_array(image, key)
    np.testing.assert_allclose(probs, (a + b[::-1][..., mirror]) / 2, atol=1e-6)
    assert windows == 2 * n
    np.testing.assert_allclose(
        entropy, -(probs * np.log(np.maximum(probs, 1e-12))).sum(-1), atol=1e-5
    )

    one = np.random.default_rng(1).normal(size=model.patch).astype(np.float32)
    p, _, _ = flip.segment_array(one, key)
    q, _, _ = flip.segment_array(one[::-1].copy(), key)
    np.testing.assert_allclose(q, p[::-1][..., mirror], atol=1e-6)


def test_an_unknown_tta_is_refused():
    with pytest.raises(ValueError, match=r"tta must be one of \('none', 'flip'\), got 'rotate'"):
        predict.Options(seg.SamplerConfig(), tta="rotate")
