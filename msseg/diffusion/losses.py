"""The multiscale losses: diffusion regression, cross-entropy and soft Dice at every decoder depth.

Depth i of a prediction tuple is the model's output at entry depth + i; its ground truth
is the full-resolution quantity average-pooled by 2^i (the label pyramid's rule), so a
coarse depth is supervised with soft, honest targets. Depth weights default to 1/2^i,
normalised to sum to one.

Targets are *label-id fractions* f [B, X, Y, Z, J] over a `LabelSpace`'s J ids (the
protocol's leaves, tree nodes and named sets; msseg.labels): one-hot of a voxel's id, pooled
by 2^i at coarse depths; IGNORE is an all-zero row. A voxel labelled with a node or set S
("grey matter, either side") is a partial label, trained by the marginals of S:

- cross-entropy: -log sum_{k in S} p_k (the marginal likelihood; for a leaf, plain CE);
- soft Dice per label u over the voxels that decide u (labelled inside u or outside it; a
  partial label straddling u says nothing about u), averaged over the partial ids present in
  the sample and the leaves whose Dice it defines (some voxel labelled inside the leaf, or
  every labelled voxel deciding it); with leaf labels only this is the usual soft Dice over
  all leaves;
- diffusion regression: a partial voxel has no one-hot x0 to regress to (the uniform spread
  over S would teach "50 % left, 50 % right"), but its *marginal* mask is known: the
  predicted x0 is regressed on sum_{k in S} (x0_k + 1) / 2 = 1 and x0_k = -1 for k outside
  S, in x0 units: sum_{k not in S} (x0_k + 1)^2 + (sum_{k in S} (x0_k + 1) - 2)^2, which is
  the plain squared error when S is one leaf. Its noising input x0 is the spread (the mean
  of S's one-hots, the state the sampler's own uncertain x0 estimates pass through).

Both terms depend on the predicted leaf probabilities of S only through their sum, so the
gradient of the loss with respect to p_k is the same for every k in S: nothing pushes one
leaf of S against another. With every voxel labelled with a leaf, all of this reduces to
the plain leaf losses (tests/test_losses.py). `space=None` means f is already over leaves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from msseg.diffusion import schedule as sch
from msseg.models.resize import downsample

EPS = 1e-6
PARTIAL_NOISE = ("spread", "draw")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    target: sch.Target = sch.Target.X0  # what the denoiser predicts
    depth_weights: tuple[float, ...] = ()  # per emitted depth; () = 1/2^i normalised
    mse_weight: float = 1.0  # diffusion regression (ignored by the deterministic mode)
    ce_weight: float = 0.0  # cross-entropy on the predicted x0 (diffusion) or the logits
    dice_weight: float = 0.0  # soft Dice, same
    # the noising input x0 at partially labelled cells: "spread" (the mean of S's one-hots)
    # or "draw" (one leaf of S drawn per cell, so x_t looks like a labelled mask)
    partial_noise: str = "spread"
    # the chain diffuses signal_scale * x0 (input scaling; schedule.py): < 1 leaves the mask
    # harder to read from x_t, so more of the drawn t teach the model something
    signal_scale: float = 1.0
    # the timesteps training draws t from (uniformly); () = all of 0..T-1. The sampler's own
    # DDIM timesteps train exactly the steps a few-step chain takes.
    timesteps: tuple[int, ...] = ()
    # recycling (ImgX-DiffSeg, Fu et al. 2023): with this probability per example, x_t noises
    # the model's own estimate from pure noise (no gradient through it) instead of the truth,
    # as the sampler's chain does; the loss still compares with the truth. x0 / logits targets.
    recycle_prob: float = 0.0

    def __post_init__(self):
        if self.partial_noise not in PARTIAL_NOISE:
            raise ValueError(
                f"partial_noise must be one of {PARTIAL_NOISE}, got {self.partial_noise!r}"
            )
        if not self.signal_scale > 0:
            raise ValueError(f"signal_scale must be > 0, got {self.signal_scale}")
        if not 0.0 <= self.recycle_prob <= 1.0:
            raise ValueError(f"recycle_prob must lie in [0, 1], got {self.recycle_prob}")
        if self.recycle_prob and self.target not in (sch.Target.X0, sch.Target.LOGITS):
            raise ValueError("recycling needs an x0 or logits target (the truth is x0)")
        if any(t < 0 for t in self.timesteps):
            raise ValueError(f"timesteps must be >= 0, got {self.timesteps}")


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


class LabelSpace:
    """How the J label ids a training set uses relate to the model's K leaves.

    The space holds the K leaves (positions 0..K-1) and the partial ids (nodes, named sets)
    the data can hold, so fully labelled data trains in the plain leaf space (J = K).
    lut [256]: protocol id → position (J for IGNORE and ids outside the space: a zero row).
    member [J, K]: the leaves of each id; spread [J, K]: each id's mass spread evenly over
    its leaves; inside / decides [J, J] indexed [voxel id v, label u]: v's leaves all lie in
    u / v lies inside u or outside it (`Protocol.relations`).
    """

    def __init__(
        self,
        member: np.ndarray,
        inside: np.ndarray,
        outside: np.ndarray,
        ids: np.ndarray | None = None,
    ):
        member = np.asarray(member, bool)
        self.num_ids, self.num_leaves = member.shape
        if not np.array_equal(member[: self.num_leaves], np.eye(self.num_leaves, dtype=bool)):
            raise ValueError("the first K label ids must be the leaves")
        ids = np.arange(self.num_ids) if ids is None else np.asarray(ids)
        self.lut = np.full(256, self.num_ids, np.int32)
        self.lut[ids] = np.arange(self.num_ids)
        self.flat = self.num_ids == self.num_leaves
        self.member = member.astype(np.float32)
        self.spread = self.member / self.member.sum(axis=1, keepdims=True)
        self.inside = np.asarray(inside, np.float32)
        self.decides = (np.asarray(inside) | np.asarray(outside)).astype(np.float32)

    @classmethod
    def leaves(cls, k: int) -> LabelSpace:
        """Leaf labels only (J = K)."""
        eye = np.eye(k, dtype=bool)
        return cls(eye, eye, ~eye)

    @classmethod
    def from_protocol(cls, protocol, used: Sequence[int] | None = None) -> LabelSpace:
        """The leaves of a `msseg.labels.Protocol` plus its partial ids in `used` (default:
        every tree node and named set); other ids count as unlabelled."""
        k = protocol.num_leaves
        partial = range(k, protocol.num_ids) if used is None else used
        ids = np.array(sorted(set(range(k)) | {i for i in partial if k <= i < protocol.num_ids}))
        inside, outside = protocol.relations()  # [label u, voxel id v] over 256 voxel ids
        sub = np.ix_(ids, ids)
        return cls(protocol.membership()[ids], inside.T[sub], outside.T[sub], ids)

    def one_hot(self, ids: jax.Array) -> jax.Array:
        """[...] uint8 protocol ids → [..., J] float32 one-hot (IGNORE and ids outside the
        space: zeros)."""
        return jax.nn.one_hot(jnp.asarray(self.lut)[ids.astype(jnp.int32)], self.num_ids)

    def leaf_spread(self, f: jax.Array) -> jax.Array:
        """[..., J] id fractions → [..., K] leaf distribution (partial ids spread evenly)."""
        return f if self.flat else f @ self.spread

    def leaf_draw(self, f: jax.Array, key: jax.Array) -> jax.Array:
        """[..., J] → [..., K]: the leaf part of f, plus each cell's partial mass given to one
        leaf drawn from the partial ids' spread (same mean as `leaf_spread`, but hard)."""
        if self.flat:
            return f
        leaf = f[..., : self.num_leaves]
        part = self.leaf_spread(f) - leaf  # [..., K] the partial mass, spread over S
        mass = part.sum(axis=-1, keepdims=True)
        logits = jnp.log(jnp.maximum(part, 0.0) + 1e-12)
        drawn = jax.nn.one_hot(jax.random.categorical(key, logits), self.num_leaves)
        return leaf + mass * drawn

    def leaf_fraction(self, f: jax.Array) -> jax.Array:
        """[..., J] → [...]: the share of a cell labelled with leaves (not partial, not IGNORE)."""
        return f[..., : self.num_leaves].sum(axis=-1)

    def marginals(self, p: jax.Array) -> jax.Array:
        """[..., K] leaf probabilities → [..., J]: each id's probability (sum of its leaves)."""
        return p if self.flat else p @ self.member.T


