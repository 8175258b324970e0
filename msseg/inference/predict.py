"""Segment NIfTI files with a model directory: training preprocessing, windows, native space.

Per input file: load (canonical RAS+), `prepare_image` (resample to the model's spacing,
crop the head, normalise: the training preprocessing), pad to the window, segment every
window (one jitted call per batch of windows, ensembles inside), blend with Gaussian
weights, then map the blended leaf probabilities back onto the input's own grid (linear
interpolation of each leaf's probability, background outside the crop, chunk by chunk) and
decide each voxel's leaf top-down through the protocol's tree levels (a leaf always lies
under the node chosen at every coarser level), and write:

- `<name>_seg.nii.gz`: raw label codes on the input's grid and affine: the leaves, or the
  ids of one tree level (`Options.level`);
- `<name>_seg_level<l>.nii.gz`: with `level="all"`, the ids of every tree level l (coarse
  to fine), each the leaf map mapped to its ancestors in that level;
- `<name>_uncertainty.nii.gz`: predictive entropy (nats) of the fused probabilities;
- `<name>_variance.nii.gz`: with an ensemble (diffusion models, ensemble > 1), the total
  variance of the members' leaf probability vectors (`total_variance`), on the entropy's path;
- `<name>_qc.png`: three mid slices with the segmentation over the image;
- one row of `volumes.csv`: mm³ per leaf and per tree node / named set;
- once per output folder, with the first case: the protocol's colour tables
  `labels_lut.txt` (FreeSurfer) and `labels_itksnap.txt` (ITK-SNAP), keyed by raw code.

A case's files (and the new volumes.csv) are first written under hidden temporary names in
the output folder and renamed over the old ones only once every one is written (`Staging`):
a case that fails leaves the outputs of an earlier run untouched. The loop over files, on
one process or several, is `cohort.run`. docs/outputs.md describes every file, its units,
and how to open it in a viewer.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import enum
import glob
import io as _io
import os
import re
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from msseg import files, io, names
from msseg.data.prepare import prepare_image
from msseg.diffusion import samplers
from msseg.diffusion import segment as seg
from msseg.diffusion.sampler_config import STEP_SAMPLERS, choice
from msseg.errors import InputError
from msseg.inference import model as model_lib
from msseg.inference import postprocess as post
from msseg.inference import window
from msseg.labels import LevelTables, Protocol

_FLIP_STREAM = 0x5EED_F11B  # the flipped pass's noise: its own stream of the case's key
_STRIP_STREAM = 0x5EED_57B1  # the stripping model's noise: its own stream of the case's key
_BOUND_STREAM = 0x5EED_B0DD  # the bounding stripper's noise: its own stream of the case's key
WHOLE = "whole"  # `Options.window`: the whole volume in one window
LEVELS = ("leaves", "all")
"""`Options.level` besides a tree level number: the leaves only, or the leaves and every level."""

CHUNK_VALUES = 1 << 24
"""Leaf probabilities held at once on the input's grid by `to_native` (float32 values)."""


class TTA(enum.StrEnum):
    """Test-time augmentation: none, or the left/right mirror image segmented as well, its
    probabilities mirrored back (left and right leaves swapped) and averaged in."""

    NONE = "none"
    FLIP = "flip"


TTAS = tuple(t.value for t in TTA)


