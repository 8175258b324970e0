"""Pure train and eval steps: `train_step(state, batch, key) -> (state, metrics)`.

The batch holds full-resolution arrays, the image and the label ids (leaves, tree nodes, named
sets, IGNORE); the step turns the ids into one-hot label-id fractions over the `LabelSpace`
(partial labels: msseg.diffusion.losses), and a static entry depth e average-pools the image
and the fractions by 2^e inside the step, so every entry depth reuses the same data stream and one
compiled step exists per depth. Per-step randomness is `fold_in(key, state.step)`, so a resumed
run draws the same numbers. A step whose loss or gradient is not finite returns the state it
was given (nothing from it is applied) with `finite = False` in its metrics; the loop stops
the run on that flag before anything is written.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from msseg.diffusion import losses
from msseg.diffusion import schedule as sch
from msseg.models.resize import downsample
from msseg.models.unet import MultiscaleUNet
from msseg.train.state import TrainConfig, TrainState, ema_decay, lr_schedule


def at_depth(
    batch: dict, entry_depth: int, space: losses.LabelSpace
) -> tuple[jax.Array, jax.Array]:
    """{"image" [B, X, Y, Z, C], "label" [B, X, Y, Z] ids} → the image and the one-hot
    label-id fractions [B, X, Y, Z, J], both average-pooled by 2^entry_depth."""
    f = 2**entry_depth
    return downsample(batch["image"], f), downsample(space.one_hot(batch["label"]), f)


def _objective(model, s, loss_cfg, space):
    """(params, batch, key, entry_depth, train) → (loss, terms): the batch at that depth."""

    def objective(params, batch: dict, key: jax.Array, entry_depth: int, train: bool):
        image, f = at_depth(batch, entry_depth, space)
        return losses.model_loss(
            model,
            params,
            image,
            f,
            key,
            s,
            loss_cfg,
            space=space,
            entry_depth=entry_depth,
            train=train,
        )

    return objective


def make_train_step(
    model: MultiscaleUNet,
    s: sch.Schedule | None,
    loss_cfg: losses.LossConfig,
    tx: optax.GradientTransformation,
    cfg: TrainConfig,
    space: losses.LabelSpace | None = None,
):
    """`train_step(state, batch, key, entry_depth)` (entry_depth static) for jit.

    space: the label ids the batch's labels use (default: the model's leaves only).
    """
    schedule = lr_schedule(cfg)
    objective = _objective(
        model, s, loss_cfg, space or losses.LabelSpace.leaves(model.cfg.num_classes)
    )

    def train_step(state: TrainState, batch: dict, key: jax.Array, entry_depth: int = 0):
        key = jax.random.fold_in(key, state.step)

        def loss_fn(params):
            return objective(params, batch, key, entry_depth, True)

        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = ema_decay(cfg.ema_decay, state.step)
        ema = optax.incremental_update(params, state.ema_params, step_size=1.0 - decay)
        new = TrainState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
        metrics = {
            **_absolute_depths(terms, entry_depth),
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": schedule(state.step),
            "finite": finite,
        }
        return new, metrics

    return train_step


def _absolute_depths(terms: dict, entry_depth: int) -> dict:
    """`mse/depth{i}` (i-th output) → `mse/depth{entry_depth + i}` (the depth it lives at)."""
    out = {}
    for k, v in terms.items():
        name, sep, depth = k.rpartition("/depth")
        out[f"{name}/depth{int(depth) + entry_depth}" if sep else k] = v
    return out


def make_eval_step(
    model: MultiscaleUNet,
    s: sch.Schedule | None,
    loss_cfg: losses.LossConfig,
    space: losses.LabelSpace | None = None,
):
    """`eval_step(params, batch, key, entry_depth)`: the training objective without updates."""
    objective = _objective(
        model, s, loss_cfg, space or losses.LabelSpace.leaves(model.cfg.num_classes)
    )

    def eval_step(params, batch: dict, key: jax.Array, entry_depth: int = 0):
        loss, terms = objective(params, batch, key, entry_depth, False)
        return {**_absolute_depths(terms, entry_depth), "loss": loss}

    return eval_step


def jit_train_step(train_step, state_sharding, batch_sharding, donate: bool):
    """jit with explicit shardings: state replicated (or as given), batch over the mesh."""
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, batch_sharding, None),
        out_shardings=(state_sharding, None),
        static_argnums=(3,),
        donate_argnums=(0,) if donate else (),
    )
