"""Segment with a trained model: DDPM, DDIM, DPM-Solver++, coarse-to-fine sampling, ensembles,
uncertainty.

Everything here is a pure function of (params, image, key), jittable, with the model and
settings bound statically (`functools.partial` then `jax.jit`). A sample is a mask in
[-1, 1]^K; its leaf probabilities are `losses.x0_to_probs`. An ensemble of N samples runs
as one batch of N x B; it is fused by the mean of the probabilities or by majority vote,
and gives voxel-wise predictive entropy (of the mean probabilities, nats) and the sample
variance of the probabilities (mean over leaves). Same key, same result.

Labels come from probabilities by `tree_labels`: top-down through the protocol's tree levels
(`labels.LevelTables`, passed as `tree`), so a voxel's leaf always lies under the node chosen
at every coarser level; `tree=None` is the plain argmax over leaves (a flat protocol).

Anchored ("anchored", after PD-DDPM's start from a deterministic prediction): one denoiser
call from pure noise at T-1 (the model's one-shot estimate, what a deterministic segmenter
would give), re-noised to `refine_t` by q_sample, then a truncated DDIM chain of
`refine_steps` steps: 1 + refine_steps denoiser calls, on the same chain functions.

Step fusion (`step_fusion`, after Diff-UNet's fusion of the per-step predictions): a DDIM
chain's result is a weighted mean of its steps' x0 estimates instead of the last one alone
("mean": equal weights; "linear": weight i + 1 for step i, later steps trusted more). The
same denoiser calls, a free ensemble of the chain's own estimates. For a logits model the
mean of the estimates 2·softmax − 1 is 2·(mean softmax) − 1. The chain then runs one step
at a time (each a one-step chain to x0, then the DDIM update outside it), so exported models
fuse as well, with no change to their artifacts.

DPM-Solver++(2M) ("dpmpp2m", Lu et al. 2022): `steps` denoiser calls on DDIM's timesteps, each
update using this step's and the previous step's x0 estimates (second order; the first step
is DDIM's deterministic one, the last returns the estimate). The chain function keeps no
estimate between calls, so, as for step fusion, each step is a one-step chain to x0 and the
update is computed here (`samplers.dpmpp2m_chain`): exported models run it unchanged. eta is
ignored (the solver is deterministic); step fusion applies as to DDIM.

Coarse-to-fine ("multiscale"): sample at `coarse_depth` c (image average-pooled by 2^c,
entering the U-Net at depth c) with `coarse_steps` DDIM steps; then for each finer depth,
upsample the estimate (nearest), noise it to `refine_t` by q_sample and run a truncated
DDIM chain of `refine_steps` steps from there, down to depth 0.

The samplers drive a `ChainFn`: one chain (x_t → x0, `samplers.sample_chain`) of the
denoiser entered at a given depth. `model_chain` builds it from a flax model and its params;
the exported model directory (msseg.export, msseg.inference) provides the same function as
compiled artifacts, so training-time validation and the sampling binary share this code.
This module imports no flax: the model is only called through `model.apply`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from msseg.diffusion import samplers
from msseg.diffusion import schedule as sch
from msseg.diffusion.losses import x0_to_probs
from msseg.diffusion.sampler_config import Fusion, SamplerConfig, SamplerKind, StepFusion, choice
from msseg.models.resize import downsample, upsample

if TYPE_CHECKING:
    from msseg.labels import LevelTables
    from msseg.models.unet import MultiscaleUNet

ChainFn = Callable[..., jax.Array]
"""(image [B, X, Y, Z, C] at `depth`, x_t [B, X, Y, Z, K], key, ts [S], ts_next [S], eta,
ancestral, depth) → x0 [B, X, Y, Z, K] float32: `samplers.sample_chain` of the denoiser
entered at `depth` (a static int)."""


def denoiser(
    model: MultiscaleUNet, params, image: jax.Array, entry_depth: int
) -> samplers.DenoiseFn:
    """(x_t, t) → the model's prediction at the input's own resolution (its finest output)."""

    def fn(x_t: jax.Array, t: jax.Array) -> jax.Array:
        x = jnp.concatenate([x_t, image.astype(x_t.dtype)], axis=-1)
        return model.apply(params, x, t, entry_depth=entry_depth)[0]

    return fn


def model_chain(
    model: MultiscaleUNet,
    params,
    s: sch.Schedule,
    target: sch.Target,
    clip_x0: bool = True,
    scale: float = 1.0,
) -> ChainFn:
    """The `ChainFn` of a flax model and its params (`scale`: the signal scale it was trained
    with, `samplers.sample_chain`)."""

    def run(image, x_t, key, ts, ts_next, eta, ancestral, depth: int) -> jax.Array:
        fn = denoiser(model, params, image, depth)
        return samplers.sample_chain(
            fn,
            s,
            x_t,
            key,
            ts,
            ts_next,
            eta=eta,
            ancestral=ancestral,
            target=target,
            clip_x0=clip_x0,
            scale=scale,
        )

    return run


def step_weights(step_fusion: StepFusion | str, steps: int) -> np.ndarray:
    """float32 [steps] weights (summing to 1) of a chain's per-step estimates."""
    step_fusion = choice(StepFusion, step_fusion, "step_fusion")
    if step_fusion == StepFusion.NONE:
        w = np.eye(steps)[-1]
    elif step_fusion == StepFusion.MEAN:
        w = np.ones(steps)
    else:
        w = np.arange(1, steps + 1)
    return (w / w.sum()).astype(np.float32)


