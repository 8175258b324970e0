"""Segment a dataset split with a model directory and score it (evaluate.py --model --data).

Each case is segmented like sample.py does (outputs kept under REPORT/samples/, with the
protocol's colour tables, `predict.write_label_tables`), then
scored on the label map's own grid with msseg.evaluation (Dice, HD95, ASSD, volume
similarity per label and tree level, and the calibration of the voxel probabilities:
`msseg.evaluation.calibration`); with several `depths`, every case is segmented once per
entry depth (the input resampled to 2^d x the model's spacing) and rows carry the depth.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time

import jax
from absl import logging

from msseg import files, io
from msseg.data import datasets
from msseg.errors import InputError
from msseg.evaluation import calibration, plots, report
from msseg.inference import model as model_lib
from msseg.inference import predict
from msseg.inference import progress as progress_lib


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
) -> report.Report:
    """Segments the labelled cases of `split` in dataset `data` and writes the report.

    Each case's log line ends in the ETA of the cases left (all depths); `progress`: also
    print the windows done inside each case to stderr, at most every 10 s."""
    out = files.make_output_dir(output)  # before any work: InputError if it cannot be
    dataset = datasets.resolve(data)
    if dataset.protocol.name != model.protocol.name:
        raise InputError(
            data,
            f"labels follow protocol {dataset.protocol.name!r}, the model predicts "
            f"{model.protocol.name!r}",
        )
    cases = [c for c in dataset.cases if c.split == split and c.label]
    if max_cases:
        cases = cases[:max_cases]
    if not cases:
        raise InputError(data, f"no labelled cases in split {split!r}")
    protocol = model.protocol
    rows, previews, volume_rows = [], {}, []
    calib: dict[int, calibration.CalibrationStats] = {}
    timing: dict[int, dict[str, dict]] = {}
    per_window = (
        opts.sampler.denoiser_evaluations(model.schedule.num_timesteps) * opts.sampler.ensemble
        if model.diffusion
        else 1
    )
    key = jax.random.key(opts.seed)
    start = time.perf_counter()
    total = len(depths) * len(cases)
    for d, depth in enumerate(depths):
        segmenter = predict.Segmenter(model, dataclasses.replace(opts, depth=depth))
        samples = out / "samples" / (f"depth{depth}" if len(depths) > 1 else "")
        predict.write_label_tables(samples, protocol)
        calib[depth] = stats = calibration.CalibrationStats()
        timing[depth] = times = {}
        for i, case in enumerate(cases):
            ticker = progress_lib.Ticker(
                f"evaluate: depth {depth} [{i + 1}/{len(cases)}] {case.case_id}",
                on=progress,
                stream=sys.stderr,
            )
            image, label = io.load_image(case.image), io.load_label(case.label)
            io.check_same_grid(image, label)
            codes = dict(case.codes) if case.codes is not None else None
            ref = protocol.encode(label.data, case.label, codes)  # the dataset's own values
            case_key = predict.file_key(key, case.case_id)
            result = segmenter.segment_volume(image, case_key, ticker.update)
            predict.write_outputs(samples, result, protocol)
            case_rows = report.evaluate_case(
                result.labels,
                ref,
                label.spacing,
                protocol,
                case=case.case_id,
                hd95_mode=hd95_mode,
                depth=depth if len(depths) > 1 else None,
            )
            rows += case_rows
            stats.add(case.case_id, result.labels, ref, result.confidence, result.entropy)
            times[case.case_id] = {
                "seconds": round(result.seconds, 3),
                "windows": result.windows,
                "denoiser_evals": result.windows * per_window,
            }
            if depth == depths[0]:
                previews[case.case_id] = plots.make_preview(
                    ref, result.labels, label.spacing, result.volume.data
                )
                volume_rows.append(predict.volumes_row(result, protocol))
            score = report.case_scores(case_rows)[case.case_id]
            logging.info(
                "evaluate: depth %d [%d/%d] %s: mean leaf Dice %.4f (%d windows, %.1f s)%s",
                depth,
                i + 1,
                len(cases),
                case.case_id,
                score,
                result.windows,
                result.seconds,
                progress_lib.eta(time.perf_counter() - start, d * len(cases) + i + 1, total),
            )
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
            "tta": str(opts.tta),  # flip: windows (and evaluations) count both passes
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
        model=str(model.path),
        route=model.route,
        data=str(data),
        split=split,
        entry_depths=list(depths),
        input_depth=opts.input_depth,
        calibration=per_depth(lambda d: calib[d].summary()),
        segmentation=per_depth(segmentation),
        sampler=dataclasses.asdict(opts.sampler),
        seed=opts.seed,
        overlap=opts.overlap,
        seconds=round(time.perf_counter() - start, 1),
    )
