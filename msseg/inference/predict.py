"""Segment NIfTI files with a model directory: training preprocessing, windows, native space.

Per input file: load (canonical RAS+), `prepare_image` (resample to the model's spacing,
crop the head, normalise: the training preprocessing), pad to the window, segment every
window (one jitted call per batch of windows, ensembles inside), blend with Gaussian
weights, then map the blended leaf probabilities back onto the input's own grid (linear
interpolation of each leaf's probability with a running argmax, background outside the
crop) and write:

- `<name>_seg.nii.gz`: raw label codes on the input's grid and affine;
- `<name>_uncertainty.nii.gz`: predictive entropy (nats) of the fused probabilities;
- `<name>_qc.png`: three mid slices with the segmentation over the image;
- one row of `volumes.csv`: mm³ per leaf and per tree node / named set.
Every file is written atomically (io.save_* and io.atomic_write).
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io as _io
import os
import time
import zlib
from pathlib import Path

import jax
import numpy as np
from absl import logging

from msseg import io
from msseg.data import datasets
from msseg.data.preprocess import prepare_image
from msseg.diffusion import samplers
from msseg.diffusion import segment as seg
from msseg.errors import InputError
from msseg.inference import model as model_lib
from msseg.inference import window


@dataclasses.dataclass(frozen=True)
class Options:
    sampler: seg.SamplerConfig
    seed: int = 0
    overlap: float = 0.5
    batch: int = 1  # windows per compiled call (the ensemble multiplies it)
    depth: int = 0  # enter at this depth: the input is resampled to spacing * 2^depth


@dataclasses.dataclass(frozen=True)
class Result:
    name: str
    labels: np.ndarray  # [X, Y, Z] leaf ids on the input's canonical grid
    entropy: np.ndarray  # [X, Y, Z] float32 on the input's canonical grid
    volume: io.Volume
    seconds: float
    windows: int


def output_name(path: str | os.PathLike) -> str:
    """The name outputs are written under: the file name without its NIfTI/MGZ suffix."""
    return datasets.case_id_of(path)


def file_key(key: jax.Array, name: str) -> jax.Array:
    """The key of input `name`: the same file gets the same noise whatever else is in the batch."""
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


class Segmenter:
    """A model plus sampler options; compiles one batched call per window shape.

    Settings are checked here, before any file is read: the entry depths the sampler needs,
    the overlap, and the DDIM steps against the schedule.
    """

    def __init__(self, model: model_lib.LoadedModel, opts: Options):
        if not 0 <= opts.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {opts.overlap}")
        if opts.batch < 1:
            raise ValueError(f"batch must be >= 1, got {opts.batch}")
        if model.diffusion and opts.sampler.kind == "ddim":
            samplers.chain_timesteps("ddim", model.schedule.num_timesteps, opts.sampler.steps)
        self.model, self.opts = model, opts
        self.fn = model_lib.segment_batch(model, opts.sampler, opts.depth)
        self.patch = tuple(p // 2**opts.depth for p in model.patch)

    def segment_array(self, image: np.ndarray, key: jax.Array) -> tuple[np.ndarray, ...]:
        """Prepared image [X, Y, Z] → (probs [X, Y, Z, K], entropy [X, Y, Z], windows).

        probs are the fused probabilities (the ensemble mean, or vote shares for "vote")
        blended over windows; entropy is theirs, in nats."""
        k, b = self.model.num_classes, self.opts.batch
        padded, crop = window.pad_to(image, self.patch, float(image.min()))
        starts = window.window_starts(padded.shape, self.patch, self.opts.overlap)
        blender = window.Blender(padded.shape, self.patch, k)
        for i in range(0, len(starts), b):
            chunk = starts[i : i + b]
            batch = np.stack(
                [
                    padded[tuple(slice(s, s + p) for s, p in zip(st, self.patch, strict=True))]
                    for st in chunk + [chunk[-1]] * (b - len(chunk))
                ]
            )[..., None]
            out = self.fn(self.model.params, batch, jax.random.fold_in(key, i))
            probs = np.asarray(out["probs"])
            for j, st in enumerate(chunk):
                blender.add(st, probs[j])
        probs = blender.result()[crop]
        probs = probs / np.maximum(probs.sum(-1, keepdims=True), 1e-12)
        entropy = -(probs * np.log(np.maximum(probs, 1e-12))).sum(-1)
        return probs, entropy.astype(np.float32), len(starts)

    def segment_volume(self, volume: io.Volume, key: jax.Array) -> Result:
        """A loaded image → its segmentation on the image's canonical grid."""
        start = time.perf_counter()
        cfg = self.model.preprocess
        if self.opts.depth:
            cfg = dataclasses.replace(
                cfg, spacing=tuple(s * 2**self.opts.depth for s in cfg.spacing)
            )
        prepared, _ = prepare_image(volume, cfg)
        probs, entropy, n = self.segment_array(prepared.image, key)
        labels, ent = to_native(probs, entropy, prepared, volume)
        name = output_name(volume.path)
        return Result(name, labels, ent, volume, time.perf_counter() - start, n)

    def segment_file(self, path: str | os.PathLike, key: jax.Array) -> Result:
        """Loads and segments `path` with `file_key(key, its name)`."""
        return self.segment_volume(io.load_image(path), file_key(key, output_name(path)))