def fused_chain(
    chain: ChainFn,
    image,
    x_t,
    key,
    s: sch.Schedule,
    ts,
    ts_next,
    eta,
    depth: int,
    weights,
    scale: float = 1.0,
) -> jax.Array:
    """A DDIM chain over `ts` → `ts_next` returning sum_i weights[i] · x0_i, x0_i the estimate
    of step i (mask units). Each step is a one-step chain to x0 (`chain` with ts = [t_i],
    ts_next = [-1]: the clipped estimate), followed by the DDIM update to ts_next[i] computed
    here from it, as `samplers.sample_chain` does inside; step i's noise (eta > 0) comes from
    key i of `jax.random.split(key, S)`. With weights one-hot on the last step it equals
    `chain(image, x_t, key, ts, ts_next, eta, False, depth)`."""
    ts, ts_next = jnp.asarray(ts, jnp.int32), jnp.asarray(ts_next, jnp.int32)
    x_t = jnp.asarray(x_t, jnp.float32)
    batch, end = x_t.shape[0], jnp.full((1,), -1, jnp.int32)
    noiseless = isinstance(eta, (int, float)) and eta == 0

    def body(carry, step):
        x, acc = carry
        t, t_next, k, w = step
        x0 = chain(image, x, k, t[None], end, 0.0, False, depth)
        tb, tb_next = jnp.full((batch,), t), jnp.full((batch,), t_next)
        z0 = x0 if scale == 1.0 else scale * x0
        eps = sch.eps_from_x0(s, x, tb, z0)
        noise = jnp.zeros_like(x) if noiseless else jax.random.normal(k, x.shape, jnp.float32)
        x = samplers.ddim_step(s, x, tb, tb_next, z0, eps, eta, noise)
        return (x, acc + w * x0), None

    keys = jax.random.split(key, ts.shape[0])
    w = jnp.asarray(weights, jnp.float32)
    (_, acc), _ = jax.lax.scan(body, (x_t, jnp.zeros_like(x_t)), (ts, ts_next, keys, w))
    return acc


def dpmpp2m_chain(
    chain: ChainFn,
    image,
    x_t,
    key,
    s: sch.Schedule,
    ts,
    ts_next,
    depth: int,
    scale: float = 1.0,
    weights=None,
) -> jax.Array:
    """DPM-Solver++(2M) over `ts` → `ts_next` (`samplers.dpmpp2m_chain`), each x0 estimate a
    one-step chain to x0 (`chain` with ts = [t_i], ts_next = [-1], eta = 0: the clipped
    estimate, as in `fused_chain`). Returns x0 (mask units), or with `weights` [S] the
    weighted sum of the steps' estimates. `key` only feeds the (noiseless) chain calls."""
    end = jnp.full((1,), -1, jnp.int32)

    def x0_fn(x, t):
        x0 = chain(image, x, key, t[None], end, 0.0, False, depth)
        return x0 if scale == 1.0 else scale * x0

    z = samplers.dpmpp2m_chain(x0_fn, s, x_t, ts, ts_next, weights)
    return z if scale == 1.0 else z / scale


