"""The cache builder: a dataset preprocessed into arrays and a manifest, ready for training.

Per case: load image and label (canonical RAS+), check they share a grid, map raw label values
to protocol ids, run the image through `msseg.data.prepare.prepare_image` (resample, crop to the
head, normalise), resample the label to the same grid (`label_resample`) and crop it to the same
box, and keep up to `max_indices` voxel positions per label id for foreground-balanced patch
sampling. Arrays are written as .npy (memory-mappable) next to a manifest.json that records
shapes, spacings, affines, crop boxes, voxel counts per id, the dataset each case comes from and
the ids it declares, and sha256 checksums; a rerun skips every case whose sources, settings,
label table and files are unchanged. Several datasets (a comma-separated SPEC) share one cache
and one manifest.

manifest.json is written once, atomically, when every case is done: a cache with a manifest is
complete. While a run is under way (and after one that failed or was stopped) the records of the
cases done so far are in manifest.partial.json, which the next run picks up.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
from absl import logging

from msseg import files, io
from msseg import labels as labels_lib
from msseg.data import datasets
from msseg.data.datasets import Case, Dataset
from msseg.data.prepare import PreprocessConfig, check_spacing, prepare_image
from msseg.errors import InputError

FORMAT_VERSION = 1


PARTIAL = "manifest.partial.json"  # the records of an unfinished run


def cache_key(cfg: PreprocessConfig, protocol: labels_lib.Protocol) -> str:
    """The key of a cache's settings: a cache built with other settings or labels is stale."""
    blob = json.dumps([FORMAT_VERSION, dataclasses.asdict(cfg), protocol.to_json()], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def foreground_indices(ids: np.ndarray, max_per_id: int, seed: int) -> np.ndarray:
    """[N, 4] int16 rows (id, x, y, z): up to max_per_id random voxels per id but 0 and IGNORE."""
    rng = np.random.default_rng(seed)
    rows = []
    for value in np.unique(ids):
        if value in (0, labels_lib.IGNORE):
            continue
        pos = np.argwhere(ids == value)
        if len(pos) > max_per_id:
            pos = pos[np.sort(rng.choice(len(pos), max_per_id, replace=False))]
        rows.append(np.concatenate([np.full((len(pos), 1), value), pos], axis=1))
    return np.concatenate(rows).astype(np.int16) if rows else np.zeros((0, 4), np.int16)


def _save_npy(path: Path, array: np.ndarray) -> str:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    files.atomic_write(path, write)
    return files.sha256_file(path)


def case_key(key: str, case: Case) -> str:
    """The cache key of one case: the settings' `key`, plus its dataset's label table if any."""
    if case.codes is None:
        return key
    blob = json.dumps([key, [list(c) for c in case.codes]])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _origin(case: Case, protocol: labels_lib.Protocol) -> dict:
    """Manifest fields naming a case's dataset and the ids that dataset declares."""
    return {
        "dataset": case.dataset,
        "declared_ids": list(datasets.declared_ids(protocol, case.codes)),
    }


def _stat(path: str | None) -> dict | None:
    if path is None:
        return None
    st = os.stat(path)
    return {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def preprocess_case(
    case: Case, protocol: labels_lib.Protocol, cfg: PreprocessConfig, out: Path
) -> dict:
    """Writes one case's arrays into out/cases/ and returns its manifest record."""
    image = io.load_image(case.image)
    label = io.load_label(case.label)
    io.check_same_grid(image, label)
    codes = None if case.codes is None else dict(case.codes)
    ids = protocol.encode(label.data, path=case.label, codes=codes)
    prepared, _ = prepare_image(image, cfg)
    ids, _ = io.resample_label(
        ids, label.affine, cfg.spacing, mode=cfg.label_resample, shape=prepared.resampled_shape
    )
    ids = ids[tuple(slice(a, b) for a, b in prepared.box)].astype(np.uint8)
    seed = int(hashlib.sha256(case.case_id.encode()).hexdigest()[:8], 16)
    fg = foreground_indices(ids, cfg.max_indices, seed)
    stem = out / "cases" / case.case_id
    names = {"image": f"{stem}.image.npy", "label": f"{stem}.label.npy", "fg": f"{stem}.fg.npy"}
    sha = {
        k: _save_npy(Path(names[k]), a)
        for k, a in (("image", prepared.image), ("label", ids), ("fg", fg))
    }
    counts = np.bincount(ids.ravel(), minlength=256)
    return {
        "split": case.split,
        "files": {k: Path(v).relative_to(out).as_posix() for k, v in names.items()},
        "sha256": sha,
        "shape": list(prepared.image.shape),
        "spacing": [float(s) for s in cfg.spacing],
        "affine": prepared.affine.tolist(),
        "crop_box": [list(b) for b in prepared.box],
        "source_spacing": [float(s) for s in image.spacing],
        "source_shape": list(image.data.shape),
        "pad_value": float(prepared.image.min()),
        "voxel_counts": {str(i): int(counts[i]) for i in np.flatnonzero(counts)},
        "sources": {"image": _stat(case.image), "label": _stat(case.label)},
        **_origin(case, protocol),
    }


def _is_current(record: dict | None, case: Case, out: Path, key: str) -> bool:
    if not record or record.get("key") != key or record.get("split") != case.split:
        return False
    try:
        if record["sources"] != {"image": _stat(case.image), "label": _stat(case.label)}:
            return False
        return all(
            files.sha256_file(out / record["files"][k]) == v for k, v in record["sha256"].items()
        )
    except (OSError, KeyError):
        return False


def _old_records(out: Path) -> dict:
    """Case records of the last run: manifest.json's, updated by an unfinished run's."""
    records = {}
    for name in ("manifest.json", PARTIAL):
        try:
            records.update(json.loads((out / name).read_text()).get("cases", {}))
        except (OSError, ValueError, AttributeError):
            pass
    return records


def load_manifest(out: str | os.PathLike) -> dict:
    path = Path(out) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no preprocessed cache here (run tools/preprocess.py)")
    return json.loads(path.read_text())


def preprocess_dataset(
    dataset: Dataset,
    output: str | os.PathLike,
    cfg: PreprocessConfig | None = None,
    workers: int | None = None,
) -> dict:
    """Preprocesses every labelled case of `dataset` into `output`; returns the manifest.

    A combined dataset (several SPECs) gives one manifest; "dataset" and "root" hold the
    comma-joined names and roots, and each case record its own "dataset".
    """
    cfg = cfg or PreprocessConfig()
    out = files.make_output_dir(output)
    files.make_output_dir(out / "cases")
    key = cache_key(cfg, dataset.protocol)
    old = _old_records(out)
    manifest = {
        "version": FORMAT_VERSION,
        "dataset": dataset.name,
        "root": dataset.root,
        "protocol": dataset.protocol.to_json(),
        "config": dataclasses.asdict(cfg),
        "cases": {},
    }
    todo = []
    for case in dataset.cases:
        if case.label is None:
            continue  # unlabelled test images are for sample.py, not for training
        if _is_current(old.get(case.case_id), case, out, case_key(key, case)):
            manifest["cases"][case.case_id] = old[case.case_id] | _origin(case, dataset.protocol)
        else:
            todo.append(case)
    logging.info(
        "preprocess: %d cases current, %d to do -> %s", len(manifest["cases"]), len(todo), out
    )
    if todo:
        # Cases are about to be rewritten: until all are done, the cache has no manifest.json
        # (a stale or partial one would pass for a complete cache); progress goes to PARTIAL.
        files.write_json(out / PARTIAL, manifest)
        (out / "manifest.json").unlink(missing_ok=True)
    start, failures = time.time(), []
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = {pool.submit(preprocess_case, c, dataset.protocol, cfg, out): c for c in todo}
        for n, fut in enumerate(concurrent.futures.as_completed(futures), 1):
            case = futures[fut]
            try:
                record = fut.result()
            except InputError as e:  # go on with the others; report every bad file at the end
                failures.append(str(e))
                logging.error("preprocess: [%d/%d] %s failed: %s", n, len(todo), case.case_id, e)
                continue
            record["key"] = case_key(key, case)
            manifest["cases"][case.case_id] = record
            files.write_json(out / PARTIAL, manifest)
            eta = (time.time() - start) / n * (len(todo) - n)
            logging.info(
                "preprocess: [%d/%d] %s %s (eta %.0f s)",
                n,
                len(todo),
                case.case_id,
                record["shape"],
                eta,
            )
    if failures:
        raise InputError(
            None,
            f"{len(failures)} case(s) failed to preprocess (no manifest.json written; the "
            f"{len(manifest['cases'])} good ones are kept for the next run):\n  "
            + "\n  ".join(failures),
        )
    order = {c.case_id: i for i, c in enumerate(dataset.cases)}
    manifest["cases"] = dict(sorted(manifest["cases"].items(), key=lambda kv: order[kv[0]]))
    files.write_json(out / "manifest.json", manifest)
    (out / PARTIAL).unlink(missing_ok=True)
    return load_manifest(out)


def summarize(manifest: dict) -> str:
    """A plain-text summary: cases per split (and per dataset, if several), array shapes, mean
    label volumes (mL) per id."""
    protocol = labels_lib.Protocol.from_json(manifest["protocol"])
    names = protocol.id_names()
    cases = manifest["cases"]
    spacing = "x".join(f"{s:g}" for s in manifest["config"]["spacing"])
    head = f"dataset {manifest['dataset']} ({len(cases)} cases, protocol {protocol.name}"
    lines = [f"{head}, {spacing} mm)"]
    for split in ("train", "val", "test"):
        recs = [r for r in cases.values() if r["split"] == split]
        if recs:
            shapes = np.array([r["shape"] for r in recs])
            lines.append(
                f"  {split:5s}: {len(recs):3d} cases, shapes {shapes.min(0).tolist()}"
                f"..{shapes.max(0).tolist()}"
            )
    sources = [r.get("dataset", "") for r in cases.values()]
    if len(set(sources)) > 1:
        for name in dict.fromkeys(sources):
            lines.append(f"  from {name}: {sources.count(name)} cases")
    lines.append(f"  {'label':<32s} {'mean mL':>9s} {'cases':>6s}")
    for i in sorted({int(k) for r in cases.values() for k in r["voxel_counts"]}):
        vols = [
            r["voxel_counts"].get(str(i), 0) * np.prod(r["spacing"]) / 1000 for r in cases.values()
        ]
        name = names[i] if i < len(names) else ("ignore" if i == labels_lib.IGNORE else str(i))
        lines.append(f"  {name:<32s} {np.mean(vols):9.1f} {sum(v > 0 for v in vols):6d}")
    return "\n".join(lines)


def median_spacing(dataset: Dataset) -> tuple[float, float, float]:
    """The median voxel size (mm, canonical axis order) of the dataset's labelled images."""
    import nibabel as nib

    spacings = []
    for case in dataset.cases:
        if case.label is None:
            continue
        affine = nib.load(case.image).affine
        ornt = nib.orientations.io_orientation(affine)
        zooms = np.linalg.norm(affine[:3, :3], axis=0)
        spacings.append(zooms[np.argsort(ornt[:, 0])])
    return tuple(float(s) for s in np.median(spacings, axis=0))


def run(
    spec: str,
    output: str | os.PathLike,
    *,
    spacing: tuple[float, float, float] | None = None,
    protocol: str | None = None,
    cache: str | os.PathLike | None = None,
    workers: int | None = None,
    val_fraction: float = 0.2,
    margin_mm: float = PreprocessConfig.margin_mm,
) -> dict:
    """SPEC → preprocessed cache at `output` (tools/preprocess.py). Returns the manifest.

    spec: one SPEC, or several joined by commas (one cache; see `datasets.resolve`).
    spacing: target voxel size in mm; default 2 mm when every SPEC is an embedded set, else the
      median over all datasets' labelled images.
    """
    if spacing is not None:  # settings and the output folder first: before any dataset work
        PreprocessConfig(spacing=check_spacing(spacing), margin_mm=margin_mm)
    files.make_output_dir(output)
    dataset = datasets.resolve(spec, protocol=protocol, val_fraction=val_fraction, cache=cache)
    if spacing is None:
        every_mni = all(s in datasets.EMBEDDED for s in datasets.split_spec(spec))
        spacing = (2.0, 2.0, 2.0) if every_mni else median_spacing(dataset)
    cfg = PreprocessConfig(spacing=check_spacing(spacing), margin_mm=margin_mm)
    return preprocess_dataset(dataset, output, cfg, workers)
