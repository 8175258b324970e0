"""A run's config as typed objects: the checks, the `Setup` every stage builds from it, the model
facts a model directory records, and a finished run read back from its workdir (`load_run`).

The one place that turns an ml_collections config into the frozen dataclasses that configure
each stage (UNetConfig, PipelineConfig, LossConfig, SamplerConfig, TrainConfig): the training
loop, the exporter, the benchmarks and the experiments all call it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from msseg import cluster, files
from msseg.data import pipeline, preprocess
from msseg.data.prepare import PreprocessConfig, check_spacing
from msseg.diffusion import losses, samplers
from msseg.diffusion import schedule as sch
from msseg.diffusion import segment as seg
from msseg.export import format as fmt
from msseg.inference import model as model_lib
from msseg.labels import IGNORE, Protocol, get_protocol
from msseg.models.unet import MultiscaleUNet, UNetConfig
from msseg.train.state import TrainConfig, ValMode

# Keys older configs hold that no longer configure anything: dropped when a config is read.
RETIRED = {"data.pipeline": ("num_depths",)}


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything built from the config, before any state exists."""

    model: MultiscaleUNet
    schedule: sch.Schedule | None
    schedule_kind: str
    loss: losses.LossConfig
    sampler: seg.SamplerConfig
    train: TrainConfig
    pipeline: pipeline.PipelineConfig
    protocol: Protocol
    cache: str

    @property
    def entry_depths(self) -> list[int]:
        """The depths a model of this run can be entered at: those trained, and 0."""
        return sorted({0, *self.train.entry_depths})


def _section(config: ml_collections.ConfigDict, name: str) -> dict:
    """Config section `name` ("data.pipeline") as a dict, without its retired keys."""
    node = config
    for part in name.split("."):
        node = node[part]
    d = node.to_dict()
    for key in RETIRED.get(name, ()):
        if d.pop(key, None) is not None:
            logging.warning("config.%s.%s no longer applies; ignored", name, key)
    return d


