"""A folder of scans through `cohort.run` and tools/sample.py: a rerun skips the complete cases,
the row files of an interrupted multi-process run are merged, and a real 2-process localhost
run (jax.distributed) segments every file exactly once into one volumes.csv, the same as one
process does."""

import csv
import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import run_processes
from test_outputs import _opts, _random_model, _scan

from msseg import names
from msseg.errors import InputError
from msseg.inference import cohort

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def model():
    return _random_model(diffusion=False)


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _rows(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {r["case"]: r for r in csv.DictReader(f)}


def test_a_rerun_skips_complete_cases_and_redoes_incomplete_ones(model, tmp_path):
    a, b = _scan(tmp_path / "in" / "a.nii.gz"), _scan(tmp_path / "in" / "b.nii.gz")
    out, opts = tmp_path / "out", _opts(model)
    r = cohort.run(model, [a, b], out, opts, overwrite=False)
    assert [d.name for d in r.done] == ["a", "b"] and not r.skipped and r.share == [a, b]
    before = _contents(out)

    r = cohort.run(model, [a, b], out, opts, overwrite=False)
    assert r.skipped == [a, b] and not r.done and _contents(out) == before  # nothing rewritten

    (out / "b_qc.png").unlink()  # an output missing: b is redone, a is not
    r = cohort.run(model, [a, b], out, opts, overwrite=False)
    assert r.skipped == [a] and [d.name for d in r.done] == ["b"]
    assert (out / "b_qc.png").read_bytes() == before["b_qc.png"]

    rows = _rows(out / "volumes.csv")  # a row missing: its case is redone
    with open(out / "volumes.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows["a"]))
        w.writeheader()
        w.writerow(rows["b"])
    r = cohort.run(model, [a, b], out, opts, overwrite=False)
    assert [d.name for d in r.done] == ["a"] and set(_rows(out / "volumes.csv")) == {"a", "b"}

    r = cohort.run(model, [a, b], out, opts)  # overwrite (the API's default): both again
    assert [d.name for d in r.done] == ["a", "b"] and not r.skipped


def test_row_files_of_an_interrupted_multi_process_run_are_merged_first(model, tmp_path):
    a = _scan(tmp_path / "in" / "a.nii.gz")
    out, opts = tmp_path / "out", _opts(model)
    cohort.run(model, [a], out, opts)
    row = _rows(out / "volumes.csv")["a"]
    # process 3 of a killed run had segmented "z" (its files are not checked here)
    part = cohort.part_path(out, 3)
    with open(part, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        w.writeheader()
        w.writerow({**row, "case": "z"})
    assert cohort.parts(out) == [part]
    r = cohort.run(model, [a], out, opts, overwrite=False)
    assert r.skipped == [a]
    assert set(_rows(out / "volumes.csv")) == {"a", "z"} and not part.exists()

    part.write_text("case,brain\nz\n")  # garbled: refused before any work, the file named
    with pytest.raises(InputError, match=r"volumes\.process3\.csv: "):
        cohort.run(model, [a], out, opts)
    assert part.exists()


def _sample(model_dir, inputs, out, tmp_path, *extra) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "tools" / "sample.py"),
        f"--model={model_dir}",
        f"--input={inputs}",
        f"--output={out}",
        "--steps=2",
        f"--compilation_cache={tmp_path / 'jaxcache'}",
        *extra,
    ]


@pytest.mark.slow
def test_two_processes_segment_a_folder_once_into_one_volumes_table(exported, tmp_path):
    _, model_dir, raw = exported
    src = sorted((raw / "imagesTs").glob("*.nii.gz"))[0]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(src, inputs / f"{name}.nii.gz")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device each
    two = tmp_path / "two"
    outs = run_processes(
        lambda flags: _sample(model_dir, inputs, two, tmp_path, *flags), cwd=tmp_path, env=env
    )
    # process 0 takes a and c, process 1 takes b: each file segmented by exactly one
    assert "2 of 2 segmented" in outs[0][0] and "process 1 of 2" in outs[0][0]
    assert "1 of 1 segmented" in outs[1][0] and "process 2 of 2" in outs[1][0]
    logged = [
        m for _, err in outs for m in re.findall(r"sample: \[\d+/\d+\] (\w+): \d+ windows", err)
    ]
    assert sorted(logged) == ["a", "b", "c"]
    assert not cohort.parts(two)  # merged and removed
    one = tmp_path / "one"
    proc = subprocess.run(
        _sample(model_dir, inputs, one, tmp_path),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _rows(two / "volumes.csv") == _rows(one / "volumes.csv")
    assert len(_rows(one / "volumes.csv")) == 3
    for name in ("a", "b", "c"):
        for kind in ("seg", "uncertainty"):
            got = np.asarray(nib.load(two / f"{name}_{kind}.nii.gz").dataobj)
            want = np.asarray(nib.load(one / f"{name}_{kind}.nii.gz").dataobj)
            np.testing.assert_array_equal(got, want)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


def test_an_evaluation_rerun_reuses_the_cases_it_recorded_with_the_same_settings(
    model, tmp_path, caplog
):
    from msseg.data import mni152
    from msseg.inference import evaluate, predict
    from msseg.inference import model as model_lib

    data = str(mni152.build(mni152.SynthConfig(counts=(0, 0, 2), spacing=4.0), tmp_path, workers=1))
    report = tmp_path / "report"
    opts = predict.Options(model_lib.sampler_config(model), batch=8)
    first = evaluate.evaluate_model(model, data, "test", report, opts, worst=0).summary
    records = sorted(p.name for p in (report / evaluate.RECORDS).iterdir())
    assert records == ["mni152_test_000.npz", "mni152_test_001.npz"]
    seg = names.segmentation(report / "samples", "mni152_test_001")
    stamp = seg.stat().st_mtime_ns

    caplog.set_level("INFO")
    again = evaluate.evaluate_model(model, data, "test", report, opts, worst=0).summary
    assert caplog.text.count("scored before, kept") == 2 and seg.stat().st_mtime_ns == stamp
    for key in ("case_dice", "levels", "calibration", "labels"):
        assert again[key] == first[key], key
    assert again["segmentation"]["cases"] == first["segmentation"]["cases"]  # recorded timing

    # a truncated record, or other settings: those cases are segmented again
    rec = report / evaluate.RECORDS / "mni152_test_000.npz"
    rec.write_bytes(rec.read_bytes()[:100])
    caplog.clear()
    evaluate.evaluate_model(model, data, "test", report, opts, worst=0)
    assert caplog.text.count("scored before, kept") == 1 and seg.stat().st_mtime_ns == stamp
    caplog.clear()
    other = dataclasses.replace(opts, overlap=0.25)
    evaluate.evaluate_model(model, data, "test", report, other, worst=0)
    assert "scored before" not in caplog.text and seg.stat().st_mtime_ns != stamp


@pytest.mark.slow
def test_two_processes_evaluate_a_split_into_one_report(exported, tmp_path):
    import json

    _, model_dir, raw = exported
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}

    def cmd(report, *extra):
        return [
            sys.executable,
            str(ROOT / "tools" / "evaluate.py"),
            f"--model={model_dir}",
            f"--data={raw}",
            "--split=train",  # 3 cases
            "--steps=2",
            "--worst=1",
            f"--output={report}",
            *extra,
        ]

    two = tmp_path / "two"
    outs = run_processes(lambda flags: cmd(two, *flags), cwd=tmp_path, env=env)
    assert "the first process writes" in outs[1][0] and "3 cases; report in" in outs[0][0]
    scored = [m for _, err in outs for m in re.findall(r"\] (\w+): mean leaf Dice", err)]
    assert len(scored) == 3 and len(set(scored)) == 3  # each case by exactly one process
    one = tmp_path / "one"
    proc = subprocess.run(cmd(one), cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (json.loads((r / "summary.json").read_text()) for r in (two, one))
    assert a["num_cases"] == 3 and a["case_dice"] == b["case_dice"]
    assert a["calibration"]["ece"] == b["calibration"]["ece"]
    assert (two / "metrics.csv").read_text() == (one / "metrics.csv").read_text()
    assert _rows(two / "samples" / "volumes.csv") == _rows(one / "samples" / "volumes.csv")


def test_an_evaluation_record_of_other_windows_or_a_later_depth_is_not_reused(model, tmp_path):
    from msseg.data import mni152
    from msseg.inference import evaluate, predict
    from msseg.inference import model as model_lib

    data = str(mni152.build(mni152.SynthConfig(counts=(0, 0, 1), spacing=4.0), tmp_path, workers=1))
    opts = predict.Options(model_lib.sampler_config(model), batch=8)

    def settings(o=opts, first=True):
        return evaluate._settings(model, data, "test", o, 0, first, "pooled")

    for other in (
        settings(dataclasses.replace(opts, batch=4)),  # other windows share a key
        settings(dataclasses.replace(opts, window="whole")),
        settings(first=False),  # a later depth's records hold no volumes row or preview
    ):
        assert other != settings()


def test_depths_0_1_then_1_0_into_one_report_redo_the_records_of_the_new_first(exported, tmp_path):
    from msseg.inference import evaluate, predict
    from msseg.inference import model as model_lib

    _, model_dir, raw = exported  # trained to enter at depths 0 and 1
    model, cfg = model_lib.open_model(model_dir, "exported", steps=2)
    opts, report = predict.Options(cfg), tmp_path / "report"
    evaluate.evaluate_model(model, str(raw), "test", report, opts, depths=(0, 1), worst=1)
    rep = evaluate.evaluate_model(model, str(raw), "test", report, opts, depths=(1, 0), worst=1)
    assert rep.summary["num_cases"] == 1 and rep.summary["entry_depths"] == [1, 0]
