"""Calibration and error detection of a segmentation's voxel probabilities.

Both are scored over the voxels where the reference or the prediction is foreground (any
label but 0): every misclassified voxel lies there, and the far background, which any model
gets right with certainty, would otherwise dominate both figures.

- ECE (expected calibration error, Guo et al. 2017): the voxels are binned by the
  confidence of the decided label (the probability the model gives its own answer) into
  `BINS` equal-width bins over [0, 1]; ECE = sum over bins of (n_bin / n) |accuracy_bin -
  mean confidence_bin|. 0 is perfectly calibrated.
- AUROC of the entropy for the misclassified voxels: the probability that a random
  misclassified voxel has a higher entropy than a random correct one (ties count one half;
  the Mann-Whitney statistic). 0.5 is chance, 1 flags every error.

`CalibrationStats` accumulates voxels over cases, so the pooled figures weigh each voxel
equally; per-case figures come from `case_calibration`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

BINS: int = 15
REGION: str = "voxels where the reference or the prediction is foreground"


def _region(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    return (pred != 0) | (ref != 0)


def _bins(confidence, correct, bins: int):
    """Per equal-width bin of the confidence: (count, summed confidence, summed correct);
    bin b holds (b/bins, (b+1)/bins], confidence 0 goes to the first."""
    conf = np.clip(np.asarray(confidence, np.float64).ravel(), 0.0, 1.0)
    ok = np.asarray(correct, bool).ravel()
    if conf.size != ok.size:
        raise ValueError(f"{conf.size} confidences for {ok.size} outcomes")
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    n = np.bincount(idx, minlength=bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=bins)
    return n, sum_conf, np.bincount(idx, weights=ok.astype(np.float64), minlength=bins)


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error of `confidence` (in [0, 1]) against `correct` (bool)."""
    n, sum_conf, sum_ok = _bins(confidence, correct, bins)
    total = int(n.sum())
    return float(np.abs(sum_ok - sum_conf).sum() / total) if total else math.nan


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> dict:
    """Per bin (as `ece` bins them): voxel count, mean confidence and accuracy (None if empty)."""
    n, *sums = _bins(confidence, correct, bins)
    mean = [
        [round(float(v / c), 6) if c else None for v, c in zip(t, n, strict=True)] for t in sums
    ]
    return {"count": n.tolist(), "confidence": mean[0], "accuracy": mean[1]}


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `score` for `positive` (bool); nan without both classes."""
    s = np.asarray(score, np.float64).ravel()
    pos = np.asarray(positive, bool).ravel()
    if s.size != pos.size:
        raise ValueError(f"{s.size} scores for {pos.size} outcomes")
    n_pos = int(pos.sum())
    n_neg = s.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="stable")
    sorted_s = s[order]
    # mid-ranks (1-based) of tied runs
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    mid = (starts + ends + 1) / 2.0
    ranks = np.empty(s.size, np.float64)
    ranks[order] = np.repeat(mid, ends - starts)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


@dataclasses.dataclass(frozen=True)
class CaseCalibration:
    ece: float
    auroc: float  # entropy as the detector of misclassified voxels (nan without errors)
    error_rate: float  # misclassified fraction of the region
    voxels: int  # region size


def select(pred, ref, confidence, entropy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The region voxels' (confidence, entropy, misclassified) of one case: all that pooled
    figures need of it (`CalibrationStats.add_selected`)."""
    region = _region(pred, ref)
    conf = np.asarray(confidence)
    ent = np.asarray(entropy)
    if conf.shape != region.shape or ent.shape != region.shape:
        raise ValueError(
            f"confidence {conf.shape} and entropy {ent.shape} must match the label maps "
            f"{region.shape}"
        )
    wrong = np.asarray(pred)[region] != np.asarray(ref)[region]
    return conf[region].astype(np.float32), ent[region].astype(np.float32), wrong


def case_calibration(
    pred: np.ndarray, ref: np.ndarray, confidence: np.ndarray, entropy: np.ndarray
) -> CaseCalibration:
    """ECE, entropy AUROC and error rate of one case (label maps and maps of the same shape)."""
    return _figures(*select(pred, ref, confidence, entropy))


def _figures(conf: np.ndarray, ent: np.ndarray, wrong: np.ndarray) -> CaseCalibration:
    return CaseCalibration(
        ece=ece(conf, ~wrong),
        auroc=auroc(ent, wrong),
        error_rate=float(wrong.mean()) if wrong.size else math.nan,
        voxels=int(wrong.size),
    )


class CalibrationStats:
    """Pooled ECE and entropy AUROC over the region voxels of many cases."""

    def __init__(self):
        self._conf, self._ent, self._wrong = [], [], []
        self.cases: dict[str, CaseCalibration] = {}

    def add(self, case: str, pred, ref, confidence, entropy) -> CaseCalibration:
        return self.add_selected(case, *select(pred, ref, confidence, entropy))

    def add_selected(self, case: str, conf, ent, wrong) -> CaseCalibration:
        """Adds a case's `select`ed voxels."""
        self._conf.append(conf)
        self._ent.append(ent)
        self._wrong.append(wrong)
        self.cases[case] = c = _figures(conf, ent, wrong)
        return c

    def summary(self) -> dict:
        """JSON-ready pooled and per-case figures (nan → None)."""
        conf = np.concatenate(self._conf) if self._conf else np.zeros(0, np.float32)
        ent = np.concatenate(self._ent) if self._ent else np.zeros(0, np.float32)
        wrong = np.concatenate(self._wrong) if self._wrong else np.zeros(0, bool)

        def num(x: float) -> float | None:
            return None if not math.isfinite(x) else round(float(x), 6)

        def figures(c: CaseCalibration) -> dict:
            return {
                "ece": num(c.ece),
                "auroc_entropy_error": num(c.auroc),
                "error_rate": num(c.error_rate),
                "voxels": c.voxels,
            }

        return {
            "region": REGION,
            "bins": BINS,
            **figures(_figures(conf, ent, wrong)),
            "reliability": reliability(conf, ~wrong),
            "cases": {k: figures(c) for k, c in self.cases.items()},
        }
