"""Calibration figures: ECE and the entropy AUROC for misclassified voxels."""

import math

import numpy as np
import pytest

from msseg.evaluation import calibration


def _ece_loop(conf, correct, bins):
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        sel = (conf > lo) & (conf <= hi) if b else (conf >= 0) & (conf <= hi)
        if sel.any():
            total += sel.sum() / conf.size * abs(correct[sel].mean() - conf[sel].mean())
    return total


def _auroc_pairs(score, positive):
    pos, neg = score[positive], score[~positive]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def test_ece_against_a_direct_loop():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0, 1, 5000)
    conf[:50] = 0.0
    conf[50:100] = 1.0
    conf[100:150] = 2 / 15  # on a bin edge: belongs to the lower bin
    correct = rng.uniform(0, 1, conf.size) < conf**2  # over-confident
    got = calibration.ece(conf, correct)
    assert got == pytest.approx(_ece_loop(conf, correct, 15), abs=1e-12)
    assert got > 0.1


def test_ece_is_zero_when_confidence_matches_accuracy():
    conf = np.repeat([0.25, 0.75, 1.0], 400)
    correct = np.concatenate([np.arange(400) < 100, np.arange(400) < 300, np.ones(400, bool)])
    assert calibration.ece(conf, correct) == pytest.approx(0.0, abs=1e-12)
    # always saying 1.0 while right half the time: ECE 0.5
    assert calibration.ece(np.ones(10), np.arange(10) < 5) == pytest.approx(0.5)


def test_auroc_against_all_pairs_with_ties():
    rng = np.random.default_rng(1)
    score = rng.integers(0, 6, 700).astype(float)  # many ties
    positive = rng.uniform(0, 1, 700) < 0.2 + 0.1 * score
    got = calibration.auroc(score, positive)
    assert got == pytest.approx(_auroc_pairs(score, positive), abs=1e-12)
    assert 0.5 < got < 1.0
    assert calibration.auroc(score, score >= 3) == 1.0  # separates perfectly
    assert calibration.auroc(-score, score >= 3) == 0.0
    assert calibration.auroc(np.ones(5), np.arange(5) < 2) == 0.5  # all tied: chance
    assert math.isnan(calibration.auroc(score, np.zeros(700, bool)))  # no errors


def test_case_figures_use_the_foreground_region_and_pool_over_cases():
    ref = np.zeros((6, 6, 6), np.uint8)
    ref[1:4, 1:4, 1:4] = 1
    ref[3:5, 3:5, 3:5] = 2
    pred = ref.copy()
    pred[1, 1, 1:3] = 2  # 2 errors
    pred[5, 5, 5] = 1  # 1 error outside the reference foreground
    entropy = np.where(pred != ref, 0.9, 0.1).astype(np.float32)
    entropy[0, 0, 0] = 5.0  # background in both: outside the region, ignored
    conf = np.where(pred != ref, 0.6, 0.95).astype(np.float32)
    c = calibration.case_calibration(pred, ref, conf, entropy)
    region = (pred != 0) | (ref != 0)
    assert c.voxels == int(region.sum())
    assert c.error_rate == pytest.approx(3 / region.sum())
    assert c.auroc == 1.0
    wrong = (pred != ref)[region]
    assert c.ece == pytest.approx(_ece_loop(conf[region], ~wrong, 15))

    stats = calibration.CalibrationStats()
    stats.add("a", pred, ref, conf, entropy)
    flipped = np.where(pred != ref, 0.05, 0.5).astype(np.float32)  # entropy inverted
    stats.add("b", pred, ref, conf, flipped)
    s = stats.summary()
    assert s["cases"]["a"]["auroc_entropy_error"] == 1.0
    assert s["cases"]["b"]["auroc_entropy_error"] == 0.0
    assert s["voxels"] == 2 * c.voxels
    both = np.concatenate([entropy[region], flipped[region]])
    assert s["auroc_entropy_error"] == pytest.approx(
        _auroc_pairs(both, np.concatenate([wrong, wrong])), abs=1e-6
    )
    rel = s["reliability"]
    assert sum(rel["count"]) == s["voxels"] and len(rel["count"]) == calibration.BINS
    bins = zip(rel["count"], rel["accuracy"], rel["confidence"], strict=True)
    ece_from_bins = sum(n * abs(a - c) for n, a, c in bins if n) / s["voxels"]
    assert s["ece"] == pytest.approx(ece_from_bins, abs=1e-5)
    with pytest.raises(ValueError, match="shape"):
        calibration.case_calibration(pred, ref[:-1], conf, entropy)
