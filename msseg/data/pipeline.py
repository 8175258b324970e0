"""The grain training pipeline: cached cases → patches → augmentation → label pyramid → batches.

Built on grain's Dataset API: a random-access source over the preprocessed cache, sharded
by JAX process, shuffled (reshuffled every epoch) and repeated forever; all randomness
comes from grain's per-record `random_map` generator, so the stream is a function of the
seed alone, and its iterator state is saved/restored with orbax
(`grain.checkpoint.CheckpointSave` / `CheckpointRestore`). Batches are dicts:

  image    [B, X, Y, Z, 1] float32  normalised T1 patch
  label    [B, X, Y, Z]    uint8    protocol ids (leaves, nodes, named sets, IGNORE)
  case     [B] int32 index of the case in the source

The train step turns the ids into one-hot targets over the protocol's ids and pools them to
each depth on the device (msseg.train.step.at_depth), so a partial label keeps its meaning
("one of these leaves") through the pyramid; `id_fractions` is the same rule in numpy.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import grain
import numpy as np

from msseg import labels as labels_lib
from msseg.data import augment
from msseg.data.preprocess import load_manifest


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    patch_size: tuple[int, int, int] = (64, 64, 64)
    batch_size: int = 2
    num_depths: int = 4  # label pyramid levels; the patch must divide by 2^(num_depths-1)
    foreground_ratio: float = 0.67  # share of patches centred on a labelled (non-background) voxel
    flip_lr_prob: float = 0.5
    spatial_prob: float = 0.2  # rotation/scaling
    max_rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    intensity_prob: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    bias_std: float = 0.3
    contrast_range: tuple[float, float] = (0.75, 1.25)
    noise_std: float = 0.1
    synth_prob: float = 0.0  # SynthSeg-style random per-label intensities
    num_workers: int = 0  # grain worker processes (0: in-process)
    num_threads: int = 2
    prefetch: int = 4

    def __post_init__(self):
        step = 2 ** (self.num_depths - 1)
        if any(p % step for p in self.patch_size):
            raise ValueError(
                f"patch_size {self.patch_size} must divide by 2^(num_depths-1) = {step}"
            )


class CaseSource:
    """Random access over the cases of one split of a preprocessed cache (arrays memory-mapped)."""

    def __init__(self, cache: str, split: str):
        self.cache = str(cache)
        self.split = split
        manifest = load_manifest(cache)
        self.records = [r for r in manifest["cases"].values() if r["split"] == split]
        self.case_ids = [k for k, r in manifest["cases"].items() if r["split"] == split]
        if not self.records:
            raise ValueError(f"{cache}: no '{split}' cases in the manifest")
        self.protocol = labels_lib.Protocol.from_json(manifest["protocol"])

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        rec = self.records[index]
        root = Path(self.cache)
        return {
            "image": np.load(root / rec["files"]["image"], mmap_mode="r"),
            "label": np.load(root / rec["files"]["label"], mmap_mode="r"),
            "fg": np.load(root / rec["files"]["fg"]),
            "pad_value": rec["pad_value"],
            "case": index,
        }

    def __repr__(self) -> str:
        return f"CaseSource(cache={self.cache!r}, split={self.split!r})"


class RandomPatch(grain.transforms.RandomMap):
    """Case → augmented patch {image [X,Y,Z,1], label [X,Y,Z], case}."""

    def __init__(self, cfg: PipelineConfig, lr_swap: np.ndarray):
        self.cfg = cfg
        self.lr_swap = lr_swap

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        cfg = self.cfg
        image, label, fg = element["image"], element["label"], element["fg"]
        if len(fg) and rng.random() < cfg.foreground_ratio:
            ids = np.unique(fg[:, 0])
            rows = fg[fg[:, 0] == rng.choice(ids)]  # each present id equally likely
            centre = rows[rng.integers(len(rows)), 1:].astype(np.float64)
        else:
            centre = np.array([rng.integers(n) for n in image.shape], np.float64)
        matrix = None
        if rng.random() < cfg.spatial_prob:
            matrix = augment.random_rotation_scaling(rng, cfg.max_rotation_deg, cfg.scale_range)
        img, lab = augment.extract_patch(
            image, label, centre, cfg.patch_size, matrix=matrix, pad_value=element["pad_value"]
        )
        if rng.random() < cfg.flip_lr_prob:
            img, lab = augment.flip_lr(img, lab, self.lr_swap)
        if rng.random() < cfg.synth_prob:
            img = augment.synth_intensities(lab, rng)
        img = augment.intensity_augment(
            img,
            rng,
            prob=cfg.intensity_prob,
            gamma_range=cfg.gamma_range,
            bias_std=cfg.bias_std,
            contrast_range=cfg.contrast_range,
            noise_std=cfg.noise_std,
        )
        return {"image": img[..., None], "label": lab, "case": np.int32(element["case"])}


def id_fractions(label: np.ndarray, num_ids: int, num_depths: int) -> tuple[np.ndarray, ...]:
    """[X, Y, Z] ids → per depth d, [X/2^d, Y/2^d, Z/2^d, num_ids] one-hot average-pooled by
    2^d (IGNORE rows are zero, so a cell's row sums to its labelled fraction)."""
    table = np.zeros((256, num_ids), np.float32)
    table[np.arange(num_ids), np.arange(num_ids)] = 1.0
    level = table[label]
    out = [level]
    for _ in range(1, num_depths):
        x, y, z, k = level.shape
        level = level.reshape(x // 2, 2, y // 2, 2, z // 2, 2, k).mean(axis=(1, 3, 5))
        out.append(level)
    return tuple(out)


def make_dataset(
    cache: str,
    split: str,
    cfg: PipelineConfig,
    *,
    seed: int,
    shard: grain.sharding.ShardOptions | None = None,
) -> grain.IterDataset:
    """The infinite, shuffled, augmented batch stream of `split` for this process's shard.

    shard: which slice of the cases this process reads; default ShardByJaxProcess (call it
    after jax.distributed.initialize). Iterate with iter(ds); save the iterator's position
    with grain.checkpoint.CheckpointSave(it) in an orbax Composite.
    """
    source = CaseSource(cache, split)
    shard = shard or grain.sharding.ShardByJaxProcess(drop_remainder=True)
    ds = grain.MapDataset.source(source)[shard.shard_index :: shard.shard_count]
    if len(ds) == 0:
        raise ValueError(
            f"{cache}: shard {shard.shard_index}/{shard.shard_count} of '{split}' is empty"
        )
    ds = (
        ds.seed(seed)
        .shuffle()
        .repeat(None)
        .random_map(RandomPatch(cfg, source.protocol.lr_swap()))
        .batch(cfg.batch_size, drop_remainder=True)
    )
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=cfg.num_threads, prefetch_buffer_size=cfg.prefetch)
    )
    if cfg.num_workers > 0:
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=cfg.num_workers, per_worker_buffer_size=2)
        )
    return it_ds


def measure_throughput(
    cache: str, split: str, cfg: PipelineConfig, *, batches: int, seed: int = 0
) -> dict:
    """Patches/s of the pipeline after its first batch (worker start-up is timed separately)."""
    start = time.perf_counter()
    it = iter(make_dataset(cache, split, cfg, seed=seed, shard=grain.sharding.NoSharding()))
    next(it)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - start
    return {
        "num_workers": cfg.num_workers,
        "patch_size": list(cfg.patch_size),
        "batch_size": cfg.batch_size,
        "batches": batches,
        "first_batch_s": round(first, 3),
        "patches_per_s": round(batches * cfg.batch_size / seconds, 2),
    }
