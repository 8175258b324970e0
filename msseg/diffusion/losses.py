"""The multiscale losses: diffusion regression, cross-entropy and soft Dice at every decoder depth.

Depth i of a prediction tuple is the model's output at entry depth + i; its ground truth
is the full-resolution quantity average-pooled by 2^i (the label pyramid's rule), so a
coarse depth is supervised with soft, honest targets. Depth weights default to 1/2^i,
normalised to sum to one.

Targets are leaf distributions y [B, X, Y, Z, K] (one-hot for a leaf; the pipeline's
pyramid gives pooled fractions). A voxel's weight is sum_k y_k, so IGNORE voxels (all-zero
rows) do not count. Cross-entropy and Dice take the per-voxel target rows as given, so a
later change can give a voxel a set of leaves (partial labels) by changing how `y` is
built and how `cross_entropy` reduces it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from msseg.diffusion import schedule as sch
from msseg.models.resize import downsample

EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class LossConfig:
    target: sch.Target = sch.Target.X0  # what the denoiser predicts
    depth_weights: tuple[float, ...] = ()  # per emitted depth; () = 1/2^i normalised
    mse_weight: float = 1.0  # diffusion regression (ignored by the deterministic mode)
    ce_weight: float = 0.0  # cross-entropy on the predicted x0 (diffusion) or the logits
    dice_weight: float = 0.0  # soft Dice, same


def depth_weights(num_outputs: int, weights: tuple[float, ...] = ()) -> np.ndarray:
    """[num_outputs] normalised weights; default proportional to 1/2^i."""
    w = np.asarray(
        weights[:num_outputs] if weights else [0.5**i for i in range(num_outputs)], float
    )
    if len(w) != num_outputs or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"need {num_outputs} non-negative depth weights, got {weights}")
    return w / w.sum()


def pyramid(x: jax.Array, num_outputs: int) -> list[jax.Array]:
    """[B, X, Y, Z, C] → the list of x average-pooled by 2^i for i < num_outputs.

    Sizes must divide by 2^(num_outputs-1) (training patches do: PipelineConfig checks it).
    """
    return [downsample(x, 2**i) for i in range(num_outputs)]


def x0_to_probs(x0: jax.Array) -> jax.Array:
    """A mask estimate in [-1, 1]^K → leaf probabilities (clip to [0, 1], renormalise)."""
    p = jnp.clip((x0 + 1.0) / 2.0, EPS, 1.0)
    return p / p.sum(axis=-1, keepdims=True)


def cross_entropy(p: jax.Array, y: jax.Array) -> jax.Array:
    """Mean over labelled voxels of -sum_k y_k log p_k (soft targets; y rows may be zero)."""
    w = y.sum(axis=-1)
    nll = -(y * jnp.log(jnp.maximum(p, EPS))).sum(axis=-1)
    return nll.sum() / jnp.maximum(w.sum(), EPS)


def soft_dice_loss(p: jax.Array, y: jax.Array, smooth: float = 1e-5) -> jax.Array:
    """1 - mean over samples and leaves of soft Dice over the labelled part of each voxel.

    y already carries a pooled cell's labelled fraction w = sum_k y_k, so only p is weighted
    by w (a half-IGNORE cell counts half its predicted mass).
    """
    w = y.sum(axis=-1, keepdims=True)
    axes = tuple(range(1, p.ndim - 1))
    inter = (p * y).sum(axes)
    denom = (p * w).sum(axes) + y.sum(axes)
    return 1.0 - ((2 * inter + smooth) / (denom + smooth)).mean()


def _weighted_mse(pred: jax.Array, target: jax.Array, y: jax.Array) -> jax.Array:
    w = y.sum(axis=-1, keepdims=True)
    return (w * (pred - target) ** 2).sum() / jnp.maximum(w.sum() * pred.shape[-1], EPS)


def diffusion_loss(
    s: sch.Schedule,
    preds: tuple[jax.Array, ...],
    y: jax.Array,
    x_t: jax.Array,
    eps: jax.Array,
    t: jax.Array,
    cfg: LossConfig,
) -> tuple[jax.Array, dict]:
    """The multiscale diffusion loss and its per-depth terms.

    preds: per depth i, [B, X/2^i, Y/2^i, Z/2^i, K] predictions of cfg.target.
    y: [B, X, Y, Z, K] leaf targets at the input resolution; x0 = 2y - 1.
    x_t, eps: [B, X, Y, Z, K] the noised mask and its noise; t: [B] int timesteps.
    """
    n = len(preds)
    weights = depth_weights(n, cfg.depth_weights)
    ys, xts, epss = pyramid(y, n), pyramid(x_t, n), pyramid(eps, n)
    total, metrics = 0.0, {}
    for i, pred in enumerate(preds):
        x0_i = 2.0 * ys[i] - 1.0
        target = sch.target_from(s, x0_i, epss[i], t, cfg.target)
        terms = {"mse": _weighted_mse(pred, target, ys[i])}
        if cfg.ce_weight or cfg.dice_weight:
            x0_hat, _ = sch.to_x0_eps(s, xts[i], t, pred, cfg.target)
            p = x0_to_probs(jnp.clip(x0_hat, -1.0, 1.0))
            terms["ce"] = cross_entropy(p, ys[i])
            terms["dice"] = soft_dice_loss(p, ys[i])
        depth_loss = cfg.mse_weight * terms["mse"]
        depth_loss += cfg.ce_weight * terms.get("ce", 0.0) + cfg.dice_weight * terms.get(
            "dice", 0.0
        )
        total = total + weights[i] * depth_loss
        metrics.update({f"{k}/depth{i}": v for k, v in terms.items()})
    metrics["loss"] = total
    return total, metrics


def segmentation_loss(
    logits: tuple[jax.Array, ...], y: jax.Array, cfg: LossConfig
) -> tuple[jax.Array, dict]:
    """The deterministic mode's loss: CE + soft Dice on softmax(logits) at every depth.

    With both weights zero (the diffusion defaults) it falls back to CE + Dice with weight 1.
    """
    ce_w, dice_w = (
        (cfg.ce_weight, cfg.dice_weight) if cfg.ce_weight or cfg.dice_weight else (1.0, 1.0)
    )
    n = len(logits)
    weights = depth_weights(n, cfg.depth_weights)
    ys = pyramid(y, n)
    total, metrics = 0.0, {}
    for i, lg in enumerate(logits):
        p = jax.nn.softmax(lg, axis=-1)
        ce, dice = cross_entropy(p, ys[i]), soft_dice_loss(p, ys[i])
        total = total + weights[i] * (ce_w * ce + dice_w * dice)
        metrics.update({f"ce/depth{i}": ce, f"dice/depth{i}": dice})
    metrics["loss"] = total
    return total, metrics


def model_loss(
    model,
    params,
    image: jax.Array,
    y: jax.Array,
    key: jax.Array,
    s: sch.Schedule | None,
    cfg: LossConfig,
    *,
    entry_depth: int = 0,
    train: bool = True,
) -> tuple[jax.Array, dict]:
    """One training objective evaluation for a MultiscaleUNet (diffusion or deterministic).

    image [B, X, Y, Z, C] and leaf targets y [B, X, Y, Z, K], both already at the entry
    depth's resolution. Diffusion: t ~ U{0..T-1}, eps ~ N(0, I), x_t = q_sample(2y - 1),
    then `diffusion_loss`; deterministic: `segmentation_loss`. `key` also drives dropout.
    """
    k_t, k_eps, k_drop = jax.random.split(key, 3)
    rngs = {"dropout": k_drop}
    if not model.cfg.diffusion:
        logits = model.apply(params, image, entry_depth=entry_depth, train=train, rngs=rngs)
        return segmentation_loss(logits, y, cfg)
    b = image.shape[0]
    t = jax.random.randint(k_t, (b,), 0, s.num_timesteps)
    eps = jax.random.normal(k_eps, y.shape, jnp.float32)
    x_t = sch.q_sample(s, 2.0 * y - 1.0, t, eps)
    x = jnp.concatenate([x_t, image.astype(x_t.dtype)], axis=-1)
    preds = model.apply(params, x, t, entry_depth=entry_depth, train=train, rngs=rngs)
    return diffusion_loss(s, preds, y, x_t, eps, t, cfg)
