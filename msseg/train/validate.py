"""Validation during training: Dice per leaf, level and depth of the validation cases.

Two ways (`train.val_windows`):
- windows (the default): each validation case is segmented exactly as `tools/evaluate.py`
  segments it — the raw scan prepared as for training, sliding windows of the training patch
  blended with a Gaussian (msseg.inference.predict.Segmenter), probabilities mapped back to
  the scan's own grid, decided top-down through the tree — and scored against its raw label
  map on that grid, so the checkpoint kept as best is chosen on the number users get
  (`WindowValidator`). Without the raw files (a run given only `data.cache`) the cache's
  prepared arrays are segmented the same way and scored on the cache grid.
- whole volumes (below): every case as one padded batch on the cache grid; cheaper, but
  GroupNorm then normalises over a whole head instead of a training-sized patch, which the
  network never saw in training (a deterministic model lost 5 Dice points that way).

Whole volumes: depth d means the volume entered the network at depth d: the image average-
pooled by 2^d goes in through stem d and is segmented there (sampled with the `sampler`
config, or the deterministic head), and is scored against the ground truth pooled to the
same grid. Every case is padded to one common shape (a multiple of the model's coarsest
stride) so each depth compiles once; padding is scored as unlabelled. Reference ids at depth
d are the majority id of each 2^d cell (leaf, node or named set; IGNORE where less than half
is labelled), and a label is scored over the voxels whose reference decides it (a partial
label straddling it and IGNORE are left out, as in msseg.evaluation). Dice follows
the evaluation's empty-mask policy (both empty: 1).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from msseg import io
from msseg import labels as labels_lib
from msseg.data import datasets
from msseg.data.pipeline import CaseSource, id_fractions
from msseg.diffusion import schedule as sch
from msseg.diffusion import segment as seg
from msseg.evaluation import report
from msseg.inference import predict
from msseg.models.resize import downsample
from msseg.models.unet import MultiscaleUNet
from msseg.train.state import ValMode


@dataclasses.dataclass
class ValSet:
    images: np.ndarray  # [N, X, Y, Z, 1] float32, padded with each case's background value
    targets: dict[int, np.ndarray]  # depth → [N, X/2^d, Y/2^d, Z/2^d] uint8 ids, IGNORE = unscored
    protocol: labels_lib.Protocol


def load_valset(
    cache: str, split: str, depths: tuple[int, ...], multiple: int, max_cases: int = 0
) -> ValSet:
    """The cases of `split` (the first `max_cases`, 0 = all) as one padded batch."""
    source = CaseSource(cache, split)
    n = len(source) if max_cases <= 0 else min(max_cases, len(source))
    cases = [source[i] for i in range(n)]
    step = max(multiple, 2 ** max(depths))
    shape = np.max([c["image"].shape for c in cases], axis=0)
    shape = tuple(int(-(-s // step) * step) for s in shape)
    images = np.zeros((n, *shape, 1), np.float32)
    labels = np.full((n, *shape), labels_lib.IGNORE, np.uint8)
    for i, c in enumerate(cases):
        sx, sy, sz = c["image"].shape
        images[i] = c["pad_value"]
        images[i, :sx, :sy, :sz, 0] = c["image"]
        labels[i, :sx, :sy, :sz] = c["label"]
    targets = {d: np.stack([pooled_ids(lab, d, source.protocol) for lab in labels]) for d in depths}
    return ValSet(images, targets, source.protocol)


def make_segmenter(
    model: MultiscaleUNet,
    s: sch.Schedule | None,
    sampler: seg.SamplerConfig,
    target: sch.Target,
    mode: ValMode,
    tree: labels_lib.LevelTables | None = None,
    scale: float = 1.0,
):
    """jit-able `(params, images, key, depth) -> [N, ...] leaf ids` at entry depth `depth`
    (decided top-down through the label tree when `tree` is given)."""

    def run(params, images, key, depth: int):
        x = downsample(images, 2**depth)
        if mode == ValMode.DETERMINISTIC or not model.cfg.diffusion:
            out = seg.segment_deterministic(model, params, x, depth, tree)
        else:
            out = seg.segment(model, params, x, key, s, sampler, target, depth, tree, scale)
        return out["labels"]

    return jax.jit(run, static_argnums=(3,))


def dice_scores(pred: np.ndarray, ref: np.ndarray, protocol: labels_lib.Protocol) -> dict:
    """Leaf ids `pred` [N, ...] and reference ids `ref` [N, ...] (or lists of N cases of any
    shapes; partial ids and IGNORE allowed) → the mean over the N cases of each case's
    `msseg.evaluation.report.level_dice`: what tools/evaluate.py reports, scored the same way."""
    cases = [report.level_dice(p, r, protocol) for p, r in zip(pred, ref, strict=True)]
    return {n: float(np.mean([c[n] for c in cases])) for n in cases[0]}


@dataclasses.dataclass(frozen=True)
class WindowCase:
    name: str
    image: io.Volume | np.ndarray  # the raw scan, or the cache's prepared image [X, Y, Z]
    ref: np.ndarray  # [X, Y, Z] uint8 reference ids on the grid the case is scored on


def load_window_cases(
    cache: str, split: str, spec: str = "", protocol: str = "", max_cases: int = 0, **resolve
) -> list[WindowCase]:
    """The cases of `split` as evaluate.py reads them: the raw scans and label maps of the
    dataset `spec` (`datasets.resolve` keywords in `resolve`); without a spec, or where a raw
    file is gone, the cache's arrays."""
    source = CaseSource(cache, split)
    n = len(source) if max_cases <= 0 else min(max_cases, len(source))
    raw = {}
    if spec:
        dataset = datasets.resolve(spec, protocol=protocol or None, **resolve)
        raw = {c.case_id: c for c in dataset.cases if c.label}
    cases = []
    for i in range(n):
        name, c = source.case_ids[i], raw.get(source.case_ids[i])
        if c is not None and Path(c.image).is_file() and Path(c.label).is_file():
            label = io.load_label(c.label)
            codes = dict(c.codes) if c.codes is not None else None
            ref = source.protocol.encode(label.data, c.label, codes)
            cases.append(WindowCase(name, io.load_image(c.image), ref))
        else:
            rec = source[i]
            image = np.asarray(rec["image"], np.float32)
            cases.append(WindowCase(name, image, np.asarray(rec["label"], np.uint8)))
    return cases