@dataclasses.dataclass(frozen=True)
class Options:
    sampler: seg.SamplerConfig
    seed: int = 0
    overlap: float = 0.5
    batch: int = 1  # windows per compiled call (the ensemble multiplies it)
    depth: int = 0  # enter at this depth: the input is resampled to spacing * 2^depth
    level: int | str = "leaves"  # "leaves" | "all" | a tree level (0 = coarsest)
    # > 0: simulate a scan acquired at spacing * 2^input_depth (the image is resampled to
    # that grid first, then to the entry depth's grid): how a model fares on a low-res scan
    input_depth: int = 0
    tta: TTA = TTA.NONE
    # devices the windows are sharded over (a `data` mesh axis; `batch` windows each): 0 =
    # every local device of an accelerator backend, one on the CPU (where one device already
    # uses every core); n = the first n local devices
    devices: int = 1
    # devices each window is split over along its first axis (a `space` mesh axis, GSPMD
    # halos between neighbours; the local route): a window larger than one device holds.
    # The mesh is `devices` x `space` local devices (devices=0: every accelerator / space)
    space: int = 1
    # window size in voxels at the model's spacing (each a multiple of 2^(depths-1), the first
    # of 2^(depths-1) x `space`); None = the model's training patch; "whole" = the whole
    # padded volume in one window (one compile per volume shape)
    window: tuple[int, int, int] | str | None = None
    # what is done to the decided labels on the input's grid (postprocess.py): "largest"
    # keeps the brain's largest connected piece only
    postprocess: post.Postprocess = post.Postprocess.NONE
    # a full-head model that strips each scan first: its brain (`postprocess.brain_mask`)
    # is kept and every other voxel set to 0 before `model` segments it
    strip_model: model_lib.LoadedModel | None = dataclasses.field(
        default=None, compare=False, repr=False
    )
    # the opening radius of the stripping model's brain (mm; 0 = none): thin bridges to false
    # brain in the skull base or the neck are cut, a brain thinner than 2x this is lost
    strip_open_mm: float = post.OPEN_MM
    # a second stripper (e.g. a coarser one that sees the whole head): the strip model's brain
    # is kept only within `post.BOUND_MM` of its brain (opened likewise)
    strip_bound_model: model_lib.LoadedModel | None = dataclasses.field(
        default=None, compare=False, repr=False
    )

    def __post_init__(self):
        object.__setattr__(self, "tta", choice(TTA, self.tta, "tta"))
        object.__setattr__(
            self, "postprocess", choice(post.Postprocess, self.postprocess, "postprocess")
        )
        if not isinstance(self.devices, int) or isinstance(self.devices, bool) or self.devices < 0:
            raise ValueError(f"devices must be an integer >= 0, got {self.devices!r}")
        if not isinstance(self.space, int) or isinstance(self.space, bool) or self.space < 1:
            raise ValueError(f"space must be an integer >= 1, got {self.space!r}")
        w = self.window
        if isinstance(w, str | list | tuple) and w != WHOLE:
            ok = (
                not isinstance(w, str)
                and len(w) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in w)
            )
            if not ok:
                raise ValueError(f"window must be 3 positive integers or {WHOLE!r}, got {w!r}")
            object.__setattr__(self, "window", tuple(w))
        elif w is not None and w != WHOLE:
            raise ValueError(f"window must be 3 positive integers or {WHOLE!r}, got {w!r}")
        r = self.strip_open_mm
        if isinstance(r, bool) or not isinstance(r, int | float) or not 0 <= r < float("inf"):
            raise ValueError(f"strip_open_mm must be a number >= 0, got {r!r}")
        if self.strip_bound_model is not None and self.strip_model is None:
            raise ValueError("strip_bound_model bounds a strip_model's brain: give both")
        if not isinstance(self.input_depth, int) or self.input_depth < 0:
            raise ValueError(f"input_depth must be an integer >= 0, got {self.input_depth!r}")
        level = self.level
        if isinstance(level, str):
            ok = level in LEVELS
        else:
            ok = isinstance(level, int) and not isinstance(level, bool) and level >= 0
        if not ok:
            raise ValueError(
                f"level must be 'leaves', 'all' or a tree level number, got {self.level!r}"
            )


def parse_level(text: str) -> int | str:
    """A `--level` value: "leaves", "all" or a tree level number (>= 0)."""
    text = text.strip()
    if text in LEVELS:
        return text
    if not re.fullmatch(r"[0-9]+", text):
        raise ValueError(f"level must be 'leaves', 'all' or a tree level number, got {text!r}")
    return int(text)


def check_level(level: int | str, protocol: Protocol) -> None:
    """Raises ValueError if `level` is a number outside the protocol's tree levels."""
    n = len(protocol.levels())
    if not isinstance(level, str) and not 0 <= level < n:
        raise ValueError(
            f"level {level} is out of range: protocol {protocol.name!r} has tree levels "
            f"0..{n - 1} (coarse to fine)"
        )


@dataclasses.dataclass(frozen=True)
class Result:
    name: str
    labels: np.ndarray  # [X, Y, Z] leaf ids on the input's canonical grid
    entropy: np.ndarray  # [X, Y, Z] float32 on the input's canonical grid
    confidence: np.ndarray  # [X, Y, Z] float32: the decided leaf's fused probability
    volume: io.Volume
    seconds: float
    windows: int
    # [X, Y, Z] float32 on the input's canonical grid: the ensemble's `total_variance`;
    # None without an ensemble (no variance file is written)
    variance: np.ndarray | None = None


Progress = Callable[[int, int], None]
"""(windows done, windows in all) after each batch of windows: `progress.Ticker.update`."""


def total_variance(variance, num_classes: int, ensemble: int):
    """`seg.fuse`'s "variance" (the members' sample variance, ddof 1, mean over the K
    leaves) → the total variance of the E members' probability vectors: the sum over leaves
    of the population variance (ddof 0), i.e. the mean squared distance of the members from
    their mean. Exactly 0 where all members agree (as fuse's is); below 1 (members one-hot on
    different leaves give the most, 1 - 1/E for E <= K)."""
    return variance * (num_classes * (ensemble - 1) / ensemble)


def window_devices(n: int) -> list:
    """The local devices windows are sharded over (`Options.devices`)."""
    local = jax.local_devices()
    if n == 0:
        return local if local[0].platform != "cpu" else local[:1]
    if n > len(local):
        raise ValueError(
            f"devices={n}, but this process has {len(local)} local {local[0].platform} device(s)"
        )
    return local[:n]