def _space(space: LabelSpace | None, k: int) -> LabelSpace:
    return LabelSpace.leaves(k) if space is None else space


def x0_to_probs(x0: jax.Array) -> jax.Array:
    """A mask estimate in [-1, 1]^K → leaf probabilities (clip to [0, 1], renormalise)."""
    p = jnp.clip((x0 + 1.0) / 2.0, EPS, 1.0)
    return p / p.sum(axis=-1, keepdims=True)


def cross_entropy(p: jax.Array, f: jax.Array, space: LabelSpace | None = None) -> jax.Array:
    """Mean over labelled voxels of -sum_j f_j log P(id j) (marginal likelihood of each id)."""
    q = _space(space, p.shape[-1]).marginals(p)
    nll = -(f * jnp.log(jnp.maximum(q, EPS))).sum(axis=-1)
    return nll.sum() / jnp.maximum(f.sum(), EPS)


def cross_entropy_logits(
    logits: jax.Array, f: jax.Array, space: LabelSpace | None = None
) -> jax.Array:
    """`cross_entropy` of softmax(logits), from log_softmax: a voxel whose true class is
    confidently wrong still gets the full gradient (p - 1) instead of the EPS floor's zero.
    A partial id's marginal is the logsumexp of its leaves' log-probabilities."""
    sp = _space(space, logits.shape[-1])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    if not sp.flat:
        # [..., J]: log sum_{k in j} p_k; -inf leaves of other ids drop out of the sum
        mask = jnp.where(jnp.asarray(sp.member, bool), 0.0, -jnp.inf)  # [J, K]
        logp = jax.nn.logsumexp(logp[..., None, :] + mask, axis=-1)
    nll = -(jnp.where(f > 0, f * logp, 0.0)).sum(axis=-1)
    return nll.sum() / jnp.maximum(f.sum(), EPS)