class WindowValidator:
    """Segments `WindowCase`s with the params it is given, as tools/evaluate.py does.

    `model` is an in-memory `msseg.inference.model.LoadedModel` (its params are replaced by
    the ones validated, as host arrays, so validation runs on one device of each process and
    compiles once per entry depth)."""

    def __init__(self, model, sampler: seg.SamplerConfig, depths, overlap: float, batch: int):
        self.model, self.depths = model, tuple(depths)
        opts = predict.Options(sampler, overlap=overlap, batch=batch)
        self.segmenters = {
            d: predict.Segmenter(model, dataclasses.replace(opts, depth=d)) for d in self.depths
        }

    def __call__(self, params, cases: list[WindowCase], key: jax.Array) -> dict:
        params = jax.tree.map(to_host, params)
        protocol = self.model.protocol
        tree = protocol.level_tables()
        metrics = {}
        for d in self.depths:
            segmenter = self.segmenters[d].with_params(params)
            preds, refs = [], []
            for c in cases:
                ck = predict.file_key(key, c.name)
                if isinstance(c.image, io.Volume):
                    pred = segmenter.segment_volume(c.image, ck).labels
                    ref = c.ref
                else:  # the cache grid, pooled to the entry depth like `load_valset`
                    f = 2**d
                    image = np.pad(c.image, [(0, -n % f) for n in c.image.shape], mode="edge")
                    image = np.asarray(downsample(image[None, ..., None], f))[0, ..., 0]
                    probs, _, _ = segmenter.segment_array(image, ck)
                    pred = np.asarray(seg.tree_labels(probs, tree))
                    ref = pooled_ids(c.ref, d, protocol)
                preds.append(pred)
                refs.append(ref)
            scores = dice_scores(preds, refs, protocol)
            metrics.update({f"val/depth{d}/{n}": v for n, v in scores.items()})
        metrics["val_dice"] = metrics[f"val/depth{self.depths[0]}/leaves"]
        return metrics


def pooled_ids(label: np.ndarray, depth: int, protocol: labels_lib.Protocol) -> np.ndarray:
    """[X, Y, Z] ids → reference ids at depth d: the majority id of each 2^d cell (IGNORE where
    less than half of it is labelled: unlabelled or padding); sizes are padded with IGNORE to
    a multiple of 2^d."""
    f = 2**depth
    pad = [(0, -n % f) for n in label.shape]
    lab = np.pad(label, pad, constant_values=labels_lib.IGNORE)
    soft = id_fractions(lab, protocol.num_ids, depth + 1)[depth]
    ids = soft.argmax(-1).astype(np.uint8)
    ids[soft.sum(-1) < 0.5] = labels_lib.IGNORE
    return ids


def to_host(x: jax.Array) -> np.ndarray:
    """A replicated (possibly multi-process) array → numpy, from this process's copy."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    return np.asarray(x.addressable_data(0))


def validate(segmenter, params, valset: ValSet, key: jax.Array) -> dict:
    """Flat metrics: `val/depth<d>/<name>`, `val/depth<d>/level<l>`, and `val_dice` (mean Dice
    of the foreground leaves at the finest validated depth)."""
    metrics = {}
    depths = sorted(valset.targets)
    for d in depths:
        pred = to_host(segmenter(params, valset.images, key, d))
        scores = dice_scores(pred, valset.targets[d], valset.protocol)
        metrics.update({f"val/depth{d}/{name}": v for name, v in scores.items()})
    metrics["val_dice"] = metrics[f"val/depth{depths[0]}/leaves"]
    return metrics
