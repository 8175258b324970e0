"""Segment a dataset split with a model directory and score it (evaluate.py --model --data).

Each case is segmented like sample.py does (outputs kept under REPORT/samples/, with the
protocol's colour tables, `predict.write_label_tables`), scored on the label map's own grid
with msseg.evaluation (Dice, HD95, ASSD, volume similarity per label and tree level, and the
calibration of the voxel probabilities: `msseg.evaluation.calibration`) and recorded under
REPORT/cases/ (`CaseRecord`: a rerun with the same settings reuses it). With several
`depths`, every case is segmented once per entry depth (the input resampled to 2^d x the
model's spacing) and rows carry the depth. With jax.distributed the cases are split across
the processes and process 0 writes the report from every process's records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging

from msseg import cluster, files, io, names
from msseg.data import datasets
from msseg.errors import InputError
from msseg.evaluation import calibration, plots, report
from msseg.inference import model as model_lib
from msseg.inference import postprocess as post
from msseg.inference import predict
from msseg.inference import progress as progress_lib
from msseg.labels import Protocol

RECORDS = "cases"  # REPORT/cases/[depth<d>/]<case>.npz: one scored case, reused by a rerun


def _model_id(model, setting) -> list | None:
    """A stripping model in a case record's settings: its path, digest and `setting`."""
    return None if model is None else [str(model.path), digest(model.metadata), setting]


def _settings(model, data, split, opts, depth: int, first: bool, hd95_mode: str) -> dict:
    """What a case record's figures depend on: a record made with other settings is redone.
    (The data-axis device count is not among them: each chunk of windows has its own key.)"""
    return {
        "model": str(model.path),
        # its metadata lists every file's checksum: a re-exported model is another model
        "model_metadata": digest(model.metadata),
        "data": str(data),
        "split": split,
        "sampler": dataclasses.asdict(opts.sampler),
        "seed": opts.seed,
        "overlap": opts.overlap,
        "input_depth": opts.input_depth,
        "tta": str(opts.tta),
        "postprocess": str(opts.postprocess),
        "strip_model": _model_id(opts.strip_model, opts.strip_open_mm),
        "strip_bound_model": _model_id(opts.strip_bound_model, post.BOUND_MM),
        "depth": depth,
        "first_depth": first,  # records of the first depth hold the volumes row and preview
        "hd95_mode": hd95_mode,
        "route": str(model.route),
        # windows: their size (and with "whole", space's rounding) and the windows sharing
        # one key (a chunk of `batch`) change the segmentation
        "window": list(opts.window) if isinstance(opts.window, tuple) else opts.window,
        "space": opts.space,
        "batch": opts.batch,
    }


@dataclasses.dataclass(frozen=True)
class CaseRecord:
    """One segmented and scored case: its metric rows, the voxels its calibration pools
    (`calibration.select`), its timing, and (at the first depth) its volumes row and preview."""

    rows: list[report.Row]
    selected: tuple[np.ndarray, np.ndarray, np.ndarray]  # confidence, entropy, misclassified
    timing: dict
    volumes: dict | None = None
    preview: plots.Preview | None = None


def _save_record(path: Path, rec: CaseRecord, settings: dict) -> None:
    meta = {
        "settings": settings,
        "rows": [dataclasses.asdict(r) for r in rec.rows],
        "timing": rec.timing,
        "volumes": rec.volumes,
    }
    arrays = dict(zip(("conf", "ent", "wrong"), rec.selected, strict=True))
    if (pv := rec.preview) is not None:
        has_image = pv.image is not None
        meta["preview"] = {"spacing": pv.spacing, "centre": pv.centre, "image": has_image}
        for kind in ("ref", "pred", "image"):
            for v, a in enumerate(getattr(pv, kind) or ()):
                arrays[f"{kind}{v}"] = a
    path.parent.mkdir(parents=True, exist_ok=True)
    # written whole or not at all: a killed run leaves no half record to reuse
    files.atomic_write(path, lambda tmp: np.savez_compressed(tmp, meta=json.dumps(meta), **arrays))


