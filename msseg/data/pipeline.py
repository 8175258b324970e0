"""The grain training pipeline: cached cases → patches → augmentation → batches.

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
import threading
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
    foreground_ratio: float = 0.67  # share of patches centred on a labelled (non-background) voxel
    # share of the patches drawn from each dataset of a combined SPEC ("a,b"), in SPEC order
    # (normalised; 0 leaves a dataset out); () = every case equally often
    dataset_weights: tuple[float, ...] = ()
    flip_lr_prob: float = 0.5
    spatial_prob: float = 0.2  # rotation/scaling
    max_rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    # share of the patches read through a smooth random displacement field (augment.
    # elastic_offsets: unit-normal control points every elastic_grid_vox voxels, times
    # elastic_std_vox voxels; image linear, labels nearest); 0 = none, and no random draw
    elastic_prob: float = 0.0
    elastic_std_vox: float = 2.0
    elastic_grid_vox: float = 12.0
    # share of the patches cut as at the edge of a scan's field of view (augment.fov_crop: a
    # slab of up to fov_crop_max_fraction of the patch on one side becomes pad value / label
    # background, after the flip); 0 = none, and no random draw
    fov_crop_prob: float = 0.0
    fov_crop_max_fraction: float = 0.4
    intensity_prob: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    bias_std: float = 0.3
    contrast_range: tuple[float, float] = (0.75, 1.25)
    noise_std: float = 0.1
    synth_prob: float = 0.0  # SynthSeg-style random per-label intensities
    # share of the patches seen as a coarser scan (thick slices up to lowres_max_factor x the
    # voxel size on one axis, half that on the others; augment.random_resolution); 0 = none
    lowres_prob: float = 0.0
    lowres_max_factor: float = 4.0
    num_workers: int = 0  # grain worker processes (0: in-process)
    num_threads: int = 2
    prefetch: int = 4

    def __post_init__(self):
        for name in ("elastic_prob", "fov_crop_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not (np.isfinite(self.elastic_std_vox) and self.elastic_std_vox >= 0.0):
            raise ValueError(f"elastic_std_vox must be finite and >= 0, got {self.elastic_std_vox}")
        if not (np.isfinite(self.elastic_grid_vox) and self.elastic_grid_vox >= 1.0):
            raise ValueError(
                f"elastic_grid_vox must be finite and >= 1 (voxels), got {self.elastic_grid_vox}"
            )
        if not 0.0 <= self.fov_crop_max_fraction < 1.0:
            raise ValueError(
                f"fov_crop_max_fraction must be in [0, 1), got {self.fov_crop_max_fraction}"
            )
        if not 0.0 <= self.lowres_prob <= 1.0:
            raise ValueError(f"lowres_prob must be in [0, 1], got {self.lowres_prob}")
        if not self.lowres_max_factor >= 1.0:
            raise ValueError(f"lowres_max_factor must be >= 1, got {self.lowres_max_factor}")
        w = self.dataset_weights
        if w and (any(not np.isfinite(x) or x < 0 for x in w) or sum(w) <= 0):
            raise ValueError(f"dataset_weights {w} must be >= 0 with a positive sum")


# np.load parses a .npy header with ast.literal_eval, and CPython 3.11's AST constructor keeps
# its recursion depth in per-interpreter state: two threads parsing at once can fail with
# "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905), which
# stopped a training run at step 2420. The loader threads open files under this lock, once.
_NPY_HEADER_LOCK = threading.Lock()


class CaseSource:
    """Random access over the cases of one split of a preprocessed cache (arrays memory-mapped).

    dataset: keep only the cases of that dataset (a name of a combined cache's "dataset"); an
    element's "case" stays its index among all the split's cases.
    """

    def __init__(self, cache: str, split: str, dataset: str | None = None):
        self.cache = str(cache)
        self.split = split
        self.dataset = dataset
        manifest = load_manifest(cache)
        self.datasets = manifest["dataset"].split(",")  # SPEC order
        rows = [(k, r) for k, r in manifest["cases"].items() if r["split"] == split]
        self.index = [
            i for i, (_, r) in enumerate(rows) if dataset is None or r.get("dataset") == dataset
        ]
        self.records = [rows[i][1] for i in self.index]
        self.case_ids = [rows[i][0] for i in self.index]
        if not self.records:
            where = f" of dataset {dataset!r}" if dataset is not None else ""
            raise ValueError(f"{cache}: no '{split}' cases{where} in the manifest")
        self.protocol = labels_lib.Protocol.from_json(manifest["protocol"])
        # each case's arrays, opened once (image and label memory-mapped, read-only)
        self._opened: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        rec = self.records[index]
        arrays = self._opened.get(index)
        if arrays is None:
            root = Path(self.cache)
            with _NPY_HEADER_LOCK:
                arrays = self._opened.get(index)  # another thread may have opened it
                if arrays is None:
                    arrays = self._opened[index] = {
                        "image": np.load(root / rec["files"]["image"], mmap_mode="r"),
                        "label": np.load(root / rec["files"]["label"], mmap_mode="r"),
                        "fg": np.load(root / rec["files"]["fg"]),
                    }
        return {**arrays, "pad_value": rec["pad_value"], "case": self.index[index]}

    def __getstate__(self) -> dict:  # worker processes open their own
        return {**self.__dict__, "_opened": {}}

    def __repr__(self) -> str:
        return f"CaseSource(cache={self.cache!r}, split={self.split!r}, dataset={self.dataset!r})"


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
        displacement = None
        if cfg.elastic_prob and rng.random() < cfg.elastic_prob:  # no draw when off
            displacement = augment.elastic_offsets(
                rng, cfg.patch_size, cfg.elastic_std_vox, cfg.elastic_grid_vox
            )
        pad = element["pad_value"]
        img, lab = augment.extract_patch(
            image,
            label,
            centre,
            cfg.patch_size,
            matrix=matrix,
            displacement=displacement,
            pad_value=pad,
        )
        if rng.random() < cfg.flip_lr_prob:
            img, lab = augment.flip_lr(img, lab, self.lr_swap)
        if cfg.fov_crop_prob and rng.random() < cfg.fov_crop_prob:  # no draw when off
            img, lab = augment.fov_crop(img, lab, rng, cfg.fov_crop_max_fraction, pad)
        if rng.random() < cfg.synth_prob:
            img = augment.synth_intensities(lab, rng)
        if cfg.lowres_prob and rng.random() < cfg.lowres_prob:  # no draw when off
            img = augment.random_resolution(img, rng, cfg.lowres_max_factor)
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
    if cfg.dataset_weights:  # the mix's own seed drives the patches' randomness
        ds = _weighted(source, cfg.dataset_weights, shard, seed).seed(seed)
    else:
        ds = _shuffled(source, shard, seed, f"'{split}'")
    ds = ds.random_map(RandomPatch(cfg, source.protocol.lr_swap())).batch(
        cfg.batch_size, drop_remainder=True
    )
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=cfg.num_threads, prefetch_buffer_size=cfg.prefetch)
    )
    if cfg.num_workers > 0:
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=cfg.num_workers, per_worker_buffer_size=2)
        )
    return it_ds


def _shuffled(
    source: CaseSource, shard: grain.sharding.ShardOptions, seed: int, what: str
) -> grain.MapDataset:
    """This process's slice of `source`, reshuffled every epoch, repeated forever."""
    ds = grain.MapDataset.source(source)[shard.shard_index :: shard.shard_count]
    if len(ds) == 0:
        raise ValueError(
            f"{source.cache}: shard {shard.shard_index}/{shard.shard_count} of {what} is empty"
        )
    return ds.seed(seed).shuffle().repeat(None)


def _weighted(
    source: CaseSource, weights: tuple[float, ...], shard: grain.sharding.ShardOptions, seed: int
) -> grain.MapDataset:
    """Each dataset of a combined cache shuffled and repeated on its own, then interleaved so
    that dataset k gives weights[k] / sum(weights) of the cases (grain's MapDataset.mix)."""
    if len(weights) != len(source.datasets):
        raise ValueError(
            f"{source.cache}: dataset_weights {tuple(weights)} has {len(weights)} weights for "
            f"the {len(source.datasets)} datasets {source.datasets} of the cache (SPEC order)"
        )
    parts, shares = [], []
    for k, (name, w) in enumerate(zip(source.datasets, weights, strict=True)):
        if w > 0:
            part = CaseSource(source.cache, source.split, dataset=name)
            seq = np.random.SeedSequence([seed, k]).generate_state(1)[0]
            parts.append(_shuffled(part, shard, int(seq), f"'{source.split}' of {name!r}"))
            shares.append(float(w))
    return grain.MapDataset.mix(parts, shares)


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
