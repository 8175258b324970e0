"""Settings and output paths that cannot work are refused first: one line, no traceback, and
nothing (no cache, no manifest.json) written."""

from __future__ import annotations

import json
import math
import runpy
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from msseg.data import datasets, preprocess
from msseg.data.prepare import PreprocessConfig
from msseg.train import loop

REPO = Path(__file__).resolve().parents[1]


def _toy(root: Path) -> Path:
    """Two small labelled cases (a bright block with a labelled cube) as a dataset folder."""
    entries = []
    for i in range(2):
        image = np.full((12, 12, 12), 5.0, np.float32)
        image[2:10, 2:10, 2:10] = 100.0 + i
        label = np.zeros((12, 12, 12), np.uint8)
        label[4:8, 4:8, 4:8] = 1
        for sub, data in (("imagesTr", image), ("labelsTr", label)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            nib.save(
                nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), root / sub / f"c{i}.nii.gz"
            )
        entries.append({"image": f"imagesTr/c{i}.nii.gz", "label": f"labelsTr/c{i}.nii.gz"})
    meta = {"name": "Toy", "labels": {"0": "background", "1": "a"}, "training": entries}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return _toy(tmp_path_factory.mktemp("toy"))


def _tool(name: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, f"tools/{name}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _refused(run: subprocess.CompletedProcess, tool: str, *words: str) -> str:
    """The one-line message of a refusal by `tool`, checked to name every one of `words`."""
    assert run.returncode != 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{tool}: "), run.stderr
    for w in words:
        assert w in last, run.stderr
    return last


# --------------------------------------------------------------------------- output folders


def test_preprocess_refuses_an_output_folder_under_a_file(toy, tmp_path):
    blocker = tmp_path / "F"
    blocker.write_text("a plain file")
    out = blocker / "out"
    run = _tool("preprocess.py", f"--data={toy}", f"--output={out}", "--workers=1")
    _refused(run, "preprocess.py", f"{out}: cannot create the output folder")
    assert blocker.read_text() == "a plain file"


def test_evaluate_refuses_an_output_folder_under_a_file(tmp_path):
    blocker = tmp_path / "F"
    blocker.write_text("a plain file")
    out = blocker / "out"
    # the folders to score do not even exist: the output is checked before anything is read
    args = [f"--pred={tmp_path / 'p'}", f"--ref={tmp_path / 'r'}", "--labels=mni-tissue"]
    run = _tool("evaluate.py", *args, f"--output={out}")
    _refused(run, "evaluate.py", f"{out}: cannot create the output folder")
    # the same with a model: refused before the model is opened
    run = _tool("evaluate.py", f"--model={tmp_path / 'm'}", "--data=mni152", f"--output={out}")
    _refused(run, "evaluate.py", f"{out}: cannot create the output folder")


def test_library_refuses_an_output_folder_under_a_file(toy, tmp_path):
    blocker = tmp_path / "F"
    blocker.write_text("")
    with pytest.raises(ValueError, match="cannot create the output folder") as e:
        preprocess.run(str(toy), blocker / "out", spacing=(4.0, 4.0, 4.0), workers=1)
    assert str(e.value).startswith(str(blocker / "out"))
    with pytest.raises(ValueError, match="cannot create the output folder"):
        preprocess.run(str(toy), blocker, spacing=(4.0, 4.0, 4.0), workers=1)  # a file itself


def test_train_export_and_benchmark_outputs_under_a_file_are_refused_first(toy, tmp_path):
    from msseg import files
    from msseg.errors import InputError
    from msseg.export import exporter

    blocker = tmp_path / "F"
    blocker.write_text("a plain file")
    with pytest.raises(InputError, match=f"{blocker / 'w'}: cannot create the output folder"):
        loop.train(_tiny(toy, tmp_path), blocker / "w")
    # the export is refused before the workdir is even read (it does not exist here)
    with pytest.raises(InputError, match=f"{blocker / 'm'}: cannot create the output folder"):
        exporter.export_model(tmp_path / "no-run", blocker / "m")
    with pytest.raises(InputError, match="cannot create the output folder"):
        files.check_output_file(blocker / "bench.json")
    with pytest.raises(InputError, match="is a folder"):
        files.check_output_file(tmp_path)
    files.check_output_file(tmp_path / "new" / "bench.json")
    assert blocker.read_text() == "a plain file" and not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        (
            "train.py",
            ["--config=configs/tiny.py", "--config.data.pipeline.batch_size=8", "--workdir={out}"],
        ),
        ("export.py", ["--workdir={tmp}/run", "--output={out}"]),
        ("benchmark.py", ["--output={out}/b.json"]),
        ("benchmark_pipeline.py", ["--cache={tmp}/cache", "--output={out}/b.json"]),
        ("suite.py", ["--quick", "--out={out}"]),
        ("sample.py", ["--model={tmp}/no-model", "--input={tmp}", "--output={out}"]),
    ],
)
def test_every_tool_refuses_an_output_under_a_file_in_one_line(tmp_path, tool, args):
    blocker = tmp_path / "F"
    blocker.write_text("a plain file")
    out = blocker / "out"
    run = _tool(tool, *[a.format(out=out, tmp=tmp_path) for a in args])
    _refused(run, tool.removesuffix(".py") if tool == "suite.py" else tool, "not a folder")
    assert blocker.read_text() == "a plain file"