def _run_chain(
    chain: ChainFn, image, x_t, key, s, cfg: SamplerConfig, depth, steps, t_start, scale=1.0
):
    ancestral = cfg.kind == SamplerKind.DDPM
    kind = SamplerKind.DDPM if ancestral else SamplerKind.DDIM
    ts, ts_next = samplers.chain_timesteps(kind, s.num_timesteps, steps, t_start)
    if cfg.kind == SamplerKind.DPMPP2M:
        fused = cfg.step_fusion != StepFusion.NONE and len(ts) > 1
        w = step_weights(cfg.step_fusion, len(ts)) if fused else None
        return dpmpp2m_chain(chain, image, x_t, key, s, ts, ts_next, depth, scale, w)
    eta = 1.0 if ancestral else cfg.eta
    if not ancestral and cfg.step_fusion != StepFusion.NONE and len(ts) > 1:
        w = step_weights(cfg.step_fusion, len(ts))
        return fused_chain(chain, image, x_t, key, s, ts, ts_next, eta, depth, w, scale)
    return chain(image, x_t, key, ts, ts_next, eta, ancestral, depth)


def chain_masks(
    chain: ChainFn,
    image: jax.Array,
    key: jax.Array,
    s: sch.Schedule,
    cfg: SamplerConfig,
    num_classes: int,
    num_depths: int,
    entry_depth: int = 0,
    scale: float = 1.0,
) -> jax.Array:
    """[B, X, Y, Z, C] image → [B, X, Y, Z, K] one sampled mask in [-1, 1] per batch entry.

    The image enters at `entry_depth` (it is at that depth's resolution); the multiscale
    sampler starts `coarse_depth` depths below it and refines back up to it (re-noising
    `scale` times the estimate: the chain's signal scale).
    """
    e = entry_depth
    shape = (*image.shape[:-1], num_classes)
    if cfg.kind == SamplerKind.ANCHORED:  # PD-DDPM-style: refine the one-shot estimate
        k_init, k_first, k_noise, k_chain = jax.random.split(key, 4)
        x_t = jax.random.normal(k_init, shape, jnp.float32)
        x0 = _run_chain(chain, image, x_t, k_first, s, cfg, e, 1, None, scale)
        t_refine = int(round(cfg.refine_t * (s.num_timesteps - 1)))
        t = jnp.full((shape[0],), t_refine, jnp.int32)
        x_t = sch.q_sample(s, scale * x0, t, jax.random.normal(k_noise, shape, jnp.float32))
        steps = min(cfg.refine_steps, t_refine + 1)
        return _run_chain(chain, image, x_t, k_chain, s, cfg, e, steps, t_refine, scale)
    if cfg.kind != SamplerKind.MULTISCALE:
        k_init, k_chain = jax.random.split(key)
        x_t = jax.random.normal(k_init, shape, jnp.float32)
        return _run_chain(chain, image, x_t, k_chain, s, cfg, e, cfg.steps, None, scale)
    c = cfg.coarse_depth
    if not 0 < c < num_depths - e:
        raise ValueError(
            f"coarse_depth must be in 1..{num_depths - 1 - e} at entry depth {e}, got {c}"
        )
    spatial = image.shape[1:4]
    pad = [(0, -n % 2**c) for n in spatial]  # edge-pad to a multiple of 2^c, crop at the end
    image = jnp.pad(image, [(0, 0), *pad, (0, 0)], mode="edge")
    images = {d: downsample(image, 2**d) for d in range(c + 1)}
    keys = jax.random.split(key, 2 * (c + 1))
    x_t = jax.random.normal(keys[0], (*images[c].shape[:-1], num_classes), jnp.float32)
    x0 = _run_chain(chain, images[c], x_t, keys[1], s, cfg, e + c, cfg.coarse_steps, None, scale)
    t_refine = int(round(cfg.refine_t * (s.num_timesteps - 1)))
    for d in range(c - 1, -1, -1):
        start = upsample(x0, 2)
        t = jnp.full((start.shape[0],), t_refine, jnp.int32)
        noise = jax.random.normal(keys[2 * (c - d)], start.shape, jnp.float32)
        x_t = sch.q_sample(s, scale * start, t, noise)
        steps = min(cfg.refine_steps, t_refine + 1)
        x0 = _run_chain(
            chain, images[d], x_t, keys[2 * (c - d) + 1], s, cfg, e + d, steps, t_refine, scale
        )
    return x0[:, : spatial[0], : spatial[1], : spatial[2]]