def soft_dice_loss(
    p: jax.Array, f: jax.Array, space: LabelSpace | None = None, smooth: float = 1e-5
) -> jax.Array:
    """1 - mean soft Dice per sample over the leaves and the partial ids labelled in it.

    Label u is scored over the part of each cell that decides it: target t_u = the mass
    labelled inside u, predicted q_u = P(u) weighted by the deciding mass d_u (a pooled
    cell's labelled fraction for leaf labels; a half-IGNORE cell counts half its mass).
    """
    sp = _space(space, p.shape[-1])
    q = sp.marginals(p)
    if sp.flat:
        t, d = f, f.sum(axis=-1, keepdims=True)
    else:
        t, d = f @ sp.inside, f @ sp.decides
    axes = tuple(range(1, p.ndim - 1))
    inter = (q * t).sum(axes)
    denom = (q * d).sum(axes) + t.sum(axes)
    dice = (2 * inter + smooth) / (denom + smooth)  # [B, J]
    labelled = f.sum(axes)  # [B, J] mass labelled with each id
    leaf = jnp.arange(sp.num_ids) < sp.num_leaves
    if sp.flat:
        scored = leaf | (labelled > 0)
    else:
        # A leaf is scored where its Dice is defined: the sample labels some of it, or every
        # labelled voxel decides it. In a tissue-only sample "Left-GM" has no labelled voxel
        # and its positives hide in the "GM" voxels: its Dice would be a constant ~0 with no
        # gradient, diluting the terms that do teach something.
        mass = labelled.sum(-1, keepdims=True)
        everywhere = d.sum(axes) >= mass * (1 - 1e-5)
        scored = (leaf & (everywhere | (t.sum(axes) > 0))) | (~leaf & (labelled > 0))
    return 1.0 - (dice * scored).sum() / jnp.maximum(scored.sum(), 1)