def to_native(probs, entropy, prepared, volume: io.Volume) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities [X', Y', Z', K] and entropy on the cropped model grid → (leaf ids, entropy)
    on the volume's canonical grid: per leaf, the probability placed in the resampled grid
    (background 1 outside the crop) and interpolated linearly; running argmax."""
    shape = volume.data.shape
    box = tuple(slice(a, b) for a, b in prepared.box)

    def full(values: np.ndarray, outside: float) -> np.ndarray:
        out = np.full(prepared.resampled_shape, outside, np.float32)
        out[box] = values
        return io.resample_to_grid(out, prepared.resampled_affine, volume.affine, shape, order=1)

    labels = np.zeros(shape, np.uint8)
    best = np.full(shape, -1.0, np.float32)
    for k in range(probs.shape[-1]):
        p = full(probs[..., k], 1.0 if k == 0 else 0.0)
        better = p > best
        best[better] = p[better]
        labels[better] = k
    return labels, full(entropy, 0.0)


def volumes_row(result: Result, protocol) -> dict[str, float]:
    """mm³ per id (leaves, tree nodes, named sets) of a result."""
    voxel = float(abs(np.linalg.det(result.volume.affine[:3, :3])))
    counts = np.bincount(result.labels.ravel(), minlength=protocol.num_leaves)
    leaf_mm3 = counts[: protocol.num_leaves] * voxel
    member = protocol.membership()
    row = {"case": result.name}
    for i, name in enumerate(protocol.id_names()):
        row[name] = round(float(leaf_mm3[member[i]].sum()), 3)
    return row


def _atomic_bytes(path: Path, data: bytes) -> None:
    io.atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_volumes(path: Path, rows: list[dict]) -> None:
    """volumes.csv: one row per case, columns case + every id name (mm³)."""
    if not rows:
        return
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    _atomic_bytes(path, buf.getvalue().encode())


def qc_png(path: Path, result: Result, protocol) -> None:
    """Axial, coronal and sagittal mid slices of the image with the segmentation overlaid."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    image, labels = result.volume.data, result.labels
    colours = protocol.colours()[: protocol.num_leaves].astype(np.float32) / 255
    fig = Figure(figsize=(12, 4.2), dpi=80)
    c = [n // 2 for n in image.shape]
    views = {
        "axial": (image[:, :, c[2]], labels[:, :, c[2]]),
        "coronal": (image[:, c[1], :], labels[:, c[1], :]),
        "sagittal": (image[c[0], :, :], labels[c[0], :, :]),
    }
    lo, hi = np.percentile(image, [1, 99])
    for i, (title, (img, lab)) in enumerate(views.items()):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.imshow(img.T, cmap="gray", origin="lower", vmin=lo, vmax=hi)
        rgba = np.zeros((*lab.shape, 4), np.float32)
        rgba[..., :3] = colours[lab]
        rgba[..., 3] = np.where(lab > 0, 0.45, 0.0)
        ax.imshow(np.transpose(rgba, (1, 0, 2)), origin="lower")
        ax.set_title(f"{result.name}: {title}")
        ax.axis("off")
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    _atomic_bytes(path, buf.getvalue())


def write_outputs(out_dir: Path, result: Result, protocol) -> list[Path]:
    """The seg, uncertainty and QC files of one result (volumes.csv is written per batch)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    seg_path = out_dir / f"{result.name}_seg.nii.gz"
    unc_path = out_dir / f"{result.name}_uncertainty.nii.gz"
    png_path = out_dir / f"{result.name}_qc.png"
    io.save_label(seg_path, protocol.decode(result.labels), result.volume.source)
    io.save_image(unc_path, result.entropy, result.volume.source)
    qc_png(png_path, result, protocol)
    logging.info("sample: wrote %s", seg_path)
    return [seg_path, unc_path, png_path]


OUTPUT_SUFFIXES = ("_seg", "_uncertainty")


def find_inputs(spec: str) -> list[Path]:
    """A file, a folder (its .nii/.nii.gz/.mgz files, not sample.py's own outputs) or a glob
    → sorted input paths; two inputs that would write the same outputs are an error."""
    path = Path(spec)
    if path.is_dir():
        files = [
            p for p in path.iterdir() if p.is_file() and p.name.endswith(datasets.NIFTI_SUFFIXES)
        ]
        files = [p for p in files if not output_name(p).endswith(OUTPUT_SUFFIXES)]
    elif path.exists():
        files = [path]
    else:
        files = [Path(p) for p in sorted(glob.glob(spec)) if Path(p).is_file()]
    if not files:
        raise FileNotFoundError(f"{spec}: no NIfTI/MGZ inputs (a file, a folder or a glob)")
    seen: dict[str, Path] = {}
    for f in sorted(files):
        other = seen.setdefault(output_name(f), f)
        if other != f:
            raise InputError(f, f"writes the same outputs as {other} (same name)")
    return sorted(files)


@dataclasses.dataclass(frozen=True)
class Done:
    name: str
    seconds: float
    windows: int


def _merge_volumes(path: Path, rows: list[dict]) -> None:
    """volumes.csv keeps the rows of earlier runs for cases not redone now."""
    old = []
    if path.is_file():
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
    names = {r["case"] for r in rows}
    write_volumes(path, [r for r in old if r.get("case") not in names] + rows)


def run(
    model: model_lib.LoadedModel, inputs: list[Path], output: str | os.PathLike, opts: Options
) -> tuple[list[Done], list[tuple[Path, str]]]:
    """Segments every input into `output`; a failing file is logged, its partial outputs are
    removed, and the batch goes on. Returns (done, failures as (path, message))."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    segmenter = Segmenter(model, opts)
    key = jax.random.key(opts.seed)
    done, failures, rows = [], [], []
    for i, path in enumerate(inputs, 1):
        name = output_name(path)
        try:
            result = segmenter.segment_file(path, key)
            write_outputs(out, result, model.protocol)
            rows.append(volumes_row(result, model.protocol))
            _merge_volumes(out / "volumes.csv", rows)
        except Exception as e:  # noqa: BLE001 — one bad file must not stop the batch
            for suffix in ("_seg.nii.gz", "_uncertainty.nii.gz", "_qc.png"):
                (out / f"{name}{suffix}").unlink(missing_ok=True)
            failures.append((path, f"{type(e).__name__}: {e}"))
            logging.error("sample: [%d/%d] %s failed: %s", i, len(inputs), path, e)
            continue
        done.append(Done(result.name, result.seconds, result.windows))
        logging.info(
            "sample: [%d/%d] %s: %d windows, %.1f s",
            i,
            len(inputs),
            result.name,
            result.windows,
            result.seconds,
        )
        del result
    return done, failures
