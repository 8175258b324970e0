"""Evaluate a folder of predicted label maps against a folder of references: pair, load, score.

Files are paired by name (`msseg.names`: any of .nii.gz, .nii, .mgz): the reference
``<name>`` with the prediction ``<name>_seg`` (what tools/sample.py writes) or ``<name>``, and
an optional image ``<name>`` or ``<name>_0000`` (nnU-Net naming). A reference without a
prediction, or a prediction without a reference, is an ``InputError`` naming the file; the
sampler's other outputs in the prediction folder (``_uncertainty``, ``_seg_level<l>``) are
skipped.
"""

from __future__ import annotations

import dataclasses
import json
import os

from absl import logging

from msseg import io, names
from msseg import labels as labels_lib
from msseg.errors import InputError
from msseg.evaluation import metrics, plots, report
from msseg.export import format as fmt


@dataclasses.dataclass(frozen=True)
class CaseFiles:
    """The files of one case: prediction, reference and optional image."""

    name: str
    pred: str
    ref: str
    image: str | None = None


def load_protocol(spec: str) -> labels_lib.Protocol:
    """A model directory's ``labels.json``, or a built-in protocol by name."""
    if os.path.isdir(spec):
        path = os.path.join(spec, fmt.LABELS)
        if not os.path.isfile(path):
            raise InputError(spec, f"model directory has no {fmt.LABELS}")
        try:
            with open(path, encoding="utf-8") as f:
                return labels_lib.Protocol.from_json(json.load(f))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise InputError(path, f"not a label protocol ({e})") from None
    if spec in labels_lib.PROTOCOLS:
        return labels_lib.get_protocol(spec)
    raise InputError(
        spec,
        "neither a model directory with labels.json nor a label protocol "
        f"({', '.join(labels_lib.PROTOCOLS)})",
    )


def _nifti_files(folder: str) -> dict[str, str]:
    """{name without suffix: path} of the volumes in ``folder`` (hidden ones skipped)."""
    if not os.path.isdir(folder):
        raise InputError(folder, "not a folder")
    out: dict[str, str] = {}
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        if not names.is_volume(entry) or not os.path.isfile(path):
            continue
        name = names.stem(entry)
        if name in out:
            raise InputError(path, f"ambiguous: {os.path.basename(out[name])} has the same name")
        out[name] = path
    return out


def _one_of(files: dict[str, str], names: list[str], what: str, ref: str) -> str | None:
    hits = [files[n] for n in names if n in files]
    if len(hits) > 1:
        raise InputError(hits[1], f"ambiguous {what} for {ref}: {hits[0]} matches as well")
    return hits[0] if hits else None


def pair_files(pred_dir: str, ref_dir: str, images_dir: str | None = None) -> list[CaseFiles]:
    """The cases, sorted by name: every reference with its prediction (and image)."""
    refs = _nifti_files(ref_dir)
    if not refs:
        raise InputError(ref_dir, f"no {'/'.join(names.READ_SUFFIXES)} reference label maps")
    preds = _nifti_files(pred_dir)
    images = _nifti_files(images_dir) if images_dir is not None else None
    cases, owner = [], {}
    for name, ref in sorted(refs.items()):
        pred = _one_of(preds, names.prediction_stems(name), "prediction", ref)
        if pred is None:
            raise InputError(
                names.segmentation(pred_dir, name),
                f"no prediction for reference {ref} (expected "
                f"{' or '.join(names.prediction_stems(name))}, "
                f"with one of {', '.join(names.READ_SUFFIXES)})",
            )
        if pred in owner:
            raise InputError(pred, f"matches two references: {owner[pred]} and {ref}")
        owner[pred] = ref
        image = None
        if images is not None:
            image = _one_of(images, names.image_stems(name), "image", ref)
            if image is None:
                raise InputError(
                    os.path.join(images_dir, name + names.OUTPUT_SUFFIX),
                    f"no image for reference {ref}",
                )
        cases.append(CaseFiles(name=name, pred=pred, ref=ref, image=image))
    unmatched = [p for n, p in preds.items() if p not in owner and not names.is_sidecar(n)]
    if unmatched:
        more = f" ({len(unmatched) - 1} more unmatched)" if len(unmatched) > 1 else ""
        raise InputError(unmatched[0], f"prediction has no reference in {ref_dir}{more}")
    return cases


def _same_grid(ref: io.Volume, other: io.Volume, what: str) -> None:
    try:
        io.check_same_grid(ref, other)
    except InputError as e:
        raise InputError(
            other.path, f"{what} is not on the reference's grid: {e.problem}"
        ) from None


def evaluate_folders(
    pred_dir: str,
    ref_dir: str,
    protocol: labels_lib.Protocol,
    output: str,
    *,
    images_dir: str | None = None,
    hd95_mode: str = "pooled",
    worst: int = 3,
) -> report.Report:
    """Score every prediction in ``pred_dir`` against ``ref_dir`` and write the report.

    Label maps are read as raw codes (``io.load_label``) and encoded with ``protocol``;
    spacing comes from the reference. Writes ``output/metrics.csv``, ``summary.json``,
    box plots and overlays of the ``worst`` cases (see ``report.write_report``).
    """
    if hd95_mode not in metrics.HD95_MODES:
        raise ValueError(f"hd95 mode must be one of {metrics.HD95_MODES}, got {hd95_mode!r}")
    cases = pair_files(pred_dir, ref_dir, images_dir)
    rows: list[report.Row] = []
    previews: dict[str, plots.Preview] = {}
    for i, case in enumerate(cases):
        ref_vol, pred_vol = io.load_label(case.ref), io.load_label(case.pred)
        _same_grid(ref_vol, pred_vol, "prediction")
        ref = protocol.encode(ref_vol.data, case.ref)
        pred = protocol.encode(pred_vol.data, case.pred)
        image = None
        if case.image is not None:
            image_vol = io.load_image(case.image)
            _same_grid(ref_vol, image_vol, "image")
            image = image_vol.data
        case_rows = report.evaluate_case(
            pred, ref, ref_vol.spacing, protocol, case=case.name, hd95_mode=hd95_mode
        )
        rows += case_rows
        previews[case.name] = plots.make_preview(ref, pred, ref_vol.spacing, image)
        leaf_dice = report.case_scores(case_rows)[case.name]
        logging.info("[%d/%d] %s: mean leaf Dice %.4f", i + 1, len(cases), case.name, leaf_dice)
    return report.write_report(
        rows,
        output,
        protocol,
        previews=previews,
        worst=worst,
        hd95_mode=hd95_mode,
        pred_dir=os.path.abspath(pred_dir),
        ref_dir=os.path.abspath(ref_dir),
        images_dir=None if images_dir is None else os.path.abspath(images_dir),
    )