def _weighted_mse(
    pred: jax.Array,
    target: jax.Array,
    w: jax.Array,
    partial: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """Mean squared error per labelled channel: w [...] weights each cell's leaf-labelled
    part; `partial` = (summed squared errors, weight) of the partially labelled part."""
    err, norm = (w[..., None] * (pred - target) ** 2).sum(), w.sum()
    if partial is not None:
        err, norm = err + partial[0].sum(), norm + partial[1].sum()
    return err / jnp.maximum(norm * pred.shape[-1], EPS)


def marginal_sq_error(
    x0_hat: jax.Array, f: jax.Array, space: LabelSpace
) -> tuple[jax.Array, jax.Array]:
    """The x0 regression of partially labelled cells on their marginal masks.

    For each partial id v (a node or named set) with fraction f_v of a cell:
    f_v * [sum_{k not in v} (x0_k + 1)^2 + (sum_{k in v} (x0_k + 1) - 2)^2]. Returns the
    per-cell sum [...] and the partial fraction [...]; both zero without partial labels.
    """
    k = space.num_leaves
    member = space.member[k:]  # [P, K]
    part = f[..., k:]  # [..., P]
    a = x0_hat + 1.0
    inside = a @ member.T
    outside = (a * a) @ (1.0 - member).T
    return (part * (outside + (inside - 2.0) ** 2)).sum(axis=-1), part.sum(axis=-1)


def diffusion_loss(
    s: sch.Schedule,
    preds: tuple[jax.Array, ...],
    f: jax.Array,
    x_t: jax.Array,
    eps: jax.Array,
    t: jax.Array,
    cfg: LossConfig,
    space: LabelSpace | None = None,
) -> tuple[jax.Array, dict]:
    """The multiscale diffusion loss and its per-depth terms.

    preds: per depth i, [B, X/2^i, Y/2^i, Z/2^i, K] predictions of cfg.target.
    f: [B, X, Y, Z, J] label-id fractions at the input resolution (J = K: leaf targets);
      x0 = 2 * leaf_spread(f) - 1.
    x_t, eps: [B, X, Y, Z, K] the noised mask and its noise; t: [B] int timesteps.
    """
    sp = _space(space, preds[0].shape[-1])
    n = len(preds)
    weights = depth_weights(n, cfg.depth_weights)
    fs, xts, epss = pyramid(f, n), pyramid(x_t, n), pyramid(eps, n)
    b = cfg.signal_scale
    logits = cfg.target is sch.Target.LOGITS
    total, metrics = 0.0, {}
    for i, pred in enumerate(preds):
        x0_i = 2.0 * sp.leaf_spread(fs[i]) - 1.0
        p = x0_hat = None
        if logits:  # the estimate is a distribution: losses on the softmax itself
            p = jax.nn.softmax(pred, axis=-1)
            x0_hat = 2.0 * p - 1.0
            reg, target = x0_hat, x0_i
        else:
            reg, target = pred, sch.target_from(s, x0_i, epss[i], t, cfg.target, b)
        if x0_hat is None and (cfg.ce_weight or cfg.dice_weight or not sp.flat):
            x0_hat = sch.to_x0_eps(s, xts[i], t, pred, cfg.target, b)[0] / b
        partial = None
        if not sp.flat:  # in the target's units, like the leaf part
            err, w = marginal_sq_error(x0_hat, fs[i], sp)
            partial = (err * sch.x0_error_scale(s, t, cfg.target, err, b), w)
        terms = {"mse": _weighted_mse(reg, target, sp.leaf_fraction(fs[i]), partial)}
        if cfg.ce_weight or cfg.dice_weight:
            if p is None:
                p = x0_to_probs(jnp.clip(x0_hat, -1.0, 1.0))
                terms["ce"] = cross_entropy(p, fs[i], sp)
            else:
                terms["ce"] = cross_entropy_logits(pred, fs[i], sp)
            terms["dice"] = soft_dice_loss(p, fs[i], sp)
        depth_loss = cfg.mse_weight * terms["mse"]
        depth_loss += cfg.ce_weight * terms.get("ce", 0.0) + cfg.dice_weight * terms.get(
            "dice", 0.0
        )
        total = total + weights[i] * depth_loss
        metrics.update({f"{k}/depth{i}": v for k, v in terms.items()})
    metrics["loss"] = total
    return total, metrics


def segmentation_loss(
    logits: tuple[jax.Array, ...], f: jax.Array, cfg: LossConfig, space: LabelSpace | None = None
) -> tuple[jax.Array, dict]:
    """The deterministic mode's loss: CE + soft Dice on softmax(logits) at every depth.

    With both weights zero (the diffusion defaults) it falls back to CE + Dice with weight 1.
    """
    ce_w, dice_w = (
        (cfg.ce_weight, cfg.dice_weight) if cfg.ce_weight or cfg.dice_weight else (1.0, 1.0)
    )
    n = len(logits)
    weights = depth_weights(n, cfg.depth_weights)
    fs = pyramid(f, n)
    total, metrics = 0.0, {}
    for i, lg in enumerate(logits):
        p = jax.nn.softmax(lg, axis=-1)
        ce, dice = cross_entropy_logits(lg, fs[i], space), soft_dice_loss(p, fs[i], space)
        total = total + weights[i] * (ce_w * ce + dice_w * dice)
        metrics.update({f"ce/depth{i}": ce, f"dice/depth{i}": dice})
    metrics["loss"] = total
    return total, metrics


def model_loss(
    model,
    params,
    image: jax.Array,
    f: jax.Array,
    key: jax.Array,
    s: sch.Schedule | None,
    cfg: LossConfig,
    *,
    space: LabelSpace | None = None,
    entry_depth: int = 0,
    train: bool = True,
) -> tuple[jax.Array, dict]:
    """One training objective evaluation for a MultiscaleUNet (diffusion or deterministic).

    image [B, X, Y, Z, C] and label-id fractions f [B, X, Y, Z, J] (leaf targets when
    space is None), both already at the entry depth's resolution. Diffusion: t ~ U{0..T-1}
    (or uniform over `cfg.timesteps`), eps ~ N(0, I), x_t = q_sample(b (2 y - 1)) with
    y = leaf_spread(f) (or `leaf_draw`, see LossConfig.partial_noise) and b the signal scale
    (recycled examples noise the model's own stop-gradient estimate from x_{T-1} instead),
    then `diffusion_loss`; deterministic: `segmentation_loss`. `key` also drives dropout.
    """
    k_t, k_eps, k_drop = jax.random.split(key, 3)
    rngs = {"dropout": k_drop}
    if not model.cfg.diffusion:
        logits = model.apply(params, image, entry_depth=entry_depth, train=train, rngs=rngs)
        return segmentation_loss(logits, f, cfg, space)
    sp = _space(space, model.cfg.num_classes)
    if cfg.partial_noise == "draw":  # its own key: leaf-only runs draw the same numbers
        y = sp.leaf_draw(f, jax.random.fold_in(key, 7))
    else:
        y = sp.leaf_spread(f)
    b = image.shape[0]
    if cfg.timesteps and max(cfg.timesteps) >= s.num_timesteps:
        raise ValueError(f"training timesteps {cfg.timesteps} must lie in 0..{s.num_timesteps - 1}")
    if cfg.timesteps:
        choices = jnp.asarray(cfg.timesteps, jnp.int32)
        t = choices[jax.random.randint(k_t, (b,), 0, len(cfg.timesteps))]
    else:
        t = jax.random.randint(k_t, (b,), 0, s.num_timesteps)
    eps = jax.random.normal(k_eps, y.shape, jnp.float32)
    z0 = cfg.signal_scale * (2.0 * y - 1.0)
    if cfg.recycle_prob:
        z0 = _recycled(model, params, image, z0, key, s, cfg, entry_depth, train)
    x_t = sch.q_sample(s, z0, t, eps)
    x = jnp.concatenate([x_t, image.astype(x_t.dtype)], axis=-1)
    preds = model.apply(params, x, t, entry_depth=entry_depth, train=train, rngs=rngs)
    return diffusion_loss(s, preds, f, x_t, eps, t, cfg, space)


def _recycled(model, params, image, z0, key, s, cfg: LossConfig, entry_depth: int, train: bool):
    """z0 [B, ..., K] with each example replaced, with probability cfg.recycle_prob, by the
    model's stop-gradient estimate of it from x_{T-1} (q_sample of the truth at the last
    timestep: almost pure noise), in the chain's units."""
    k_use, k_noise, k_drop = (jax.random.fold_in(key, i) for i in (11, 12, 13))
    b = z0.shape[0]
    t_max = jnp.full((b,), s.num_timesteps - 1, jnp.int32)
    x_max = sch.q_sample(s, z0, t_max, jax.random.normal(k_noise, z0.shape, jnp.float32))
    x = jnp.concatenate([x_max, image.astype(x_max.dtype)], axis=-1)
    pred = model.apply(
        jax.lax.stop_gradient(params),
        x,
        t_max,
        entry_depth=entry_depth,
        train=train,
        rngs={"dropout": k_drop},
    )[0]
    est = jax.lax.stop_gradient(
        sch.to_x0_eps(s, x_max, t_max, pred, cfg.target, cfg.signal_scale)[0]
    )
    est = jnp.clip(est, -cfg.signal_scale, cfg.signal_scale)
    use = jax.random.bernoulli(k_use, cfg.recycle_prob, (b,)).reshape((b,) + (1,) * (z0.ndim - 1))
    return jnp.where(use, est, z0)
