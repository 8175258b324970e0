"""The training loop: config → cache, Setup (msseg.train.setup), mesh, state (resumed,
initialised or fresh) → steps, validation, checkpoints and logs in the workdir. `train()` is
what tools/train.py calls.

Resume order: the workdir's own latest checkpoint > `train.init_from` (params only) > scratch.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from msseg import files
from msseg.cluster import is_main
from msseg.data import pipeline, preprocess
from msseg.diffusion import losses
from msseg.inference import model as model_lib
from msseg.train import checkpoint, sharding, step, validate
from msseg.train.metrics import MetricsLog, plot_curves
from msseg.train.setup import (
    Setup,
    build_setup,
    check_config,
    ensure_cache,
    entry_depth,
    model_facts,
    used_ids,
)
from msseg.train.state import create_state, make_optimizer


class NonFiniteError(RuntimeError):
    """The loss or gradient stopped being finite; no update from that step was applied."""


def make_validation(config: ml_collections.ConfigDict, setup: Setup):
    """`(params, key) -> metrics` of the run's validation (`msseg.train.validate`): windows
    as tools/evaluate.py segments (`train.val_windows`), or whole volumes on the cache grid."""
    tcfg, cache = setup.train, setup.cache
    sampler = setup.sampler
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
    d = config.data
    cases = validate.load_window_cases(
        cache,
        "val",
        d.spec,
        d.protocol,
        tcfg.val_cases,
        val_fraction=d.val_fraction,
    )
    facts = model_facts(setup, preprocess.load_manifest(cache)["config"])
    model = model_lib.in_memory(facts, setup.protocol, None, setup.model.cfg.conv_impl)
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
        files.write_json(workdir / "config.json", config_dict)

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
    log = MetricsLog(workdir, tcfg.steps, int(state.step), tensorboard=tcfg.tensorboard)
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
