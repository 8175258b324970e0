"""The lean install (requirements/sample.txt): tools/sample.py on the exported route runs with
msseg's training dependencies made unimportable (flax, optax, orbax, grain, ml_collections,
nilearn, tensorstore, chex), so a node that only segments needs that file's seven packages and
msseg (`pip install --no-deps`). A run in a venv holding exactly those packages is recorded in
docs/install.md."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("flax", "optax", "orbax", "grain", "ml_collections", "nilearn", "tensorstore", "chex")

RUNNER = """
import importlib.abc, json, runpy, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"blocked for the lean-install test: {{name}}")
        return None

sys.meta_path.insert(0, Block())
sys.argv = ["sample.py"] + sys.argv[1:]
try:
    runpy.run_path({sample!r}, run_name="__main__")
except SystemExit as e:
    code = e.code
else:
    code = 0
mods = sorted({{m.split(".")[0] for m in sys.modules}})
open({out!r}, "w").write(json.dumps({{"code": code, "mods": mods}}))
"""


def listed() -> set[str]:
    names = set()
    for line in (ROOT / "requirements" / "sample.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[<>=!~ \[]", line)[0].lower())
    return names


@pytest.mark.slow
def test_sample_on_the_exported_route_imports_only_the_lean_requirements(exported, tmp_path):
    _, model_dir, raw = exported
    scan = sorted((raw / "imagesTs").glob("*.nii.gz"))[0]
    out = tmp_path / "mods.json"
    code = RUNNER.format(blocked=BLOCKED, sample=str(ROOT / "tools" / "sample.py"), out=str(out))
    subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            f"--model={model_dir}",
            f"--input={scan}",
            f"--output={tmp_path / 'seg'}",
            "--route=exported",
            "--compilation_cache=",
        ],
        check=True,
        cwd=tmp_path,
    )
    got = json.loads(out.read_text())
    assert got["code"] in (0, None), got
    assert list((tmp_path / "seg").glob("*_seg.nii.gz")), "nothing segmented"
    assert list((tmp_path / "seg").glob("*_qc.png")), "the QC picture (matplotlib) is written"
    assert not set(BLOCKED) & set(got["mods"])
    assert {"jax", "numpy", "nibabel", "scipy", "matplotlib", "absl", "flatbuffers"} <= set(
        got["mods"]
    ), "requirements/sample.txt lists a package sample.py does not use"


def test_the_lean_requirements_follow_the_projects_pins():
    text = (ROOT / "pyproject.toml").read_text()
    for name in listed():
        spec = next(
            line.strip().strip('",')
            for line in text.splitlines()
            if re.match(rf'\s*"{re.escape(name)}[<>=]', line)
        )
        assert f"{spec}" in (ROOT / "requirements" / "sample.txt").read_text(), spec