def _load_record(path: Path, settings: dict) -> CaseRecord | None:
    """The record at `path`, or None if absent, unreadable or made with other settings."""
    try:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            if meta["settings"] != json.loads(json.dumps(settings)):
                return None
            arrays = {k: z[k] for k in z.files if k != "meta"}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    preview = None
    if (pv := meta.get("preview")) is not None:
        views = range(3)
        preview = plots.Preview(
            ref=tuple(arrays[f"ref{v}"] for v in views),
            pred=tuple(arrays[f"pred{v}"] for v in views),
            image=tuple(arrays[f"image{v}"] for v in views) if pv["image"] else None,
            spacing=tuple(pv["spacing"]),
            centre=tuple(pv["centre"]),
        )
    return CaseRecord(
        rows=[report.Row(**r) for r in meta["rows"]],
        selected=(arrays["conf"], arrays["ent"], arrays["wrong"]),
        timing=meta["timing"],
        volumes=meta["volumes"],
        preview=preview,
    )


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Source:
    """What the evaluation loop needs of whatever makes the segmentations: msseg's segmenter
    (`evaluate_model`) or another implementation's probabilities
    (`probabilities.evaluate_probabilities`)."""

    protocol: Protocol
    per_window: int  # network evaluations per window
    segmenter: Callable[[int], Any]  # depth -> an object with segment_case(case, image, ...)
    settings: Callable[[int, bool], dict]  # (depth, first depth) -> a record's settings
    meta: dict  # the report's summary.json fields that say what was evaluated
    tta: str = "none"  # flip: windows (and evaluations) count both passes


def evaluate_model(
    model: model_lib.LoadedModel,
    data: str,
    split: str,
    output: str | os.PathLike,
    opts: predict.Options,
    *,
    depths: tuple[int, ...] = (0,),
    hd95_mode: str = "pooled",
    worst: int = 3,
    max_cases: int = 0,
    progress: bool = False,
    overwrite: bool = False,
) -> report.Report | None:
    """Segments the labelled cases of `split` in dataset `data` and writes the report.

    Each case is recorded in REPORT/cases/ once scored (`CaseRecord`); a rerun with the same
    settings reuses the records whose samples are there (`overwrite`: redo every case). With
    jax.distributed the cases are split across the processes (`cluster.share`), each writing
    its own cases' samples and records; process 0 then writes volumes.csv and the report from
    all the records and returns it (the others return None). Each case's log line ends in the
    ETA of this process's cases left (all depths); `progress`: also print the windows done
    inside each case to stderr, at most every 10 s."""
    source = Source(
        protocol=model.protocol,
        per_window=(
            opts.sampler.denoiser_evaluations(model.schedule.num_timesteps) * opts.sampler.ensemble
            if model.diffusion
            else 1
        ),
        segmenter=lambda depth: _ModelCases(
            predict.Segmenter(model, dataclasses.replace(opts, depth=depth))
        ),
        settings=lambda depth, first: _settings(model, data, split, opts, depth, first, hd95_mode),
        tta=str(opts.tta),
        meta={
            "model": str(model.path),
            "route": model.route,
            "input_depth": opts.input_depth,
            "sampler": dataclasses.asdict(opts.sampler),
            "seed": opts.seed,
            "overlap": opts.overlap,
        },
    )
    return evaluate_source(
        source,
        data,
        split,
        output,
        depths=depths,
        hd95_mode=hd95_mode,
        worst=worst,
        max_cases=max_cases,
        progress=progress,
        overwrite=overwrite,
        seed=opts.seed,
    )


class _ModelCases:
    """msseg's segmenter, each case with its own key (`predict.file_key`)."""

    def __init__(self, segmenter: predict.Segmenter):
        self.segmenter = segmenter

    def segment_case(self, case, image: io.Volume, key, progress) -> predict.Result:
        return self.segmenter.segment_volume(image, predict.file_key(key, case.case_id), progress)


