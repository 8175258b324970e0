"""The training loop: config → cache, model, mesh, state (resumed, initialised or fresh) → steps,
validation, checkpoints and logs in the workdir. `train()` is what tools/train.py calls.

Resume order: the workdir's own latest checkpoint > `train.init_from` (params only) > scratch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from msseg import files
from msseg.data import pipeline, preprocess
from msseg.diffusion import losses, samplers
from msseg.diffusion import schedule as sch
from msseg.diffusion import segment as seg
from msseg.labels import IGNORE, Protocol
from msseg.models.unet import MultiscaleUNet, UNetConfig
from msseg.train import checkpoint, sharding, step, validate
from msseg.train.metrics import MetricsLog, is_main, plot_curves
from msseg.train.state import TrainConfig, create_state, make_optimizer


class NonFiniteError(RuntimeError):
    """The loss or gradient stopped being finite; no update from that step was applied."""


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything built from the config, before any state exists."""

    model: MultiscaleUNet
    schedule: sch.Schedule | None
    loss: losses.LossConfig
    sampler: seg.SamplerConfig
    train: TrainConfig
    pipeline: pipeline.PipelineConfig
    protocol: Protocol
    cache: str


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def ensure_cache(config: ml_collections.ConfigDict, workdir: Path) -> str:
    """The preprocessed cache of config.data (built by process 0 if missing or stale).

    config.data.spec names one dataset SPEC or several joined by commas (one cache).
    """
    d = config.data
    if not d.spec and not d.cache:
        raise ValueError(
            "config.data.spec is empty: set --config.data.spec=DATASET_FOLDER[,FOLDER...]"
        )
    cache = d.cache or str(workdir / "cache")

    def build():
        preprocess.run(
            d.spec,
            cache,
            spacing=tuple(d.spacing) if d.spacing else None,
            protocol=d.protocol or None,
            val_fraction=d.val_fraction,
        )

    if is_main():
        build()
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("msseg: cache ready")
        if not (Path(cache) / "manifest.json").is_file():  # no shared file system
            build()
    return cache


def _configs(config: ml_collections.ConfigDict, num_classes: int) -> dict:
    """The config's sections as the dataclasses they configure (each checks its own values),
    and the checks across sections. Needs nothing but the config and the class count."""
    model_cfg = UNetConfig(num_classes=num_classes, **_tuples(config.model.to_dict()))
    pipe = pipeline.PipelineConfig(**_tuples(config.data.pipeline.to_dict()))
    step_ = 2 ** (model_cfg.num_depths - 1)
    if any(p % step_ for p in pipe.patch_size):
        raise ValueError(
            f"data.pipeline.patch_size {pipe.patch_size} must divide by {step_} "
            f"(2^(depths-1) of the {model_cfg.num_depths} model.channels)"
        )
    d = config.diffusion.to_dict()
    sampler = seg.SamplerConfig(**config.sampler.to_dict())
    loss = losses.LossConfig(
        target=sch.Target(d["target"]),
        depth_weights=tuple(d["depth_weights"]),
        mse_weight=d["mse_weight"],
        ce_weight=d["ce_weight"],
        dice_weight=d["dice_weight"],
        partial_noise=d.get("partial_noise", "spread"),  # runs from before the key
        signal_scale=d.get("signal_scale", 1.0),
        timesteps=train_timesteps(d.get("train_timesteps", "all"), d["num_timesteps"], sampler),
        recycle_prob=d.get("recycle_prob", 0.0),
    )
    s = sch.make_schedule(d["schedule"], d["num_timesteps"]) if model_cfg.diffusion else None
    tcfg = TrainConfig(**_tuples(config.train.to_dict()))
    if max(tcfg.entry_depths + tcfg.val_depths) >= model_cfg.num_depths:
        raise ValueError(f"entry/val depths must be < the model's {model_cfg.num_depths} depths")
    untrained = sorted(set(tcfg.val_depths) - set(tcfg.entry_depths))
    if untrained:  # say so before training, not when the first validation fails
        raise ValueError(
            f"train.val_depths {tcfg.val_depths} includes depths {untrained} the model is not "
            f"trained to enter at (train.entry_depths {tcfg.entry_depths})"
        )
    return dict(model=model_cfg, schedule=s, loss=loss, sampler=sampler, train=tcfg, pipe=pipe)


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
            return  # a config from before the key: its dataclass default applies
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
            preprocess.check_spacing(config.data.spacing)
        except ValueError as e:
            raise ValueError(f"config.data.spacing={tuple(config.data.spacing)!r}: {e}") from None
    _configs(config, num_classes=1)  # every section's own checks, and those across sections


