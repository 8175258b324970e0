"""Reruns the reproductions of "nothing lost, nothing silent" against the CLI tools.

  python experiments/2026-11-30_nothing_lost/repro.py [--work=/tmp/nothing_lost]

Builds a tiny embedded set (3/1/1 subjects at 4 mm), trains configs/tiny.py for 3 steps and
exports it (a few minutes on 2 cores), then runs each probe as the user would, through
tools/*.py, and prints one line per probe: the exit code, the first line of the message,
whether a traceback was printed, and whether the files that must survive did. Exits 1 if
any probe misbehaves.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
results = []


def tool(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([PY, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env)


def message(p: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (p.stderr + p.stdout).splitlines() if ln.strip()]
    mine = [ln for ln in lines if ln.split(":")[0].endswith(".py") or "FAILED" in ln]
    return (mine or lines or [""])[-1]


def probe(name: str, p: subprocess.CompletedProcess, want_fail: bool, kept=(), expect="") -> None:
    tb = "Traceback" in p.stderr or "Traceback" in p.stdout
    survived = all(check() for check in kept)
    msg = message(p)
    ok = (p.returncode != 0) == want_fail and not tb and survived and expect in msg
    results.append(ok)
    print(
        f"{'ok ' if ok else 'BAD'} {name}: exit {p.returncode}, traceback {tb}, files kept "
        f"{survived} | {msg[:200]}"
    )


def same(path: Path, data: bytes):
    return lambda: path.is_file() and path.read_bytes() == data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/nothing_lost")
    work = Path(ap.parse_args().work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from msseg.data import mni152

    raw = mni152.build(mni152.SynthConfig(counts=(3, 1, 1), spacing=4.0), cache=work / "set")
    cfg = ROOT / "configs" / "tiny.py"
    run, model = work / "run", work / "model"
    common = [f"--config={cfg}", f"--config.data.spec={raw}", f"--workdir={run}"]
    p = tool("tools/train.py", *common, "--config.train.steps=0")
    probe("8 train.steps=0 refused before preprocessing", p, True, [lambda: not run.exists()])
    p = tool(
        "tools/train.py", *common, "--config.train.steps=3", "--config.train.checkpoint_every=3"
    )
    assert p.returncode == 0, p.stderr[-2000:]
    p = tool("tools/export.py", f"--workdir={run}", f"--output={model}")
    assert p.returncode == 0, p.stderr[-2000:]
    image = sorted((raw / "imagesTs").glob("*.nii.gz"))[0]

    # 1. export never deletes what it did not write
    d = work / "d"
    d.mkdir()
    (d / "notes.txt").write_text("precious")
    (d / "metadata.json").write_text('{"author": "me"}')
    p = tool("tools/export.py", f"--workdir={run}", f"--output={d}")
    probe(
        "1 export into a folder with a foreign metadata.json",
        p,
        True,
        [same(d / "notes.txt", b"precious")],
        "not an msseg model directory",
    )
    (model / "NOTES.md").write_text("mine")
    p = tool("tools/export.py", f"--workdir={run}", f"--output={model}")
    probe(
        "1 re-export keeps a NOTES.md added to the model",
        p,
        False,
        [same(model / "NOTES.md", b"mine")],
    )

    # 2. a failed rerun keeps the earlier outputs
    inp, out = work / "in", work / "out"
    inp.mkdir()
    shutil.copy(image, inp / "scan.nii.gz")
    p = tool("tools/sample.py", f"--model={model}", f"--input={inp}", f"--output={out}")
    assert p.returncode == 0, p.stderr[-2000:]
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    data = (inp / "scan.nii.gz").read_bytes()
    (inp / "scan.nii.gz").write_bytes(data[: len(data) // 2])
    p = tool("tools/sample.py", f"--model={model}", f"--input={inp}", f"--output={out}")
    probe(
        "2 failed rerun (truncated input) into the same folder",
        p,
        True,
        [same(out / n, b) for n, b in before.items()],
        "scan",
    )
    (inp / "scan.nii.gz").write_bytes(data)

    # 3. volumes.csv of another protocol
    out3 = work / "out3"
    out3.mkdir()
    (out3 / "volumes.csv").write_text("case,left,right\nold,1,2\n")
    p = tool("tools/sample.py", f"--model={model}", f"--input={inp}", f"--output={out3}")
    probe(
        "3 volumes.csv with other columns",
        p,
        True,
        [same(out3 / "volumes.csv", b"case,left,right\nold,1,2\n")],
        "volumes.csv",
    )

    # 4. garbage inputs and settings
    img = nib.load(image)
    zero = work / "zero"
    zero.mkdir()
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine), zero / "z.nii.gz")
    p = tool("tools/sample.py", f"--model={model}", f"--input={zero}", f"--output={work / 'o4'}")
    probe("4 all-zero image", p, True, [], "constant")
    cplx = work / "cplx"
    cplx.mkdir()
    data_c = np.asarray(img.dataobj, np.float32).astype(np.complex64)
    nib.save(nib.Nifti1Image(data_c, img.affine), cplx / "c.nii.gz")
    p = tool("tools/sample.py", f"--model={model}", f"--input={cplx}", f"--output={work / 'o4'}")
    probe("4 complex-valued image", p, True, [], "complex")
    for flags, expect in [
        (["--eta=nan"], "eta"),
        (["--eta=-1"], "eta"),
        (["--sampler=ddpm", "--steps=3"], "--steps"),
        (["--sampler=multiscale", "--steps=3"], "--steps"),
    ]:
        p = tool(
            "tools/sample.py",
            f"--model={model}",
            f"--input={inp}",
            f"--output={work / 'o4'}",
            *flags,
        )
        probe(f"4 sample.py {' '.join(flags)}", p, True, [], expect)

    # 5. metadata.json is checksummed
    for key, value in [("preprocess.spacing", [3.0, 3.0, 3.0]), ("model.num_classes", 9)]:
        copy = work / f"m5_{key}"
        shutil.copytree(model, copy)
        meta = json.loads((copy / "metadata.json").read_text())
        section, field = key.split(".")
        meta[section][field] = value
        (copy / "metadata.json").write_text(json.dumps(meta))
        p = tool("tools/sample.py", f"--model={copy}", f"--input={inp}", f"--output={work / 'o5'}")
        probe(f"5 edited {key} in metadata.json", p, True, [], "metadata.json")

    # 6. unusable output paths, bad spacing, a header claiming 5000^3 voxels
    blocker = work / "plain.txt"
    blocker.write_text("a file")
    bad_out = blocker / "out"
    p = tool("tools/sample.py", f"--model={model}", f"--input={inp}", f"--output={bad_out}")
    probe("6 sample.py --output under a file", p, True, [same(blocker, b"a file")], "plain.txt")
    p = tool("tools/evaluate.py", f"--model={model}", f"--data={raw}", f"--output={bad_out}")
    probe("6 evaluate.py --output under a file", p, True, [same(blocker, b"a file")], "plain.txt")
    p = tool("tools/preprocess.py", f"--data={raw}", f"--output={bad_out}")
    probe("6 preprocess.py --output under a file", p, True, [same(blocker, b"a file")], "plain.txt")
    p = tool("tools/export.py", f"--workdir={run}", f"--output={bad_out}")
    probe("6 export.py --output under a file", p, True, [same(blocker, b"a file")], "plain.txt")
    p = tool("tools/train.py", f"--config={cfg}", f"--workdir={bad_out}")
    probe("6 train.py --workdir under a file", p, True, [same(blocker, b"a file")], "plain.txt")
    p = tool("tools/benchmark.py", f"--output={bad_out}/b.json")
    probe("6 benchmark.py --output under a file", p, True, [same(blocker, b"a file")], "plain.txt")
    cache6 = work / "cache6"
    p = tool("tools/preprocess.py", f"--data={raw}", f"--output={cache6}", "--spacing=-2")
    probe(
        "6 preprocess.py --spacing=-2",
        p,
        True,
        [lambda: not (cache6 / "manifest.json").exists()],
        "spacing",
    )
    huge = work / "huge"
    huge.mkdir()
    small = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4))
    nib.save(small, huge / "h.nii")
    header = nib.Nifti1Header.from_header(small.header)
    header.set_data_shape((5000, 5000, 5000))
    raw_bytes = (huge / "h.nii").read_bytes()
    (huge / "h.nii").write_bytes(header.binaryblock + raw_bytes[348:])
    p = tool("tools/sample.py", f"--model={model}", f"--input={huge}", f"--output={work / 'o6'}")
    probe("6 header claiming 5000^3 voxels", p, True, [], "GiB")

    print(f"\n{sum(results)} of {len(results)} probes behaved")
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
