"""Another implementation's segmentation scored exactly as msseg's own (evaluate.py --probs):
its probabilities on msseg's preprocessed grid, placed on each image's grid and given their
leaf down the label tree, then run through the evaluation loop of `evaluate` (metrics,
calibration, records, report)."""

from __future__ import annotations

import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np

from msseg import io, names
from msseg.data import datasets
from msseg.data.prepare import PreprocessConfig, prepare_image
from msseg.errors import InputError
from msseg.evaluation import report
from msseg.inference import evaluate, predict
from msseg.labels import Protocol

PROBABILITIES = "probabilities.json"  # what a --probs folder's maps are (ProbabilityMaps)


class ProbabilityMaps:
    """Another implementation's segmentation, as probabilities on the grid msseg's
    preprocessing makes of each case (its cache grid): FOLDER/<case id>.npz holds `probs`
    [X, Y, Z, K] (K = the protocol's leaves) and the inference's `seconds` and `windows`;
    FOLDER/probabilities.json the `preprocess` settings (`PreprocessConfig` fields), the
    `protocol` name, `network_evals_per_window`, and what made them (free-form: `producer`).

    Each case becomes the `predict.Result` msseg's segmenter gives: the probabilities placed
    back on the image's own grid and the leaf decided down the protocol's tree
    (`predict.to_native`), the entropy of the probabilities, the decided leaf's confidence;
    its seconds are the inference's plus this placement."""

    def __init__(self, folder: str | os.PathLike, protocol: Protocol):
        self.folder = Path(folder)
        path = self.folder / PROBABILITIES
        try:
            self.info = json.loads(path.read_text())
            self.preprocess = PreprocessConfig(
                **{
                    k: tuple(v) if isinstance(v, list) else v
                    for k, v in self.info["preprocess"].items()
                }
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(path, f"not a probabilities description ({e})") from None
        if self.info.get("protocol") != protocol.name:
            raise InputError(
                path, f"protocol {self.info.get('protocol')!r}, the data's is {protocol.name!r}"
            )
        self.protocol, self.tree = protocol, protocol.level_tables()
        self.per_window = int(self.info.get("network_evals_per_window", 1))

    def digest(self) -> str:
        """Changes when the description or any map file changes (a record is then redone)."""
        stats = sorted(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in self.folder.glob("*.npz")
        )
        return evaluate.digest([self.info, stats])

    def segment_case(self, case, image: io.Volume, key, progress) -> predict.Result:
        path = self.folder / f"{case.case_id}.npz"
        start = time.perf_counter()
        try:
            with np.load(path) as z:
                probs = np.asarray(z["probs"], np.float32)
                seconds, windows = float(z["seconds"]), int(z["windows"])
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
            raise InputError(path, f"cannot read the probabilities ({e})") from None
        prepared, _ = prepare_image(image, self.preprocess)
        k = self.protocol.num_leaves
        if probs.shape != (*prepared.image.shape, k) or not np.all(np.isfinite(probs)):
            raise InputError(
                path,
                f"probabilities of shape {probs.shape} (finite: {bool(np.all(np.isfinite(probs)))})"
                f"; the case's preprocessed grid with {k} leaves is "
                f"{(*prepared.image.shape, k)}",
            )
        probs = probs / np.maximum(probs.sum(-1, keepdims=True), 1e-12)
        entropy = -np.sum(probs * np.log(np.maximum(probs, 1e-12)), -1)
        labels, ent, conf = predict.to_native(probs, entropy, prepared, image, self.tree)
        seconds += time.perf_counter() - start
        return predict.Result(names.stem(image.path), labels, ent, conf, image, seconds, windows)


def evaluate_probabilities(
    folder: str | os.PathLike,
    data: str,
    split: str,
    output: str | os.PathLike,
    *,
    hd95_mode: str = "pooled",
    worst: int = 3,
    max_cases: int = 0,
    overwrite: bool = False,
) -> report.Report | None:
    """Scores another implementation's probabilities (`ProbabilityMaps`) on the labelled cases
    of `split` in dataset `data`, exactly as `evaluate_model` scores msseg's own segmentations
    (the same placement on each image's grid, leaf decision, metrics, calibration and
    report)."""
    dataset = datasets.resolve(data)
    maps = ProbabilityMaps(folder, dataset.protocol)
    digest = maps.digest()
    source = evaluate.Source(
        protocol=dataset.protocol,
        per_window=maps.per_window,
        segmenter=lambda depth: maps,
        settings=lambda depth, first: {
            "probabilities": str(Path(folder).resolve()),
            "digest": digest,
            "data": str(data),
            "split": split,
            "hd95_mode": hd95_mode,
        },
        meta={
            "model": str(folder),
            "route": "probabilities",
            "producer": maps.info.get("producer", {}),
            "sampler": maps.info.get("sampler") or {},
            "overlap": maps.info.get("overlap"),
        },
    )
    return evaluate.evaluate_source(
        source,
        data,
        split,
        output,
        hd95_mode=hd95_mode,
        worst=worst,
        max_cases=max_cases,
        overwrite=overwrite,
    )