def build_setup(config: ml_collections.ConfigDict, cache: str) -> Setup:
    manifest = preprocess.load_manifest(cache)
    protocol = Protocol.from_json(manifest["protocol"])
    c = _configs(config, protocol.num_leaves)
    return Setup(
        model=MultiscaleUNet(c["model"]),
        schedule=c["schedule"],
        loss=c["loss"],
        sampler=c["sampler"],
        train=c["train"],
        pipeline=c["pipe"],
        protocol=protocol,
        cache=cache,
    )


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


def make_validation(config: ml_collections.ConfigDict, setup: Setup):
    """`(params, key) -> metrics` of the run's validation (`msseg.train.validate`): windows
    as tools/evaluate.py segments (`train.val_windows`), or whole volumes on the cache grid."""
    tcfg, cache = setup.train, setup.cache
    sampler = setup.sampler
    if tcfg.val_mode == "deterministic" and setup.model.cfg.diffusion:
        raise ValueError("train.val_mode=deterministic needs model.diffusion=False")
    if not tcfg.val_windows:
        valset = validate.load_valset(
            cache, "val", tcfg.val_depths, 2 ** (setup.model.cfg.num_depths - 1), tcfg.val_cases
        )
        segmenter = validate.make_segmenter(
            setup.model,
            setup.schedule,
            sampler,
            setup.loss.target,
            tcfg.val_mode,
            setup.protocol.level_tables(),
            setup.loss.signal_scale,
        )
        return lambda params, key: validate.validate(segmenter, params, valset, key)
    from msseg.inference import model as model_lib  # noqa: PLC0415

    d = config.data
    cases = validate.load_window_cases(
        cache,
        "val",
        d.spec,
        d.protocol,
        tcfg.val_cases,
        val_fraction=d.val_fraction,
    )
    manifest = preprocess.load_manifest(cache)
    prep = preprocess.PreprocessConfig(**_tuples(manifest["config"]))
    model = model_lib.in_memory(
        config.to_dict(), setup.protocol, prep, None, setup.model.cfg.conv_impl
    )
    validator = validate.WindowValidator(
        model, sampler, tcfg.val_depths, tcfg.val_overlap, tcfg.val_batch
    )
    return lambda params, key: validator(params, cases, key)