# --------------------------------------------------------------------------- preprocess settings


@pytest.mark.parametrize("spacing", ["-2", "0", "nan", "2,2", "2,x,2"])
def test_preprocess_refuses_a_bad_spacing_before_writing(toy, tmp_path, spacing):
    out = tmp_path / "out"
    run = _tool("preprocess.py", f"--data={toy}", f"--output={out}", f"--spacing={spacing}")
    _refused(run, "preprocess.py", f"--spacing={spacing}")
    assert not out.exists()


@pytest.mark.parametrize("spacing", [(-2.0, 2.0, 2.0), (0.0, 0.0, 0.0), (math.nan,) * 3])
def test_library_refuses_a_bad_spacing_before_writing(toy, tmp_path, spacing):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="spacing"):
        preprocess.run(str(toy), out, spacing=spacing, workers=1)
    assert not out.exists()
    dataset = datasets.resolve(toy)
    with pytest.raises(ValueError, match="spacing"):
        preprocess.preprocess_dataset(dataset, out, PreprocessConfig(spacing=spacing))
    assert not out.exists()


def test_a_failed_preprocess_leaves_no_manifest(toy, tmp_path):
    """A case that fails: no manifest.json (the cache is not complete), the good case's record
    kept aside for the next run, which then writes the manifest without redoing it."""
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in toy.rglob("*"):
        if p.is_file():
            (bad / p.relative_to(toy)).parent.mkdir(parents=True, exist_ok=True)
            (bad / p.relative_to(toy)).write_bytes(p.read_bytes())
    label = bad / "labelsTr" / "c1.nii.gz"
    good_label = label.read_bytes()
    label.write_bytes(good_label[: len(good_label) // 2])  # truncated
    out = tmp_path / "out"
    run = _tool("preprocess.py", f"--data={bad}", f"--output={out}", "--spacing=4", "--workers=1")
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert str(label) in run.stderr and "1 case(s) failed" in run.stderr
    assert not (out / "manifest.json").exists()
    partial = json.loads((out / preprocess.PARTIAL).read_text())
    assert list(partial["cases"]) == ["c0"]
    label.write_bytes(good_label)
    manifest = preprocess.run(str(bad), out, spacing=(4.0, 4.0, 4.0), workers=1)
    assert list(manifest["cases"]) == ["c0", "c1"]
    assert manifest["cases"]["c0"] == partial["cases"]["c0"]
    assert not (out / preprocess.PARTIAL).exists()


# --------------------------------------------------------------------------- training configs


def _tiny(toy: Path, tmp_path: Path):
    c = runpy.run_path(str(REPO / "configs" / "tiny.py"))["get_config"]()
    c.data.spec = str(toy)
    c.data.cache = str(tmp_path / "cache")
    c.train.mesh_data = 2
    return c


BAD_CONFIGS = [
    ("train.steps", 0),
    ("train.steps", -3),
    ("data.pipeline.batch_size", 0),
    ("train.lr", 0.0),
    ("train.lr", -1e-3),
    ("train.lr", math.nan),
    ("train.lr", math.inf),
    ("train.eval_every", -1),
    ("train.checkpoint_every", -5),
    ("train.log_every", 0),
    ("data.pipeline.patch_size", (16, 16, 15)),  # the 2-depth model needs multiples of 2
    ("data.spacing", (4.0, -4.0, 4.0)),
]


@pytest.mark.parametrize(("key", "value"), BAD_CONFIGS)
def test_train_refuses_a_config_that_cannot_work_before_preprocessing(toy, tmp_path, key, value):
    c = _tiny(toy, tmp_path)
    section, name = key.rsplit(".", 1)
    node = c
    for part in section.split("."):
        node = node[part]
    node[name] = value
    start = time.perf_counter()
    with pytest.raises(ValueError, match=key.rsplit(".", 1)[-1]):
        loop.train(c, tmp_path / "run")
    assert time.perf_counter() - start < 5
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "run").exists()


def test_patch_size_must_suit_the_model_not_only_the_pipeline(toy, tmp_path):
    c = _tiny(toy, tmp_path)
    c.model.channels = (8, 16, 32, 64)  # 4 depths: patches divide by 8; the pipeline's 2 by 2
    c.data.pipeline.patch_size = (16, 16, 20)
    with pytest.raises(ValueError, match=r"patch_size \(16, 16, 20\) must divide by 8"):
        loop.check_config(c)
    c.data.pipeline.patch_size = (16, 16, 24)
    loop.check_config(c)


def test_the_tiny_config_passes(toy, tmp_path):
    loop.check_config(_tiny(toy, tmp_path))


def test_train_binary_refuses_a_config_in_one_line(toy, tmp_path):
    work = tmp_path / "run"
    run = _tool(
        "train.py",
        "--config=configs/tiny.py",
        f"--workdir={work}",
        f"--config.data.spec={toy}",
        f"--config.data.cache={tmp_path / 'cache'}",
        "--config.train.steps=0",
    )
    _refused(run, "train.py", "train.steps=0")
    assert not (tmp_path / "cache").exists() and not work.exists()