def evaluate_source(
    source: Source,
    data: str,
    split: str,
    output: str | os.PathLike,
    *,
    depths: tuple[int, ...] = (0,),
    hd95_mode: str = "pooled",
    worst: int = 3,
    max_cases: int = 0,
    progress: bool = False,
    overwrite: bool = False,
    seed: int = 0,
) -> report.Report | None:
    """The evaluation loop of `evaluate_model` and `probabilities.evaluate_probabilities`:
    segments (or reads) each labelled case of `split`, scores it, records it and writes the
    report."""
    out = files.make_output_dir(output)  # before any work: InputError if it cannot be
    dataset = datasets.resolve(data)
    protocol = source.protocol
    if dataset.protocol.name != protocol.name:
        raise InputError(
            data,
            f"labels follow protocol {dataset.protocol.name!r}, the model predicts "
            f"{protocol.name!r}",
        )
    cases = [c for c in dataset.cases if c.split == split and c.label]
    if max_cases:
        cases = cases[:max_cases]
    if not cases:
        raise InputError(data, f"no labelled cases in split {split!r}")
    per_window = source.per_window
    key = jax.random.key(seed)
    start = time.perf_counter()
    mine = cluster.share(cases)
    total = len(depths) * len(mine)

    def folders(depth: int) -> tuple[Path, Path]:
        sub = f"depth{depth}" if len(depths) > 1 else ""
        return out / "samples" / sub, out / RECORDS / sub

    error = None
    try:
        for d, depth in enumerate(depths):
            segmenter = source.segmenter(depth)
            samples, records = folders(depth)
            predict.write_label_tables(samples, protocol)
            settings = source.settings(depth, d == 0)
            for i, case in enumerate(mine):
                record = records / f"{case.case_id}.npz"
                seg_file = names.segmentation(samples, names.stem(case.image))
                if not overwrite and seg_file.is_file() and _load_record(record, settings):
                    logging.info("evaluate: depth %d %s: scored before, kept", depth, case.case_id)
                    continue
                ticker = progress_lib.Ticker(
                    f"evaluate: depth {depth} [{i + 1}/{len(mine)}] {case.case_id}",
                    on=progress,
                    stream=sys.stderr,
                )
                rec = _segment_and_score(
                    segmenter, case, protocol, key, ticker, hd95_mode, depth, depths, per_window
                )
                predict.write_outputs(samples, rec["result"], protocol)
                _save_record(record, rec["record"], settings)
                logging.info(
                    "evaluate: depth %d [%d/%d] %s: mean leaf Dice %.4f (%d windows, %.1f s)%s",
                    depth,
                    i + 1,
                    len(mine),
                    case.case_id,
                    rec["score"],
                    rec["record"].timing["windows"],
                    rec["record"].timing["seconds"],
                    progress_lib.eta(time.perf_counter() - start, d * len(mine) + i + 1, total),
                )
    except Exception as e:  # reach the barrier: the other processes must not wait for this one
        error = e
    if not cluster.all_ok(error is None):
        if error is not None:
            raise error
        raise RuntimeError(f"{out}: another process failed to score its cases (see its log)")
    if not cluster.is_main():
        return None
    rows, previews, volume_rows = [], {}, []
    calib: dict[int, calibration.CalibrationStats] = {}
    timing: dict[int, dict[str, dict]] = {}
    for depth in depths:
        calib[depth] = stats = calibration.CalibrationStats()
        timing[depth] = times = {}
        settings = source.settings(depth, depth == depths[0])
        for case in cases:
            path = folders(depth)[1] / f"{case.case_id}.npz"
            rec = _load_record(path, settings)
            if rec is None:
                raise RuntimeError(f"{path}: no record of this evaluation (a process failed?)")
            rows += rec.rows
            stats.add_selected(case.case_id, *rec.selected)
            times[case.case_id] = rec.timing
            if depth == depths[0]:
                previews[case.case_id] = rec.preview
                volume_rows.append(rec.volumes)
    predict.write_volumes(out / "samples" / "volumes.csv", volume_rows)

    def per_depth(make):
        return {str(d): make(d) for d in depths} if len(depths) > 1 else make(depths[0])

    def segmentation(depth: int) -> dict:
        cases = timing[depth]
        return {
            # the median: the first case also pays for compiling
            "median_seconds_per_case": round(
                statistics.median(c["seconds"] for c in cases.values()), 3
            ),
            "tta": source.tta,  # flip: windows (and evaluations) count both passes
            "denoiser_evals_per_window": per_window,
            "denoiser_evals_per_case": sum(c["denoiser_evals"] for c in cases.values())
            / len(cases),
            "cases": cases,
        }

    return report.write_report(
        rows,
        out,
        protocol,
        previews=previews,
        worst=worst,
        hd95_mode=hd95_mode,
        data=str(data),
        split=split,
        entry_depths=list(depths),
        calibration=per_depth(lambda d: calib[d].summary()),
        segmentation=per_depth(segmentation),
        seconds=round(time.perf_counter() - start, 1),
        **source.meta,
    )


def _segment_and_score(
    segmenter, case, protocol, key, ticker, hd95_mode, depth, depths, per_window
) -> dict:
    """One case segmented and scored: {"result": the segmentation, "record": its CaseRecord,
    "score": its mean leaf Dice}."""
    image, label = io.load_image(case.image), io.load_label(case.label)
    io.check_same_grid(image, label)
    codes = dict(case.codes) if case.codes is not None else None
    ref = protocol.encode(label.data, case.label, codes)  # the dataset's own values
    result = segmenter.segment_case(case, image, key, ticker.update)
    case_rows = report.evaluate_case(
        result.labels,
        ref,
        label.spacing,
        protocol,
        case=case.case_id,
        hd95_mode=hd95_mode,
        depth=depth if len(depths) > 1 else None,
    )
    first = depth == depths[0]
    record = CaseRecord(
        rows=case_rows,
        selected=calibration.select(result.labels, ref, result.confidence, result.entropy),
        timing={
            "seconds": round(result.seconds, 3),
            "windows": result.windows,
            "denoiser_evals": result.windows * per_window,
        },
        volumes=predict.volumes_row(result, protocol) if first else None,
        preview=plots.make_preview(ref, result.labels, label.spacing, result.volume.data)
        if first
        else None,
    )
    return {
        "result": result,
        "record": record,
        "score": report.case_scores(case_rows)[case.case_id],
    }