def init_fn(setup: Setup, tx):
    """key → a fresh TrainState (jit-able)."""
    cfg = setup.model.cfg
    patch = setup.pipeline.patch_size

    def init(key):
        x = jnp.zeros((1, *patch, cfg.in_channels), jnp.float32)
        t = jnp.zeros((1,), jnp.int32) if cfg.diffusion else None
        return create_state(setup.model.init(key, x, t), tx)

    return init


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _host_mean(rows: list[dict]) -> dict:
    """Means over the steps of the window (a key missing at some entry depths: over the rest)."""
    keys = sorted({k for r in rows for k in r})
    return {k: float(np.mean([np.asarray(r[k], np.float64) for r in rows if k in r])) for k in keys}


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Runs (or resumes) training in `workdir`; returns the final metrics."""
    check_config(config)  # first: a config that cannot train costs no preprocessing
    tc = config.train
    mesh = sharding.make_mesh(tc.mesh_data, tc.mesh_space)
    sharding.check_batch(config.data.pipeline.batch_size, mesh)
    workdir = Path(workdir).absolute()
    files.make_output_dir(workdir)
    cache = ensure_cache(config, workdir)
    setup = build_setup(config, cache)
    tcfg, pcfg = setup.train, setup.pipeline
    config_dict = config.to_dict()
    if is_main():
        _write_json(workdir / "config.json", config_dict)

    tx = make_optimizer(tcfg)
    init_key, step_key, val_key = jax.random.split(jax.random.key(config.seed), 3)
    init = init_fn(setup, tx)
    rep = sharding.replicated(mesh)
    abstract = jax.eval_shape(init, init_key)
    state_sharding = jax.tree.map(lambda _: rep, abstract)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sharding
    )

    data_iter = iter(pipeline.make_dataset(cache, "train", pcfg, seed=config.seed))
    ckpt = checkpoint.Checkpointer(workdir, tcfg.keep_best)
    latest = ckpt.latest_step()
    if latest is not None:
        state = ckpt.restore(latest, abstract, data_iter)
        logging.info("resumed from %s at step %d", ckpt.directory / str(latest), latest)
    else:
        state = jax.jit(init, out_shardings=state_sharding)(init_key)
        if tcfg.init_from:
            params, ema, n = checkpoint.restore_params(tcfg.init_from)
            state = state.replace(
                params=sharding.put_replicated(params, mesh),
                ema_params=sharding.put_replicated(ema, mesh),
            )
            logging.info("initialised params from %s (step %d)", tcfg.init_from, n)

    batch_sharding = {k: sharding.batch_sharding(mesh) for k in ("image", "label")}
    space = losses.LabelSpace.from_protocol(setup.protocol, used_ids(cache, setup.protocol))
    train_step = step.jit_train_step(
        step.make_train_step(setup.model, setup.schedule, setup.loss, tx, tcfg, space),
        state_sharding,
        batch_sharding,
        tcfg.donate,
    )
    run_validation = make_validation(config, setup)
    log = MetricsLog(workdir, tcfg.steps, int(state.step))
    global_batch = pcfg.batch_size * jax.process_count()
    first = int(state.step)
    if first >= tcfg.steps:
        logging.info("nothing to do: the workdir is at step %d of %d", first, tcfg.steps)
    pending, window_start, last_val = [], time.perf_counter(), {}
    try:
        for n in range(first + 1, tcfg.steps + 1):
            batch = next(data_iter)
            local = {"image": batch["image"], "label": batch["label"]}
            e = entry_depth(tcfg, config.seed, n - 1)
            state, metrics = train_step(state, sharding.shard_batch(local, mesh), step_key, e)
            pending.append(metrics)
            last = n == tcfg.steps
            do_val = last or (tcfg.eval_every and n % tcfg.eval_every == 0)
            do_ckpt = do_val or (tcfg.checkpoint_every and n % tcfg.checkpoint_every == 0)
            if not (do_ckpt or last or n % tcfg.log_every == 0):
                continue
            rows = jax.device_get(pending)  # one transfer for the check and the log
            _check_finite(rows, n, ckpt)
            window = _host_mean(rows)
            seconds = time.perf_counter() - window_start
            window.pop("finite")
            window.update(
                steps_per_s=len(pending) / seconds,
                patches_per_s=len(pending) * global_batch / seconds,
                entry_depth=e,
            )
            log.write(n, window)
            log.progress(n, window)
            pending = []
            val = None
            if do_val:
                val = run_validation(state.ema_params, val_key)
                log.write(n, val)
                last_val = val
                logging.info(
                    "step %d validation Dice (foreground leaves): %s",
                    n,
                    ", ".join(
                        f"depth {d} {val[f'val/depth{d}/leaves']:.3f}" for d in tcfg.val_depths
                    ),
                )
            if do_ckpt:
                ckpt.save(n, state, data_iter, config_dict, metrics=val)
            window_start = time.perf_counter()
    finally:
        ckpt.close()
    if is_main() and (workdir / "metrics.jsonl").exists():
        plot_curves(workdir / "metrics.jsonl", workdir / "curves.png")
    l1 = jax.jit(lambda p: sum(jnp.abs(x).sum() for x in jax.tree.leaves(p)))(state.ema_params)
    return {"step": int(state.step), "ema_params_l1": float(validate.to_host(l1)), **last_val}


def _check_finite(rows: list[dict], n: int, ckpt: checkpoint.Checkpointer) -> None:
    """Raises NonFiniteError if a step of the window (host metrics ending at n) was not finite."""
    flags = np.asarray([r["finite"] for r in rows])
    if flags.all():
        return
    bad = n - len(rows) + 1 + int(np.argmin(flags))
    ckpt.wait()
    raise NonFiniteError(
        f"the loss or gradient is NaN/Inf at step {bad}: training stopped, no update from that "
        f"step was applied and nothing after it was saved (last checkpoint: step "
        f"{ckpt.latest_step()} in {ckpt.directory}). Lower train.lr, raise train.warmup_steps "
        "or check the data."
    )
