"""Preprocess a dataset into a cache of arrays: resample, crop, normalise, remap labels, index.

Per case: load image and label (canonical RAS+), check they share a grid, map raw label
values to protocol ids, resample to the target spacing (image linear; labels by
`label_resample`), find the head with an Otsu threshold, crop to its box plus a margin,
clip intensities to percentiles inside the head and scale them to zero mean / unit std
there, and keep up to `max_indices` voxel positions per label id for foreground-balanced
patch sampling. Arrays are written as .npy (memory-mappable) next to a manifest.json that
records shapes, spacings, affines, crop boxes, voxel counts per id, the dataset each case
comes from and the ids it declares, and sha256 checksums; a rerun skips every case whose
sources, settings, label table and files are unchanged. Several datasets (a comma-separated
SPEC) share one cache and one manifest.

manifest.json is written once, atomically, when every case is done: a cache with a manifest
is complete. While a run is under way (and after one that failed or was stopped) the records
of the cases done so far are in manifest.partial.json, which the next run picks up.

`prepare_image` is the image half of this, shared with inference, so a scan is seen by the
model exactly as the training cases were.
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
from scipy import ndimage

from msseg import files, io
from msseg import labels as labels_lib
from msseg.data import datasets
from msseg.data.datasets import Case, Dataset
from msseg.errors import InputError

FORMAT_VERSION = 1


PARTIAL = "manifest.partial.json"  # the records of an unfinished run


def check_spacing(spacing) -> tuple[float, float, float]:
    """Three finite voxel sizes > 0 (mm) as floats; ValueError otherwise."""
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be three numbers (mm), got {spacing!r}") from None
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be three finite sizes > 0 (mm), got {spacing!r}")
    return values


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)  # mm
    margin_mm: float = 10.0  # kept around the head box
    clip_percentiles: tuple[float, float] = (0.5, 99.5)  # inside the head
    label_resample: str = "onehot"  # "onehot" (linear on one-hot, argmax) or "nearest"
    max_indices: int = 10_000  # voxel positions kept per label id for patch sampling

    def __post_init__(self):
        check_spacing(self.spacing)
        if not (np.isfinite(self.margin_mm) and self.margin_mm >= 0):
            raise ValueError(f"margin_mm must be a finite number >= 0, got {self.margin_mm}")

    def key(self, protocol: labels_lib.Protocol) -> str:
        blob = json.dumps(
            [FORMAT_VERSION, dataclasses.asdict(self), protocol.to_json()], sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Prepared:
    """An image as the model sees it, and how to get back to the source grid."""

    image: np.ndarray  # [X, Y, Z] float32, normalised, cropped
    affine: np.ndarray  # 4x4 voxel->world of `image`
    box: tuple[tuple[int, int], ...]  # crop box (lo, hi) per axis in the resampled grid
    resampled_shape: tuple[int, int, int]
    resampled_affine: np.ndarray


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1D sample (maximises the between-class variance)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])  # upper edge of the lower class


def head_mask(image: np.ndarray) -> np.ndarray:
    """[X, Y, Z] bool: the largest bright component above the Otsu threshold, holes filled."""
    top = np.percentile(image, 99.9)
    mask = image > otsu_threshold(np.minimum(image, top).ravel())
    components, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        mask = components == int(np.argmax(sizes))
    return ndimage.binary_fill_holes(mask)


def crop_box(mask: np.ndarray, margin: np.ndarray) -> tuple[tuple[int, int], ...]:
    """(lo, hi) per axis: the mask's bounding box grown by `margin` voxels, inside the volume."""
    if not mask.any():
        return tuple((0, n) for n in mask.shape)
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + 1 + margin, mask.shape)
    return tuple((int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def normalize(image: np.ndarray, mask: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Clip to percentiles inside `mask`, then zero mean / unit std inside `mask`."""
    inside = image[mask] if mask.any() else image.ravel()
    lo, hi = np.percentile(inside, percentiles)
    clipped = np.clip(image, lo, hi)
    inside = np.clip(inside, lo, hi)
    return ((clipped - inside.mean()) / max(float(inside.std()), 1e-6)).astype(np.float32)


def prepare_image(volume: io.Volume, cfg: PreprocessConfig) -> tuple[Prepared, np.ndarray]:
    """Resample, crop and normalise an image; also returns the head mask of the cropped grid."""
    data, affine = io.resample(volume.data, volume.affine, cfg.spacing, order=1)
    mask = head_mask(data)
    box = crop_box(mask, np.ceil(cfg.margin_mm / np.asarray(cfg.spacing)).astype(int))
    sl = tuple(slice(a, b) for a, b in box)
    shift = np.eye(4)
    shift[:3, 3] = [a for a, _ in box]
    image = normalize(data[sl], mask[sl], cfg.clip_percentiles)
    prepared = Prepared(image, affine @ shift, box, tuple(data.shape), affine)
    return prepared, mask[sl]


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
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)
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


def _write_manifest(path: Path, manifest: dict) -> None:
    text = json.dumps(manifest, indent=1)
    files.atomic_write(path, lambda tmp: Path(tmp).write_text(text))


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
    cfg: PreprocessConfig = PreprocessConfig(),
    workers: int | None = None,
) -> dict:
    """Preprocesses every labelled case of `dataset` into `output`; returns the manifest.

    A combined dataset (several SPECs) gives one manifest; "dataset" and "root" hold the
    comma-joined names and roots, and each case record its own "dataset".
    """
    out = files.make_output_dir(output)
    files.make_output_dir(out / "cases")
    key = cfg.key(dataset.protocol)
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
        _write_manifest(out / PARTIAL, manifest)
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
            _write_manifest(out / PARTIAL, manifest)
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
    _write_manifest(out / "manifest.json", manifest)
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
    import nibabel as nib  # noqa: PLC0415

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
    spacing: target voxel size in mm; default 2 mm when every SPEC is `mni152`, else the
      median over all datasets' labelled images.
    """
    if spacing is not None:  # settings and the output folder first: before any dataset work
        PreprocessConfig(spacing=check_spacing(spacing), margin_mm=margin_mm)
    files.make_output_dir(output)
    dataset = datasets.resolve(spec, protocol=protocol, val_fraction=val_fraction, cache=cache)
    if spacing is None:
        every_mni = all(s == "mni152" for s in datasets.split_spec(spec))
        spacing = (2.0, 2.0, 2.0) if every_mni else median_spacing(dataset)
    cfg = PreprocessConfig(spacing=check_spacing(spacing), margin_mm=margin_mm)
    return preprocess_dataset(dataset, output, cfg, workers)