def tree_labels(probs: jax.Array, tree: LevelTables | None = None) -> jax.Array:
    """Leaf probabilities [..., K] → [...] int32 leaf ids, decided top-down through `tree`.

    At each level (coarse to fine), among the children of the id chosen at the level above,
    the one with the largest marginal (sum of its leaves' probabilities) wins; ties go to the
    lowest id. The last level is the leaves. `tree=None` or one level: the argmax.
    """
    if tree is None or tree.num_levels == 1:
        return jnp.argmax(probs, axis=-1).astype(jnp.int32)
    choice = None
    for level in range(tree.num_levels):
        if level == tree.num_levels - 1:
            m = probs  # the leaf level: positions are leaf ids
        else:
            sums = jnp.asarray(tree.leaf_sums(level), probs.dtype)
            m = jnp.matmul(probs, sums, precision=jax.lax.Precision.HIGHEST)
        if choice is not None:
            m = jnp.where(tree.parent_index[level] == choice[..., None], m, -jnp.inf)
        choice = jnp.argmax(m, axis=-1)
    return choice.astype(jnp.int32)


def fuse(masks: jax.Array, fusion: str, tree: LevelTables | None = None) -> dict[str, jax.Array]:
    """[N, B, X, Y, Z, K] sampled masks → fused labels, probabilities, entropy and variance.

    Returns labels [B, X, Y, Z] int32 (`tree_labels` of probs), probs [B, X, Y, Z, K] (mean
    of the members' probabilities; for "vote", the shares of the members' own `tree_labels`),
    entropy [B, X, Y, Z] of the mean probabilities, variance [B, X, Y, Z] (sample variance
    of the probabilities, mean over K; exactly 0 where the members agree).
    """
    p = x0_to_probs(masks)
    mean = p.mean(axis=0)
    k = masks.shape[-1]
    probs = jax.nn.one_hot(tree_labels(p, tree), k).mean(axis=0) if fusion == Fusion.VOTE else mean
    labels = tree_labels(probs, tree)
    entropy = -(mean * jnp.log(jnp.maximum(mean, 1e-12))).sum(axis=-1)
    n = masks.shape[0]
    # deviations from the members' mean, taken from the first member: exactly 0 where every
    # member agrees (p.var is not, for some member counts)
    d = p - p[:1]
    d = d - d.mean(axis=0)
    variance = ((d * d).sum(axis=0) / max(n - 1, 1)).mean(axis=-1)
    return {
        "labels": labels,
        "probs": probs,
        "entropy": entropy,
        "variance": variance,
    }


def ensemble_masks(
    chain: ChainFn,
    image: jax.Array,
    key: jax.Array,
    s: sch.Schedule,
    cfg: SamplerConfig,
    num_classes: int,
    num_depths: int,
    entry_depth: int = 0,
    scale: float = 1.0,
) -> jax.Array:
    """[B, X, Y, Z, C] image → [N, B, X, Y, Z, K] masks of cfg.ensemble members (one batch)."""
    n, b = cfg.ensemble, image.shape[0]
    batch = jnp.broadcast_to(image[None], (n, *image.shape)).reshape(n * b, *image.shape[1:])
    masks = chain_masks(chain, batch, key, s, cfg, num_classes, num_depths, entry_depth, scale)
    return masks.reshape(n, b, *masks.shape[1:])


def segment(
    model: MultiscaleUNet,
    params,
    image: jax.Array,
    key: jax.Array,
    s: sch.Schedule,
    cfg: SamplerConfig,
    target: sch.Target,
    entry_depth: int = 0,
    tree: LevelTables | None = None,
    scale: float = 1.0,
) -> dict[str, jax.Array]:
    """[B, X, Y, Z, C] image → `fuse` of an ensemble of cfg.ensemble sampled masks."""
    chain = model_chain(model, params, s, target, cfg.clip_x0, scale)
    k, depths = model.cfg.num_classes, model.cfg.num_depths
    masks = ensemble_masks(chain, image, key, s, cfg, k, depths, entry_depth, scale)
    return fuse(masks, cfg.fusion, tree)


def segment_deterministic(
    model: MultiscaleUNet,
    params,
    image: jax.Array,
    entry_depth: int = 0,
    tree: LevelTables | None = None,
) -> dict[str, jax.Array]:
    """The deterministic segmenter's output in `segment`'s format (variance is zero)."""
    return from_logits(model.apply(params, image, entry_depth=entry_depth)[0], tree)


def from_logits(logits: jax.Array, tree: LevelTables | None = None) -> dict[str, jax.Array]:
    """[B, X, Y, Z, K] logits → `segment`'s format: softmax probabilities, their
    `tree_labels`, their entropy, zero variance."""
    probs = jax.nn.softmax(logits, axis=-1)
    entropy = -(probs * jnp.log(jnp.maximum(probs, 1e-12))).sum(axis=-1)
    labels = tree_labels(probs, tree)
    return {
        "labels": labels,
        "probs": probs,
        "entropy": entropy,
        "variance": jnp.zeros_like(entropy),
    }
