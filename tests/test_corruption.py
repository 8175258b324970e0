"""Random corruptions thrown at a copy of a model directory and at a batch of inputs.

Property: no outcome is a traceback, a silent success with garbage, or a lost file. Every
corrupted model is refused with an InputError naming a file of that model (each of its files
is checksummed); every corrupted input is either refused with a message naming it (the batch
goes on, the case's earlier outputs stay byte-identical) or, where the damage leaves a valid
scan (a flipped data bit), segmented into a valid label map. A user's file in the output
folder is never touched. The seeds are fixed; MSSEG_CORRUPTION_TRIALS raises the count.
"""

import gzip
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from msseg import names
from msseg.errors import InputError

TRIALS = int(os.environ.get("MSSEG_CORRUPTION_TRIALS", "24"))


# ------------------------------------------------------------------ model corruptions


def _flip_bit(data: bytes, rng) -> bytes:
    i = int(rng.integers(len(data)))
    return data[:i] + bytes([data[i] ^ (1 << int(rng.integers(8)))]) + data[i + 1 :]


def _edit_json(text: str, rng) -> str:
    """One random edit of a JSON document: a leaf changed or removed."""
    doc = json.loads(text)
    paths = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, (*path, k))
        elif isinstance(node, list) and node:
            for i, v in enumerate(node):
                walk(v, (*path, i))
        else:
            paths.append(path)

    walk(doc, ())
    path = paths[int(rng.integers(len(paths)))]
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    value = parent[path[-1]]
    if rng.random() < 0.3 and isinstance(parent, dict):
        del parent[path[-1]]
    elif isinstance(value, bool) or value is None:
        parent[path[-1]] = not value
    elif isinstance(value, (int, float)):
        parent[path[-1]] = [value * 2 + 1, -value, 0, 1e9][int(rng.integers(4))]
    else:
        parent[path[-1]] = str(value)[::-1] + "x"
    return json.dumps(doc)


def _corrupt_model(src: Path, dst: Path, rng) -> str:
    """A copy of model `src` at `dst` with one random corruption; returns its description."""
    shutil.copytree(src, dst)
    files = sorted(p.name for p in dst.iterdir())
    name = files[int(rng.integers(len(files)))]
    path = dst / name
    data = path.read_bytes()
    kinds = ["truncate", "bitflip", "delete", "append"]
    if name.endswith(".json"):
        kinds += ["json_edit", "json_edit", "not_json"]
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "truncate":
        path.write_bytes(data[: int(rng.integers(len(data)))])
    elif kind == "bitflip":
        path.write_bytes(_flip_bit(data, rng))
    elif kind == "delete":
        path.unlink()
    elif kind == "append":
        path.write_bytes(data + rng.bytes(int(rng.integers(1, 64))))
    elif kind == "json_edit":
        path.write_text(_edit_json(data.decode(), rng))
    else:
        path.write_bytes(b"{\x00garbage")
    return f"{kind} {name}"


@pytest.mark.slow
def test_corrupted_model_directories_are_refused_by_name(exported, tmp_path):
    from msseg.inference import model as model_lib

    _, model_dir, _ = exported
    rng = np.random.default_rng(0)
    outcomes = Counter()
    for i in range(TRIALS):
        copy = tmp_path / f"m{i}"
        what = _corrupt_model(model_dir, copy, rng)
        if all(
            (copy / p.name).is_file() and (copy / p.name).read_bytes() == p.read_bytes()
            for p in model_dir.iterdir()
        ):
            outcomes["no change"] += 1
            continue
        try:
            model_lib.open_model(copy, "exported")
        except InputError as e:
            assert e.path is not None and Path(e.path).is_relative_to(copy), (what, e)
            outcomes[f"refused: {what.split()[0]}"] += 1
            continue
        pytest.fail(f"{what}: the corrupted model loaded")
    print("model corruptions:", dict(outcomes))
    assert sum(v for k, v in outcomes.items() if k.startswith("refused")) >= TRIALS * 3 // 4


# ------------------------------------------------------------------ input corruptions


def _header_edit(img: nib.Nifti1Image, rng) -> tuple[nib.Nifti1Image, str]:
    """A copy of `img` whose header (or data) is made unusable in one of several ways."""
    data = np.asarray(img.dataobj, np.float32)
    affine = img.affine.copy()
    kind = [
        "constant",
        "nan",
        "complex",
        "4d",
        "flat_2d",
        "nan_slope",
    ][int(rng.integers(6))]
    if kind == "constant":
        return nib.Nifti1Image(np.full_like(data, float(rng.normal())), affine), kind
    if kind == "nan":
        data = data.copy()
        data.flat[rng.integers(data.size, size=5)] = np.nan
        return nib.Nifti1Image(data, affine), kind
    if kind == "complex":
        return nib.Nifti1Image(data.astype(np.complex64), affine), kind
    if kind == "4d":
        return nib.Nifti1Image(np.stack([data, data], -1), affine), kind
    if kind == "flat_2d":
        return nib.Nifti1Image(data[:, :, 0], affine), kind
    out = nib.Nifti1Image(data, affine)
    out.header["scl_slope"] = np.nan
    return out, kind


