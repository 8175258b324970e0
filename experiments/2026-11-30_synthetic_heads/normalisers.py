"""How far does each intensity normaliser move the brain when the head is there? For N
validation subjects of mni152-heads and their skull-stripped twins (same image, outside the
true brain set to 0), both resampled to 2 mm with their own head masks (prepare.head_mask):
the median |full - stripped| of the normalised brain voxels in units of the stripped brain's
interquartile range, and the ratio of the two IQRs (1 = same spread).

  python experiments/2026-11-30_synthetic_heads/normalisers.py N
"""

import sys

import numpy as np

from msseg import io
from msseg.data import mni152, prepare


def zscore_head(img, mask):  # msseg's: clip to 0.5/99.5 % inside the head, z-score there
    return prepare.normalize(img, mask, (0.5, 99.5))


def percentiles_head(img, mask):  # 1st/99th percentiles inside the head to 0/1
    lo, hi = np.percentile(img[mask], (1, 99))
    return (np.clip(img, lo, hi) - lo) / (hi - lo)


def median_iqr_head(img, mask):  # clip as msseg, then median 0 and IQR 1 inside the head
    v = img[mask]
    lo, hi = np.percentile(v, (0.5, 99.5))
    q1, q2, q3 = np.percentile(np.clip(v, lo, hi), (25, 50, 75))
    return (np.clip(img, lo, hi) - q2) / (q3 - q1)


CANDIDATES = {
    "zscore in head (msseg)": zscore_head,
    "percentiles in head": percentiles_head,
    "median/IQR in head": median_iqr_head,
}


def main(n: int) -> None:
    template, cfg = mni152.load_template(), mni152.EMBEDDED["mni152-heads"]
    res = {k: [] for k in CANDIDATES}
    for i in range(n):
        rng = np.random.default_rng(mni152._subject_seed(cfg, "val", i))
        img, lab, aff = mni152.synthesize_subject(template, cfg, rng)
        brain, _ = io.resample((lab > 0).astype(np.float32), aff, (2.0,) * 3, order=0)
        brain = brain > 0
        vols = []
        for im in (img.astype(np.float32), np.where(lab > 0, img, 0).astype(np.float32)):
            data, _ = io.resample(im, aff, (2.0,) * 3, order=1)
            vols.append((data, prepare.head_mask(data)))
        for k, f in CANDIDATES.items():
            full, stripped = f(*vols[0])[brain], f(*vols[1])[brain]
            q1, q3 = np.percentile(stripped, (25, 75))
            p1, p3 = np.percentile(full, (25, 75))
            res[k].append((np.median(np.abs(full - stripped)) / (q3 - q1), (p3 - p1) / (q3 - q1)))
    print("| normaliser | median shift / IQR (mean, max) | IQR ratio (mean) |")
    print("|---|---|---|")
    for k, v in res.items():
        v = np.array(v)
        print(f"| {k} | {v[:, 0].mean():.3f}, {v[:, 0].max():.3f} | {v[:, 1].mean():.3f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]))
