"""Validation during training: segment whole validation volumes, Dice per leaf, level and depth.

Depth d means the volume entered the network at depth d: the image average-pooled by 2^d goes
in through stem d and is segmented there (sampled with the `sampler` config, or the
deterministic head), and is scored against the ground truth pooled to the same grid. Every
case is padded to one common shape (a multiple of the model's coarsest stride) so each depth
compiles once; padding is scored as unlabelled. Reference ids at depth d are the majority id
of each 2^d cell (leaf, node or named set; IGNORE where less than half is labelled), and a
label is scored over the voxels whose reference decides it (a partial label straddling it and
IGNORE are left out, as in msseg.evaluation). Dice follows DESIGN.md's empty-mask policy
(both empty: 1).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from msseg import labels as labels_lib
from msseg.data.pipeline import CaseSource, id_fractions
from msseg.diffusion import schedule as sch
from msseg.diffusion import segment as seg
from msseg.models.resize import downsample
from msseg.models.unet import MultiscaleUNet


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
    targets = {}
    for d in depths:
        out = []
        for lab in labels:
            soft = id_fractions(lab, source.protocol.num_ids, d + 1)[d]
            ids = soft.argmax(-1).astype(np.uint8)
            ids[soft.sum(-1) < 0.5] = labels_lib.IGNORE  # mostly unlabelled or padding
            out.append(ids)
        targets[d] = np.stack(out)
    return ValSet(images, targets, source.protocol)


def make_segmenter(
    model: MultiscaleUNet,
    s: sch.Schedule | None,
    sampler: seg.SamplerConfig,
    target: sch.Target,
    mode: str,
    tree: labels_lib.LevelTables | None = None,
    scale: float = 1.0,
):
    """jit-able `(params, images, key, depth) -> [N, ...] leaf ids` at entry depth `depth`
    (decided top-down through the label tree when `tree` is given)."""

    def run(params, images, key, depth: int):
        x = downsample(images, 2**depth)
        if mode == "deterministic" or not model.cfg.diffusion:
            out = seg.segment_deterministic(model, params, x, depth, tree)
        else:
            out = seg.segment(model, params, x, key, s, sampler, target, depth, tree, scale)
        return out["labels"]

    return jax.jit(run, static_argnums=(3,))


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    total = pred.sum() + ref.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(pred, ref).sum() / total)


def dice_scores(pred: np.ndarray, ref: np.ndarray, protocol: labels_lib.Protocol) -> dict:
    """Leaf ids `pred`, reference ids `ref` (partial ids and IGNORE allowed) → {id name: mean
    Dice over cases} for every non-background id of every tree level, and {"level<l>": mean
    of that level's ids}. Each label is scored where the reference decides it."""
    inside, outside = protocol.relations()
    names = protocol.id_names()
    pred = pred.astype(np.uint8)
    out, levels = {}, {}
    for level, ids in enumerate(protocol.levels()):
        level_scores = []
        for i in ids:
            if i == 0:  # background
                continue
            if names[i] not in out:
                decided = inside[i][ref] | outside[i][ref]
                per_case = [
                    dice(inside[i][p] & m, inside[i][r] & m)
                    for p, r, m in zip(pred, ref, decided, strict=True)
                ]
                out[names[i]] = float(np.mean(per_case))
            level_scores.append(out[names[i]])
        levels[f"level{level}"] = float(np.mean(level_scores)) if level_scores else float("nan")
    return {**out, **levels}


def to_host(x: jax.Array) -> np.ndarray:
    """A replicated (possibly multi-process) array → numpy, from this process's copy."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    return np.asarray(x.addressable_data(0))


def validate(segmenter, params, valset: ValSet, key: jax.Array) -> dict:
    """Flat metrics: `val/depth<d>/<name>`, `val/depth<d>/level<l>`, and `val_dice` (mean Dice
    of the foreground leaves at the finest validated depth)."""
    k = valset.protocol.num_leaves
    metrics = {}
    depths = sorted(valset.targets)
    for d in depths:
        pred = to_host(segmenter(params, valset.images, key, d))
        scores = dice_scores(pred, valset.targets[d], valset.protocol)
        metrics.update({f"val/depth{d}/{name}": v for name, v in scores.items()})
        leaves = [scores[n] for n in valset.protocol.id_names()[1:k]]
        metrics[f"val/depth{d}/leaves"] = float(np.mean(leaves))
    metrics["val_dice"] = metrics[f"val/depth{depths[0]}/leaves"]
    return metrics