def _corrupt_input(src: Path, dst: Path, rng) -> str:
    """`dst` (a .nii or .nii.gz name): a corrupted copy of the image `src`."""
    raw = gzip.decompress(src.read_bytes())  # the uncompressed .nii
    kinds = ["truncate", "bitflip_header", "bitflip_data", "header_edit", "garbage", "empty"]
    kind = [*kinds, "nan_affine", "zero_spacing"][int(rng.integers(8))]
    if kind in ("nan_affine", "zero_spacing"):  # nibabel builds no such image: patch bytes
        header = bytearray(raw)
        header[252:256] = np.array([0, 1], "<i2").tobytes()  # qform_code 0, sform_code 1
        j = int(rng.integers(3))
        rows = range(3) if kind == "zero_spacing" else [int(rng.integers(3))]
        for i in rows:  # srow_x/y/z[j]: a NaN entry, or a whole zero column (no spacing)
            at = 280 + 16 * i + 4 * j
            header[at : at + 4] = np.array([np.nan if kind == "nan_affine" else 0], "<f4").tobytes()
        data = bytes(header)
    elif kind == "truncate":
        data = raw[: int(rng.integers(1, len(raw)))]
    elif kind == "bitflip_header":
        i = int(rng.integers(348))
        data = raw[:i] + bytes([raw[i] ^ (1 << int(rng.integers(8)))]) + raw[i + 1 :]
    elif kind == "bitflip_data":
        data = _flip_bit(raw[352:], rng)
        data = raw[:352] + data
    elif kind == "header_edit":
        img, what = _header_edit(nib.load(src), rng)
        nib.save(img, dst)
        return f"header_edit:{what}"
    elif kind == "garbage":
        data = rng.bytes(int(rng.integers(1, 4096)))
    else:
        data = b""
    if dst.name.endswith(".gz"):
        data = gzip.compress(data)
        if kind == "truncate" and rng.random() < 0.5:  # a truncated gzip stream instead
            data = gzip.compress(raw)[: int(rng.integers(1, len(data)))]
    dst.write_bytes(data)
    return kind


@pytest.mark.slow
def test_a_batch_of_corrupted_inputs_is_never_a_traceback_garbage_or_a_lost_file(
    exported, tmp_path
):
    from msseg import io
    from msseg.inference import cohort, predict
    from msseg.inference import model as model_lib

    _, model_dir, raw = exported
    src = sorted((raw / "imagesTs").glob("*.nii.gz"))[0]
    model, cfg = model_lib.open_model(model_dir, "exported", steps=2)
    opts = predict.Options(cfg, batch=4)
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    cases = [f"case{i:03d}" + (".nii.gz" if i % 2 else ".nii") for i in range(TRIALS)]
    for name in cases:  # first, good copies: every case has earlier outputs
        nib.save(nib.load(src), inputs / name)
    r = cohort.run(model, sorted(inputs.iterdir()), out, opts)
    done, failures = r.done, r.failures
    assert len(done) == TRIALS and not failures
    (out / "notes.txt").write_text("the user's own file")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    rng = np.random.default_rng(1)
    kinds = {}
    for name in cases:
        (inputs / name).unlink()
        kinds[names.stem(name)] = _corrupt_input(src, inputs / name, rng)
    r = cohort.run(model, sorted(inputs.iterdir()), out, opts)  # no raise
    done, failures = r.done, r.failures

    outcomes = Counter()
    failed = {names.stem(p): msg for p, msg in failures}
    for case, kind in kinds.items():
        if case in failed:
            msg = failed[case]
            assert msg.startswith("InputError") and case in msg, (kind, msg)
            for suffix in ("_seg.nii.gz", "_uncertainty.nii.gz", "_qc.png"):
                name = case + suffix
                assert (out / name).read_bytes() == before[name], (kind, name)
            outcomes[f"refused: {kind}"] += 1
        else:  # segmented: the damage left a usable scan; the outputs must be sane
            image = nib.load(next(inputs.glob(case + ".nii*")))
            seg = nib.load(out / f"{case}_seg.nii.gz")
            assert seg.shape == image.shape[:3], kind
            codes = set(np.unique(np.asarray(seg.dataobj)).tolist())
            assert codes <= set(model.protocol.decode(np.arange(model.num_classes)).tolist())
            unc = np.asarray(nib.load(out / f"{case}_uncertainty.nii.gz").dataobj)
            assert np.isfinite(unc).all() and unc.min() >= 0, kind
            io.load_image(next(inputs.glob(case + ".nii*")))  # it really is a valid scan
            outcomes[f"segmented: {kind}"] += 1
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp files
    for name in before:
        assert (out / name).exists(), f"{name} was removed"
    print("input corruptions:", dict(sorted(outcomes.items())))
    assert sum(v for k, v in outcomes.items() if k.startswith("refused")) >= TRIALS // 2