def cache_path(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> str:
    """The run's preprocessed cache: config.data.cache, or `<workdir>/cache`."""
    return config.data.cache or str(Path(workdir) / "cache")


def ensure_cache(config: ml_collections.ConfigDict, workdir: Path) -> str:
    """The preprocessed cache of config.data (built by process 0 if missing or stale).

    config.data.spec names one dataset SPEC or several joined by commas (one cache).
    """
    d = config.data
    if not d.spec and not d.cache:
        raise ValueError(
            "config.data.spec is empty: set --config.data.spec=DATASET_FOLDER[,FOLDER...]"
        )
    cache = cache_path(config, workdir)

    def build():
        preprocess.run(
            d.spec,
            cache,
            spacing=tuple(d.spacing) if d.spacing else None,
            protocol=d.protocol or None,
            val_fraction=d.val_fraction,
        )

    if cluster.is_main():
        build()
    if jax.process_count() > 1:
        cluster.barrier("msseg: cache ready")
        if not (Path(cache) / "manifest.json").is_file():  # no shared file system
            build()
    return cache


def _configs(config: ml_collections.ConfigDict, num_classes: int) -> dict:
    """The config's sections as the dataclasses they configure (each checks its own values),
    and the checks across sections. Needs nothing but the config and the class count."""
    model_cfg = files.from_json(
        UNetConfig, {"num_classes": num_classes, **_section(config, "model")}
    )
    pipe = files.from_json(pipeline.PipelineConfig, _section(config, "data.pipeline"))
    step_ = 2 ** (model_cfg.num_depths - 1)
    if any(p % step_ for p in pipe.patch_size):
        raise ValueError(
            f"data.pipeline.patch_size {pipe.patch_size} must divide by {step_} "
            f"(2^(depths-1) of the {model_cfg.num_depths} model.channels)"
        )
    d = _section(config, "diffusion")
    sampler = files.from_json(seg.SamplerConfig, _section(config, "sampler"))
    loss = losses.LossConfig(
        target=sch.Target(d["target"]),
        depth_weights=tuple(d["depth_weights"]),
        mse_weight=d["mse_weight"],
        ce_weight=d["ce_weight"],
        dice_weight=d["dice_weight"],
        partial_noise=d.get("partial_noise", "spread"),
        signal_scale=d.get("signal_scale", 1.0),
        timesteps=train_timesteps(d.get("train_timesteps", "all"), d["num_timesteps"], sampler),
        recycle_prob=d.get("recycle_prob", 0.0),
    )
    s = sch.make_schedule(d["schedule"], d["num_timesteps"]) if model_cfg.diffusion else None
    tcfg = files.from_json(TrainConfig, _section(config, "train"))
    if max(tcfg.entry_depths + tcfg.val_depths) >= model_cfg.num_depths:
        raise ValueError(f"entry/val depths must be < the model's {model_cfg.num_depths} depths")
    untrained = sorted(set(tcfg.val_depths) - set(tcfg.entry_depths))
    if untrained:  # say so before training, not when the first validation fails
        raise ValueError(
            f"train.val_depths {tcfg.val_depths} includes depths {untrained} the model is not "
            f"trained to enter at (train.entry_depths {tcfg.entry_depths})"
        )
    if tcfg.val_mode == ValMode.DETERMINISTIC and model_cfg.diffusion:
        raise ValueError("train.val_mode=deterministic needs model.diffusion=False")
    return dict(
        model=model_cfg,
        schedule=s,
        schedule_kind=d["schedule"],
        loss=loss,
        sampler=sampler,
        train=tcfg,
        pipeline=pipe,
    )


def _number(value) -> float | None:
    """`value` as a float, or None if it is not a (real, non-bool) number."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    return float(value)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Refuses (ValueError naming the key and its value) a config that cannot train: the
    cheap checks, made before the cache is built or the model exists."""

    def need(key: str, ok, what: str) -> None:
        value = config
        try:
            for part in key.split("."):
                value = value[part]
        except (KeyError, AttributeError):
            return  # a config without the key: its dataclass default applies
        x = _number(value)
        if x is None or not ok(x):
            raise ValueError(f"config.{key}={value!r}: must be {what}")

    finite = math.isfinite

    def integer(x: float) -> bool:
        return finite(x) and x == int(x)

    need("train.steps", lambda x: integer(x) and x >= 1, "an integer >= 1")
    need("train.lr", lambda x: finite(x) and x > 0, "a finite number > 0")
    need("train.warmup_steps", lambda x: integer(x) and x >= 0, "an integer >= 0")
    need("train.end_lr_factor", lambda x: finite(x) and x >= 0, "a finite number >= 0")
    need("train.weight_decay", lambda x: finite(x) and x >= 0, "a finite number >= 0")
    need("train.b1", lambda x: 0 <= x < 1, "in [0, 1)")
    need("train.b2", lambda x: 0 <= x < 1, "in [0, 1)")
    need("train.clip_norm", lambda x: x > 0, "> 0")
    need("train.ema_decay", lambda x: 0 <= x <= 1, "in [0, 1]")
    need("train.log_every", lambda x: integer(x) and x >= 1, "an integer >= 1")
    for key in ("train.eval_every", "train.checkpoint_every", "train.keep_best", "train.val_cases"):
        need(key, lambda x: integer(x) and x >= 0, "an integer >= 0")
    need("train.val_batch", lambda x: integer(x) and x >= 1, "an integer >= 1")
    need("train.val_overlap", lambda x: 0 <= x < 1, "in [0, 1)")
    need("train.mesh_space", lambda x: integer(x) and x >= 1, "an integer >= 1")
    need("train.mesh_data", lambda x: integer(x) and (x >= 1 or x == -1), "-1 (all) or >= 1")
    need("data.pipeline.batch_size", lambda x: integer(x) and x >= 1, "an integer >= 1")
    need("data.val_fraction", lambda x: 0 <= x <= 1, "in [0, 1]")
    patch = tuple(config.data.pipeline.patch_size)
    if len(patch) != 3 or any(_number(p) is None or not integer(p) or p < 1 for p in patch):
        raise ValueError(f"config.data.pipeline.patch_size={patch!r}: must be three integers >= 1")
    if config.data.spacing:
        try:
            check_spacing(config.data.spacing)
        except ValueError as e:
            raise ValueError(f"config.data.spacing={tuple(config.data.spacing)!r}: {e}") from None
    _configs(config, num_classes=1)  # every section's own checks, and those across sections


def setup_for(config: ml_collections.ConfigDict, protocol: Protocol, cache: str = "") -> Setup:
    """The Setup of `config` for `protocol` (the cache's, or a built-in one without a cache)."""
    c = _configs(config, protocol.num_leaves)
    model = MultiscaleUNet(c.pop("model"))
    return Setup(model=model, protocol=protocol, cache=cache, **c)


def build_setup(config: ml_collections.ConfigDict, cache: str) -> Setup:
    """The Setup of a run whose preprocessed cache is `cache` (its manifest has the protocol)."""
    manifest = preprocess.load_manifest(cache)
    return setup_for(config, Protocol.from_json(manifest["protocol"]), cache)


def train_timesteps(kind: str, num_timesteps: int, sampler: seg.SamplerConfig) -> tuple:
    """config.diffusion.train_timesteps → LossConfig.timesteps: "all" (every t) or "sampler"
    (the DDIM timesteps of the sampler section's `steps`)."""
    if kind == "all":
        return ()
    if kind == "sampler":
        return tuple(int(t) for t in samplers.ddim_timesteps(num_timesteps, sampler.steps))
    raise ValueError(f"diffusion.train_timesteps must be 'all' or 'sampler', got {kind!r}")


def used_ids(cache: str, protocol: Protocol) -> list[int]:
    """The ids the cache's training labels hold (their voxel counts), with their left/right
    mirrors, which the flip augmentation makes."""
    cases = preprocess.load_manifest(cache)["cases"].values()
    ids = {int(i) for r in cases if r["split"] == "train" for i in r["voxel_counts"]}
    ids = sorted(ids - {IGNORE})
    return sorted(set(ids) | {int(i) for i in protocol.lr_swap()[ids]})


def entry_depth(cfg: TrainConfig, seed: int, step_index: int) -> int:
    """The entry depth of step `step_index`: a pure function of (seed, step), so resumable."""
    if len(cfg.entry_depths) == 1:
        return cfg.entry_depths[0]
    p = np.asarray(cfg.entry_probs or [1.0] * len(cfg.entry_depths), np.float64)
    rng = np.random.default_rng([seed, step_index])
    return int(rng.choice(cfg.entry_depths, p=p / p.sum()))


def model_facts(setup: Setup, preprocess_config: dict[str, Any]) -> dict[str, Any]:
    """What a model directory's metadata.json records about the model and inference reads
    (msseg.inference.model): its kind, the U-Net's settings (without the per-machine
    `conv_impl` and `remat`), the patch, the entry depths, the preprocessing, the diffusion
    settings and the default sampler."""
    cfg = setup.model.cfg
    unet = dataclasses.asdict(cfg)
    for key in ("conv_impl", "remat"):
        unet.pop(key)
    diffusion = None
    if cfg.diffusion:
        diffusion = {
            "schedule": setup.schedule_kind,
            "num_timesteps": setup.schedule.num_timesteps,
            "target": setup.loss.target.value,
            "signal_scale": setup.loss.signal_scale,
            "clip_x0": setup.sampler.clip_x0,
        }
    # through JSON: the facts are the same (lists, plain strings) in memory and on disk
    return json.loads(
        json.dumps(
            {
                "kind": fmt.ModelKind.DIFFUSION if cfg.diffusion else fmt.ModelKind.DETERMINISTIC,
                "model": unet,
                "patch_size": list(setup.pipeline.patch_size),
                "entry_depths": setup.entry_depths,
                "preprocess": dict(preprocess_config),
                "diffusion": diffusion,
                "sampler": dataclasses.asdict(setup.sampler),
            }
        )
    )


@dataclasses.dataclass(frozen=True)
class Run:
    """A training run read back from its workdir: its config, cache manifest and Setup."""

    workdir: Path
    config: ml_collections.ConfigDict
    manifest: dict[str, Any]
    setup: Setup

    def facts(self) -> dict[str, Any]:
        return model_facts(self.setup, self.manifest["config"])


def read_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config a run in `workdir` was started with (its config.json)."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{workdir}: no config.json (is this a training workdir?)")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_run(workdir: str | os.PathLike) -> Run:
    """The run in `workdir`: config.json → its cache's manifest → Setup."""
    workdir = Path(workdir).absolute()
    config = read_config(workdir)
    cache = cache_path(config, workdir)
    if not (Path(cache) / "manifest.json").is_file():
        raise FileNotFoundError(
            f"{cache}: the run's preprocessed cache is missing (its manifest holds the label "
            "protocol and the preprocessing the model was trained with)"
        )
    return Run(workdir, config, preprocess.load_manifest(cache), build_setup(config, cache))


def random_model(config: dict, *, seed: int = 0, conv_impl: str = "auto"):
    """The model of a training config (a ConfigDict's `to_dict()`) with random params, as
    inference loads it (msseg.inference.model.LoadedModel, local route): for benchmarks and
    tests before any training. The protocol is config.data.protocol (default mni-tissue)."""
    cfg = ml_collections.ConfigDict(config)
    s = setup_for(cfg, get_protocol(cfg.data.protocol or "mni-tissue"))
    prep = PreprocessConfig(spacing=tuple(float(v) for v in cfg.data.spacing))
    facts = model_facts(s, dataclasses.asdict(prep))
    loaded = model_lib.in_memory(facts, s.protocol, None, conv_impl)
    unet = s.model.cfg
    x = jax.numpy.zeros((1, *loaded.patch, unet.in_channels))
    t = jax.numpy.zeros((1,), jax.numpy.int32) if unet.diffusion else None
    model = MultiscaleUNet(dataclasses.replace(unet, conv_impl=conv_impl, remat=False))
    params = jax.jit(model.init)(jax.random.key(seed), x, t)
    return dataclasses.replace(loaded, path=Path("<random params>"), params=params)
