"""The train state (params, EMA params, optimiser state, step) and the optax chain from config."""

from __future__ import annotations

import dataclasses
import enum

import flax.struct
import jax
import jax.numpy as jnp
import optax


class ValMode(enum.StrEnum):
    """How validation segments: with the `sampler` config, or with a deterministic model's
    logits (needs model.diffusion=False)."""

    SAMPLER = "sampler"
    DETERMINISTIC = "deterministic"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """configs/base.py `train`, key for key."""

    steps: int = 2000
    lr: float = 2e-4
    warmup_steps: int = 100
    end_lr_factor: float = 0.05  # cosine decay from lr to lr * end_lr_factor at `steps`
    weight_decay: float = 1e-4
    b1: float = 0.9
    b2: float = 0.999
    clip_norm: float = 1.0
    ema_decay: float = 0.999  # warmed up as min(decay, (1 + step) / (10 + step))
    entry_depths: tuple[int, ...] = (0,)  # depths a training volume may enter at
    entry_probs: tuple[float, ...] = ()  # their probabilities; () = uniform
    mesh_data: int = -1  # devices on the data axis; -1 = all that `mesh_space` leaves
    mesh_space: int = 1  # devices sharding the first spatial axis of every volume
    log_every: int = 10
    eval_every: int = 500  # validation (and a checkpoint with its Dice); 0 = only at the end
    checkpoint_every: int = 500  # checkpoints without validation in between; 0 = none
    keep_best: int = 1  # checkpoints kept by validation Dice (the latest is always kept)
    init_from: str = ""  # workdir or checkpoint step folder to take params from (no resume)
    val_cases: int = 0  # validation cases to sample (0 = all)
    val_depths: tuple[int, ...] = (0,)  # entry depths validated (Dice per depth)
    val_mode: ValMode = ValMode.SAMPLER
    # segment validation cases as tools/evaluate.py does (sliding windows of the patch, scored
    # on the scans' own grids); False: whole volumes on the cache grid (msseg.train.validate)
    val_windows: bool = True
    val_overlap: float = 0.25  # window overlap of the windowed validation
    val_batch: int = 2  # windows per compiled call
    donate: bool = True
    tensorboard: bool = True  # the logged scalars also as <workdir>/tensorboard/events.out.*

    def __post_init__(self):
        if self.entry_probs and len(self.entry_probs) != len(self.entry_depths):
            raise ValueError("train.entry_probs must be empty or match train.entry_depths")
        modes = tuple(m.value for m in ValMode)
        if self.val_mode not in modes:
            raise ValueError(f"train.val_mode must be one of {modes}, got {self.val_mode!r}")
        object.__setattr__(self, "val_mode", ValMode(self.val_mode))
        if self.steps < 1:
            raise ValueError("train.steps must be >= 1")
        if not isinstance(self.tensorboard, bool):
            raise ValueError(f"train.tensorboard must be True or False, got {self.tensorboard!r}")


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimiser updates applied
    params: dict
    ema_params: dict
    opt_state: optax.OptState


def lr_schedule(cfg: TrainConfig) -> optax.Schedule:
    warmup = min(cfg.warmup_steps, max(cfg.steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else cfg.lr,
        peak_value=cfg.lr,
        warmup_steps=warmup,
        decay_steps=max(cfg.steps, warmup + 1),
        end_value=cfg.lr * cfg.end_lr_factor,
    )


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW on the warmup + cosine schedule."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(lr_schedule(cfg), b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay),
    )


def create_state(params: dict, tx: optax.GradientTransformation) -> TrainState:
    """A fresh state; the EMA starts as its own copy of the params (donation needs that)."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=tx.init(params),
    )


def ema_decay(cfg_decay: float, step: jax.Array) -> jax.Array:
    step = step.astype(jnp.float32)
    return jnp.minimum(cfg_decay, (1.0 + step) / (10.0 + step))