def mesh_devices(opts: Options) -> np.ndarray:
    """The [data, space] grid of local devices a run with `opts` uses (`Options.devices` on
    the data axis, `Options.space` on the space axis)."""
    data = len(window_devices(opts.devices))
    local = jax.local_devices()
    if opts.devices == 0 and opts.space > 1:  # every accelerator: as many windows as fit
        data = max(data // opts.space, 1)
    if data * opts.space > len(local):
        raise ValueError(
            f"a mesh of {data} x space={opts.space} devices, but this process has {len(local)} "
            f"local {local[0].platform} device(s)"
        )
    return np.array(local[: data * opts.space], dtype=object).reshape(data, opts.space)


def mesh_text(opts: Options) -> str:
    """The mesh a run with `opts` uses, for its log: devices, their kind, processes."""
    grid = mesh_devices(opts)
    data, space = grid.shape
    split = f", each window split over {space} along its first axis" if space > 1 else ""
    return (
        f"windows over {grid.size} {grid.flat[0].platform} device(s) (mesh data={data} x "
        f"space={space}, {opts.batch} window(s) per data shard{split}), process "
        f"{jax.process_index() + 1} of {jax.process_count()}"
    )


def file_key(key: jax.Array, name: str) -> jax.Array:
    """The key of input `name`: the same file gets the same noise whatever else is in the batch."""
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


class Segmenter:
    """A model plus sampler options; compiles one batched call per window shape.

    Settings are checked here, before any file is read: the entry depths the sampler needs,
    the overlap, the output level, and the DDIM steps against the schedule. Labels are
    decided top-down through the model's protocol tree.
    """

    def __init__(self, model: model_lib.LoadedModel, opts: Options):
        check_level(opts.level, model.protocol)
        if not 0 <= opts.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {opts.overlap}")
        if opts.batch < 1:
            raise ValueError(f"batch must be >= 1, got {opts.batch}")
        if model.diffusion and opts.sampler.kind in STEP_SAMPLERS:
            samplers.chain_timesteps(
                opts.sampler.kind, model.schedule.num_timesteps, opts.sampler.steps
            )
        self.model, self.opts = model, opts
        self.fn = model_lib.segment_batch(model, opts.sampler, opts.depth)
        grid = mesh_devices(opts)
        self.devices = list(grid[:, 0])  # one per data shard
        self.space = opts.space
        # windows are whole multiples of the U-Net's total downsampling at this depth
        self.divisor = 2 ** (model.num_depths - 1 - opts.depth)
        self.patch = self._window_of(opts.window)
        if model.route != model_lib.Route.LOCAL and self.patch != tuple(
            p // 2**opts.depth for p in model.patch
        ):
            raise ValueError(
                f"window {opts.window} needs the local route (--route=local): the exported "
                f"chain is compiled for the training patch {tuple(model.patch)}"
            )
        self._sharded = self._replicated = None
        if self.space > 1:
            if model.route != model_lib.Route.LOCAL:
                raise ValueError(
                    f"space={self.space} splits windows across devices on the local route "
                    "(--route=local): the exported chain is compiled for one device"
                )
            self.mesh = jax.sharding.Mesh(grid, ("data", "space"))
            self._sharded = jax.jit(self._spatial)
        elif len(self.devices) > 1:
            self.mesh = jax.sharding.Mesh(np.array(self.devices), ("data",))
            self._sharded = jax.jit(
                jax.shard_map(
                    self._per_device,
                    mesh=self.mesh,
                    in_specs=(P(), P("data"), P("data")),
                    out_specs=P("data"),
                )
            )
        # an ensemble of a diffusion model: the members' variance is blended and written too
        self.ensemble = model.diffusion and opts.sampler.ensemble > 1
        self.tree = model.protocol.level_tables()
        self.stripper, self.bounder = (
            None
            if strip is None
            else Segmenter(
                strip,
                Options(
                    model_lib.sampler_config(strip),
                    opts.seed,
                    opts.overlap,
                    opts.batch,
                    devices=opts.devices,
                    space=opts.space,
                ),
            )
            for strip in (opts.strip_model, opts.strip_bound_model)
        )

    def brain_mask(
        self, volume: io.Volume, key: jax.Array, open_mm: float = post.OPEN_MM
    ) -> tuple[np.ndarray, int]:
        """[X, Y, Z] bool on `volume`'s canonical grid: the brain this model finds
        (`postprocess.brain_mask`: labels > 0, opened by `open_mm`, the largest piece, holes
        filled), and the windows it took."""
        result = self.segment_volume(volume, key)
        return post.brain_mask(result.labels, volume.spacing, open_mm), result.windows

    def _window_of(self, window) -> tuple[int, int, int] | None:
        """The window at the entry depth (None: per volume, `Options.window="whole"`)."""
        if window == WHOLE:
            return None
        full = window or self.model.patch
        step = 2**self.opts.depth
        need = [self.divisor * step * (self.space if i == 0 else 1) for i in range(3)]
        if any(w % n for w, n in zip(full, need, strict=True)):
            raise ValueError(
                f"window {tuple(full)} must be a multiple of {tuple(need)} voxels (the "
                f"U-Net's {self.model.num_depths} depths from entry depth {self.opts.depth}"
                + (f", and space={self.space} along the first axis)" if self.space > 1 else ")")
            )
        return tuple(w // step for w in full)

    def window_for(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """The window used on a prepared image of `shape`: `Options.window`, or with "whole"
        the shape rounded up to whole multiples of the U-Net's downsampling (and `space`)."""
        if self.patch is not None:
            return self.patch
        need = [self.divisor * (self.space if i == 0 else 1) for i in range(3)]
        return tuple(-(-s // n) * n for s, n in zip(shape, need, strict=True))

    def with_params(self, params) -> Segmenter:
        """This segmenter with other params of the same model (shares the compiled call)."""
        other = copy.copy(self)
        other.model = dataclasses.replace(self.model, params=params)
        other._replicated = None
        return other

    @property
    def mesh_text(self) -> str:
        """The mesh this segmenter uses, for a log (`mesh_text`)."""
        return mesh_text(self.opts)

    def _per_device(self, params, images, key_data):
        """One device's share of a sharded call: its `batch` windows and its chunk's key."""
        return self.fn(params, images, jax.random.wrap_key_data(key_data[0]))

    def _spatial(self, params, images, key_data):
        """The space-sharded call: images [n, b, X, Y, Z, 1] (chunk i on data shard i, X split
        over `space`), each chunk segmented with its own key; GSPMD partitions the convolutions
        along X with halos between neighbouring devices."""

        def chunk(imgs, kd):
            return self.fn(params, imgs, jax.random.wrap_key_data(kd))

        return jax.vmap(chunk)(images, key_data)

    def _shardings(self) -> tuple[NamedSharding, NamedSharding, NamedSharding]:
        """(params, windows, keys) shardings of the sharded call."""
        rep = NamedSharding(self.mesh, P())
        if self.space > 1:
            return (
                rep,
                NamedSharding(self.mesh, P("data", None, "space")),
                NamedSharding(self.mesh, P("data")),
            )
        data = NamedSharding(self.mesh, P("data"))
        return rep, data, data

    def _call(self, batch: np.ndarray, keys: list[jax.Array]) -> dict:
        """The segment function on `len(keys)` chunks of `batch` windows: one call on one
        device, or one sharded call with chunk d (and its key) on data shard d."""
        if self._sharded is None:
            return self.fn(self.model.params, batch, keys[0])
        rep, windows, key_sharding = self._shardings()
        if self._replicated is None:
            self._replicated = jax.device_put(self.model.params, rep)
        key_data = np.stack([np.asarray(jax.random.key_data(k)) for k in keys])
        if self.space > 1:
            chunks = batch.reshape(len(keys), -1, *batch.shape[1:])
            out = self._sharded(
                self._replicated,
                jax.device_put(chunks, windows),
                jax.device_put(key_data, key_sharding),
            )
            return {k: np.asarray(v).reshape(-1, *v.shape[2:]) for k, v in out.items()}
        return self._sharded(
            self._replicated, jax.device_put(batch, windows), jax.device_put(key_data, key_sharding)
        )

    def lowered(self, shape: tuple[int, ...] | None = None):
        """The call for one group of windows, lowered (`.compile()` gives its memory analysis
        per device). Sharded, its compiled program's `input_shardings` show the windows split
        over `data` (and their first axis over `space`). `shape`: the prepared image's, for
        `window="whole"`."""
        patch = self.window_for(shape) if shape is not None else self.patch
        n, b = len(self.devices), self.opts.batch
        key_data = jax.random.key_data(jax.random.key(0))
        if self._sharded is None:
            params = jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), self.model.params
            )
            images = jax.ShapeDtypeStruct((b, *patch, 1), jnp.float32)
            return self.fn.lower(params, images, jax.random.key(0))
        rep, windows, key_sharding = self._shardings()
        params = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=rep), self.model.params
        )
        lead = (n, b) if self.space > 1 else (n * b,)
        images = jax.ShapeDtypeStruct((*lead, *patch, 1), jnp.float32, sharding=windows)
        keys = jax.ShapeDtypeStruct((n, *key_data.shape), key_data.dtype, sharding=key_sharding)
        return self._sharded.lower(params, images, keys)

    def segment_array(self, image: np.ndarray, key: jax.Array) -> tuple[np.ndarray, ...]:
        """Prepared image [X, Y, Z] → (probs [X, Y, Z, K], entropy [X, Y, Z], windows).

        probs are the fused probabilities (the ensemble mean, or vote shares for "vote")
        blended over windows; entropy is theirs, in nats. With `tta="flip"` the image mirrored
        left/right (axis 0 of the canonical RAS grid) is segmented too, with its own noise;
        its probabilities are mirrored back with left and right leaves swapped, and the two
        are averaged (windows counts both passes)."""
        probs, entropy, _, n = self.segment_image(image, key, variance=False)
        return probs, entropy, n

    def segment_image(
        self,
        image: np.ndarray,
        key: jax.Array,
        *,
        variance: bool = True,
        progress: Progress | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
        """`segment_array` plus the ensemble's variance [X, Y, Z] (None without an ensemble
        or with `variance=False`): each window's `total_variance`, blended over windows with
        the probabilities' weights (a weighted mean of per-window variances, not the variance
        of the members of all windows pooled), averaged over the two passes of flip TTA.
        `progress(done, total)` follows the windows of both passes."""
        variance = variance and self.ensemble
        passes = 2 if self.opts.tta == TTA.FLIP else 1

        def tick(p: int):
            if progress is None:
                return None
            return lambda done, n: progress(p * n + done, passes * n)

        probs, var, n = self._blended(image, key, variance, tick(0))
        if self.opts.tta == TTA.FLIP:
            mirror = np.asarray(self.model.protocol.leaf_mirror)
            flip_key = jax.random.fold_in(key, _FLIP_STREAM)
            flipped, fvar, m = self._blended(image[::-1], flip_key, variance, tick(1))
            probs, n = (probs + flipped[::-1][..., mirror]) / 2, n + m
            if var is not None:
                var = (var + fvar[::-1]) / 2
        entropy = -(probs * np.log(np.maximum(probs, 1e-12))).sum(-1)
        return probs, entropy.astype(np.float32), var, n

    def _blended(
        self,
        image: np.ndarray,
        key: jax.Array,
        variance: bool = False,
        progress: Progress | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, int]:
        """The window-blended, normalised probabilities of `image`, the blended per-window
        ensemble variance (None unless `variance`), and the window count."""
        k, b = self.model.num_classes, self.opts.batch
        patch = self.window_for(image.shape)
        padded, crop = window.pad_to(image, patch, float(image.min()))
        starts = window.window_starts(padded.shape, patch, self.opts.overlap)
        blender = window.Blender(padded.shape, patch, k)
        spread = window.Blender(padded.shape, patch, 1) if variance else None
        # one call per group of n chunks of b windows (n devices); chunk c starting at window
        # i gets the key fold_in(key, i) whatever n is, so the noise of every window and
        # hence the segmentation do not depend on the device count
        n = len(self.devices)
        for g in range(0, len(starts), b * n):
            group = starts[g : g + b * n]
            chunks = [group[c : c + b] for c in range(0, len(group), b)]
            windows = [st for chunk in chunks for st in chunk + [chunk[-1]] * (b - len(chunk))]
            keys = [jax.random.fold_in(key, g + c * b) for c in range(len(chunks))]
            windows += windows[-b:] * (n - len(chunks))  # idle devices repeat the last chunk
            keys += keys[-1:] * (n - len(chunks))
            batch = np.stack(
                [
                    padded[tuple(slice(s, s + p) for s, p in zip(st, patch, strict=True))]
                    for st in windows
                ]
            )[..., None]
            out = self._call(batch, keys)
            probs = np.asarray(out["probs"])
            for j, st in enumerate(group):  # chunks are consecutive: window j is row j
                blender.add(st, probs[j])
            if spread is not None:
                var = total_variance(np.asarray(out["variance"]), k, self.opts.sampler.ensemble)
                for j, st in enumerate(group):
                    spread.add(st, var[j][..., None])
            if progress is not None:
                progress(g + len(group), len(starts))
        probs = blender.result()[crop]
        var = None if spread is None else np.maximum(spread.result()[crop][..., 0], 0.0)
        return probs / np.maximum(probs.sum(-1, keepdims=True), 1e-12), var, len(starts)

    def segment_volume(
        self, volume: io.Volume, key: jax.Array, progress: Progress | None = None
    ) -> Result:
        """A loaded image → its segmentation on the image's canonical grid (with an ensemble,
        its variance too); `progress(done, total)` after each batch of windows."""
        start = time.perf_counter()
        original, stripped_windows = volume, 0
        if self.stripper is not None:
            brain, stripped_windows = self.stripper.brain_mask(
                volume, jax.random.fold_in(key, _STRIP_STREAM), self.opts.strip_open_mm
            )
            if self.bounder is not None:
                bound, n = self.bounder.brain_mask(
                    volume, jax.random.fold_in(key, _BOUND_STREAM), self.opts.strip_open_mm
                )
                brain = post.bounded(brain, bound, volume.spacing)
                stripped_windows += n
            if not brain.any():
                raise InputError(
                    volume.path, "the strip model found no brain in it (is it a head scan?)"
                )
            data = np.where(brain, volume.data, 0).astype(volume.data.dtype)
            volume = dataclasses.replace(volume, data=data)
        cfg = self.model.preprocess
        if self.opts.depth:
            cfg = dataclasses.replace(
                cfg, spacing=tuple(s * 2**self.opts.depth for s in cfg.spacing)
            )
        source = low_res(volume, self.model.preprocess.spacing, self.opts.input_depth)
        prepared, _ = prepare_image(source, cfg)
        probs, entropy, var, n = self.segment_image(prepared.image, key, progress=progress)
        labels, ent, conf = to_native(probs, entropy, prepared, volume, self.tree)
        labels = post.apply(labels, self.opts.postprocess)
        if var is not None:
            var = np.maximum(native_map(var, prepared, volume), 0.0)
        name = names.stem(volume.path)
        seconds = time.perf_counter() - start
        n += stripped_windows
        return Result(name, labels, ent, conf, original, seconds, n, variance=var)

    def segment_file(
        self, path: str | os.PathLike, key: jax.Array, progress: Progress | None = None
    ) -> Result:
        """Loads and segments `path` with `file_key(key, its name)`."""
        volume = io.load_image(path)
        return self.segment_volume(volume, file_key(key, names.stem(path)), progress)


def low_res(volume: io.Volume, spacing, input_depth: int) -> io.Volume:
    """`volume` as if acquired at spacing * 2^input_depth (linear resampling, same field of
    view); `volume` itself for depth 0. Outputs still go to `volume`'s own grid."""
    if not input_depth:
        return volume
    low = tuple(s * 2**input_depth for s in spacing)
    data, affine = io.resample(volume.data, volume.affine, low, order=1)
    return dataclasses.replace(volume, data=data, affine=affine)


def to_native(
    probs: np.ndarray,
    entropy: np.ndarray,
    prepared,
    volume: io.Volume,
    tree: LevelTables | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities [X', Y', Z', K] and entropy on the cropped model grid → (leaf ids [X, Y,
    Z] uint8, entropy, confidence) on the volume's canonical grid; confidence is the decided
    leaf's share of the interpolated probabilities.

    Each leaf's probability is placed in the resampled grid (background 1 outside the crop)
    and interpolated linearly; the leaf is decided by `tree.labels` (top-down through the
    tree levels; None: argmax). The volume is done in slabs of at most `CHUNK_VALUES` leaf
    probabilities, so memory is bounded whatever K.
    """
    shape = tuple(volume.data.shape)
    k = probs.shape[-1]
    pad, source = _placement(prepared)

    def padded(values: np.ndarray, outside: float) -> np.ndarray:
        return np.pad(np.asarray(values, np.float32), pad, constant_values=outside)

    leaves = [padded(probs[..., j], 1.0 if j == 0 else 0.0) for j in range(k)]
    labels = np.zeros(shape, np.uint8)
    confidence = np.zeros(shape, np.float32)
    step = max(1, CHUNK_VALUES // (k * shape[1] * shape[2]))
    for x0 in range(0, shape[0], step):
        n = min(step, shape[0] - x0)
        offset = np.eye(4)
        offset[0, 3] = x0
        target = np.asarray(volume.affine, np.float64) @ offset
        chunk = np.empty((k, n, *shape[1:]), np.float32)
        for j in range(k):
            chunk[j] = io.resample_to_grid(leaves[j], source, target, chunk.shape[1:], order=1)
        p = np.moveaxis(chunk, 0, -1)
        decided = p.argmax(-1) if tree is None else tree.labels(p)
        labels[x0 : x0 + n] = decided
        chosen = np.take_along_axis(p, decided[..., None].astype(np.intp), -1)[..., 0]
        confidence[x0 : x0 + n] = chosen / np.maximum(p.sum(-1), 1e-12)
    ent = native_map(entropy, prepared, volume)
    return labels, ent, confidence


def _placement(prepared) -> tuple[list[tuple[int, int]], np.ndarray]:
    """(padding, affine) that place a map on the cropped model grid in the resampled grid:
    one voxel of the outside value around the crop (where the crop is not at the edge of the
    resampled grid) gives the same interpolation as the whole resampled grid would."""
    pad = [
        (int(lo > 0), int(hi < n))
        for (lo, hi), n in zip(prepared.box, prepared.resampled_shape, strict=True)
    ]
    shift = np.eye(4)
    shift[:3, 3] = [lo - before for (lo, _), (before, _) in zip(prepared.box, pad, strict=True)]
    return pad, np.asarray(prepared.resampled_affine, np.float64) @ shift


def native_map(values: np.ndarray, prepared, volume: io.Volume) -> np.ndarray:
    """A voxel-wise map [X', Y', Z'] on the cropped model grid → float32 on the volume's
    canonical grid: 0 outside the crop, linear interpolation (the entropy's and the
    variance's path)."""
    pad, source = _placement(prepared)
    outside = np.pad(np.asarray(values, np.float32), pad, constant_values=0.0)
    shape = tuple(volume.data.shape)
    return io.resample_to_grid(outside, source, volume.affine, shape, order=1)


def volumes_row(result: Result, protocol) -> dict[str, float]:
    """mm³ per id (leaves, tree nodes, named sets) of a result."""
    voxel = float(abs(np.linalg.det(result.volume.affine[:3, :3])))
    counts = np.bincount(result.labels.ravel(), minlength=protocol.num_leaves)
    leaf_mm3 = counts[: protocol.num_leaves] * voxel
    member = protocol.membership()
    row = {"case": result.name}
    for i, name in enumerate(protocol.id_names()):
        row[name] = round(float(leaf_mm3[member[i]].sum()), 3)
    return row


def _few(names: list[str], n: int = 4) -> str:
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def check_volumes(path: Path, protocol: Protocol) -> None:
    """Raises InputError naming `path` unless it is absent, empty, or a readable volumes.csv
    with this protocol's columns (`volumes_row`'s, in any order) that rows can be merged into."""
    if not path.exists():
        return
    advice = "choose another --output or move the file away"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(path, f"unreadable volumes.csv ({e}): {advice}") from e
    if not lines:
        return
    header = lines[0]
    if "case" not in header:
        raise InputError(path, f"not a volumes.csv of msseg (no 'case' column): {advice}")
    for i, row in enumerate(lines[1:], 2):
        if row and len(row) != len(header):
            raise InputError(
                path,
                f"garbled volumes.csv (line {i} has {len(row)} fields, the header "
                f"{len(header)}): {advice}",
            )
    columns = ["case", *protocol.id_names()]
    extra = [c for c in header if c not in columns]
    missing = [c for c in columns if c not in header]
    if extra or missing:
        diff = "; ".join(
            f"{what}: {_few(names)}"
            for what, names in (("not this model's", extra), ("missing", missing))
            if names
        )
        raise InputError(
            path,
            f"its columns belong to another label protocol than this model's "
            f"{protocol.name!r} ({diff}): {advice}",
        )


def _atomic_bytes(path: Path, data: bytes) -> None:
    files.atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_volumes(path: Path, rows: list[dict]) -> None:
    """volumes.csv: one row per case, columns case + every id name (mm³)."""
    if not rows:
        return
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    _atomic_bytes(path, buf.getvalue().encode())


def qc_png(
    path: Path, result: Result, protocol, ids: np.ndarray | None = None, background: int = 0
) -> None:
    """Axial, coronal and sagittal mid slices of the image with an id map overlaid (default:
    the leaves; `background`: the id left transparent)."""
    from matplotlib.figure import Figure

    image = result.volume.data
    labels = result.labels if ids is None else ids
    colours = protocol.colours().astype(np.float32) / 255
    fig = Figure(figsize=(12, 4.2), dpi=80)
    c = [n // 2 for n in image.shape]
    views = {
        "axial": (image[:, :, c[2]], labels[:, :, c[2]]),
        "coronal": (image[:, c[1], :], labels[:, c[1], :]),
        "sagittal": (image[c[0], :, :], labels[c[0], :, :]),
    }
    lo, hi = np.percentile(image, [1, 99])
    for i, (title, (img, lab)) in enumerate(views.items()):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.imshow(img.T, cmap="gray", origin="lower", vmin=lo, vmax=hi)
        rgba = np.zeros((*lab.shape, 4), np.float32)
        rgba[..., :3] = colours[lab]
        rgba[..., 3] = np.where(lab != background, 0.45, 0.0)
        ax.imshow(np.transpose(rgba, (1, 0, 2)), origin="lower")
        ax.set_title(f"{result.name}: {title}")
        ax.axis("off")
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    _atomic_bytes(path, buf.getvalue())


class Staging:
    """Files written under hidden temporary names and renamed over their targets together.

    `path(target)` names a temporary file next to `target` (`names.temporary`: hidden, same
    suffix, so the io savers accept it); `commit()` checks that every one was written, renames
    each over its target, then removes the `stale` paths. Leaving the `with` block removes
    this staging's temporary files that are left (all of them without a commit): the targets
    keep their old contents unless `commit()` ran. A crash inside `commit()`'s renames can
    leave some targets new and some old, never a half-written file.
    """

    def __init__(self) -> None:
        self.files: list[tuple[Path, Path]] = []  # (temporary, target)
        self.stale: list[Path] = []

    def path(self, target: Path) -> Path:
        tmp = names.temporary(target)
        self.files.append((tmp, Path(target)))
        return tmp

    def commit(self) -> None:
        missing = [str(target) for tmp, target in self.files if not tmp.is_file()]
        if missing:
            raise RuntimeError(f"staged outputs not written: {', '.join(missing)}")
        for tmp, target in self.files:
            os.replace(tmp, target)
        for path in self.stale:
            path.unlink(missing_ok=True)

    def discard(self) -> None:
        for tmp, _ in self.files:
            tmp.unlink(missing_ok=True)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


def stage_label_tables(stage: Staging, out_dir: Path, protocol: Protocol) -> list[Path]:
    """Writes the protocol's colour tables into `stage` (`names.label_tables`: a FreeSurfer
    colour LUT and an ITK-SNAP label description file, keyed by the raw codes the
    segmentations hold); returns their final paths."""
    lut, itksnap = names.label_tables(out_dir)
    protocol.write_freesurfer_lut(stage.path(lut))
    protocol.write_itksnap_labels(stage.path(itksnap))
    return [lut, itksnap]


def write_label_tables(out_dir: Path, protocol: Protocol) -> list[Path]:
    """`stage_label_tables` into `out_dir` (created if needed), both renamed into place once
    both are written."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with Staging() as stage:
        paths = stage_label_tables(stage, Path(out_dir), protocol)
        stage.commit()
    return paths


def stage_outputs(
    stage: Staging, out_dir: Path, result: Result, protocol: Protocol, level: int | str
) -> list[Path]:
    """Writes the seg (at `level`, see `Options`), uncertainty, variance (with an ensemble)
    and QC files of one result into `stage`; returns their final paths. Level and variance
    files of an earlier run that this result does not write are marked stale, so after the
    commit every file of `name` comes from the same result."""
    check_level(level, protocol)
    seg_path = names.segmentation(out_dir, result.name)
    unc_path = names.uncertainty(out_dir, result.name)
    var_path = names.variance(out_dir, result.name)
    png_path = out_dir / f"{result.name}_qc.png"
    table = protocol.level_of_leaves()  # [L, K] the id of each leaf at each level
    ids, background = result.labels, 0
    if not isinstance(level, str):
        ids, background = table[level][result.labels], int(table[level][0])
    io.save_label(stage.path(seg_path), protocol.decode(ids), result.volume.source)
    paths = [seg_path]
    for lev in range(len(table)):
        path = names.level(out_dir, result.name, lev)
        if level == "all":
            leaf_ids = table[lev][result.labels]
            io.save_label(stage.path(path), protocol.decode(leaf_ids), result.volume.source)
            paths.append(path)
        else:
            stage.stale.append(path)
    io.save_image(stage.path(unc_path), result.entropy, result.volume.source)
    paths.append(unc_path)
    if result.variance is not None:
        io.save_image(stage.path(var_path), result.variance, result.volume.source)
        paths.append(var_path)
    else:
        stage.stale.append(var_path)
    qc_png(stage.path(png_path), result, protocol, ids, background)
    return [*paths, png_path]


def write_outputs(
    out_dir: Path, result: Result, protocol: Protocol, level: int | str = "leaves"
) -> list[Path]:
    """The seg (at `level`, see `Options`), uncertainty, variance and QC files of one result
    (volumes.csv is written per batch), replacing the old ones only once all are written
    (`stage_outputs`; on an error the old files stay). Level files of an earlier run that
    this `level` does not write are removed, so every file of `name` comes from the same
    result."""
    check_level(level, protocol)
    out_dir.mkdir(parents=True, exist_ok=True)
    with Staging() as stage:
        paths = stage_outputs(stage, out_dir, result, protocol, level)
        stage.commit()
    logging.info("sample: wrote %s", paths[0])
    return paths


def find_inputs(spec: str) -> list[Path]:
    """A file, a folder (its .nii/.nii.gz/.mgz files, not hidden ones nor sample.py's own
    outputs) or a glob → sorted input paths; two inputs that would write the same outputs
    are an error."""
    path = Path(spec)
    if path.is_dir():
        files = [
            p
            for p in path.iterdir()
            if p.is_file() and names.is_volume(p)  # not hidden: a killed run's temporary outputs
        ]
        files = [p for p in files if not names.is_output(names.stem(p))]
    elif path.exists():
        files = [path]
    else:
        files = [Path(p) for p in sorted(glob.glob(spec)) if Path(p).is_file()]
    if not files:
        raise FileNotFoundError(f"{spec}: no NIfTI/MGZ inputs (a file, a folder or a glob)")
    seen: dict[str, Path] = {}
    for f in sorted(files):
        other = seen.setdefault(names.stem(f), f)
        if other != f:
            raise InputError(f, f"writes the same outputs as {other} (same name)")
    return sorted(files)
