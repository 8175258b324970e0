"""Learning: the diffusion model and the deterministic mode segment a 3D phantom (slow, CPU)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from msseg.diffusion import losses, segment
from msseg.diffusion import schedule as sch
from msseg.models.resize import downsample
from msseg.models.unet import MultiscaleUNet, UNetConfig

SIZE, K = 16, 3


def phantom(rng: np.random.Generator, n: int):
    """n cases of a ball (class 1) and a box (class 2) in noise: image [n,S,S,S,1], one-hot y."""
    grid = np.stack(np.meshgrid(*[np.arange(SIZE)] * 3, indexing="ij"), -1).astype(np.float32)
    images, labels = [], []
    for _ in range(n):
        lab = np.zeros((SIZE,) * 3, np.int64)
        box_c, box_h = rng.uniform(0.25, 0.75, 3) * SIZE, rng.uniform(0.12, 0.2) * SIZE
        ball_c, ball_r = rng.uniform(0.3, 0.7, 3) * SIZE, rng.uniform(0.17, 0.25) * SIZE
        lab[np.all(np.abs(grid - box_c) < box_h, -1)] = 2
        lab[np.linalg.norm(grid - ball_c, axis=-1) < ball_r] = 1
        means = np.array([0.0, 1.0, -1.0]) + rng.normal(0, 0.1, 3)
        images.append(means[lab] + rng.normal(0, 0.3, lab.shape))
        labels.append(lab)
    return np.stack(images)[..., None].astype(np.float32), np.eye(K, dtype=np.float32)[
        np.stack(labels)
    ]


def dice(pred: np.ndarray, onehot: np.ndarray) -> list[float]:
    ref = onehot.argmax(-1)
    return [
        2 * ((pred == k) & (ref == k)).sum() / ((pred == k).sum() + (ref == k).sum())
        for k in (1, 2)
    ]


def train(model, s, steps: int, entry1_every: int = 0, decay: bool = False):
    """Adam on fresh phantoms; every `entry1_every` steps also one step at depth 1 (2x pooled)."""
    rng = np.random.default_rng(0)
    x, y = phantom(rng, 4)
    t0 = jnp.zeros((4,), jnp.int32) if model.cfg.diffusion else None
    params = jax.jit(model.init)(jax.random.key(0), jnp.concatenate([y, x], -1) if s else x, t0)
    opt = optax.adam(optax.cosine_decay_schedule(3e-3, steps, alpha=0.05) if decay else 3e-3)
    opt_state = opt.init(params)
    cfg = losses.LossConfig()

    @functools.partial(jax.jit, static_argnames="entry")
    def step(params, opt_state, x, y, key, entry):
        def loss_fn(p):
            return losses.model_loss(model, p, x, y, key, s, cfg, entry_depth=entry)[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    history = {0: [], 1: []}
    for i in range(steps):
        x, y = phantom(rng, 4)
        params, opt_state, loss = step(params, opt_state, x, y, jax.random.key(i), 0)
        history[0].append(float(loss))
        if entry1_every and i % entry1_every == 0:
            x1, y1 = downsample(jnp.asarray(x), 2), downsample(jnp.asarray(y), 2)
            params, opt_state, loss = step(params, opt_state, x1, y1, jax.random.key(10**6 + i), 1)
            history[1].append(float(loss))
    return params, history


@pytest.mark.slow
def test_diffusion_model_segments_a_phantom_with_ddim10():
    model = MultiscaleUNet(
        UNetConfig(num_classes=K, channels=(8, 16, 32), num_res_blocks=1, norm_groups=4)
    )
    s = sch.make_schedule("linear", 100)  # low SNR for binary masks: the image must be read sooner
    params, history = train(model, s, steps=500, entry1_every=4)
    # an input entering at depth 1 gives outputs at depths 1 and 2 only, and its loss falls
    x, y = phantom(np.random.default_rng(98), 2)
    x1 = jnp.concatenate([downsample(jnp.asarray(2 * y - 1), 2), downsample(jnp.asarray(x), 2)], -1)
    preds = model.apply(params, x1, jnp.array([5, 5]), entry_depth=1)
    assert [p.shape[1] for p in preds] == [SIZE // 2, SIZE // 4]
    assert np.mean(history[1][-10:]) < 0.5 * np.mean(history[1][:10])
    assert np.mean(history[0][-20:]) < 0.2 * np.mean(history[0][:10])
    x, y = phantom(np.random.default_rng(99), 8)
    sample = jax.jit(
        functools.partial(
            segment.segment,
            model,
            s=s,
            target=sch.Target.X0,
            cfg=segment.SamplerConfig(kind="ddim", steps=10),
        )
    )
    out = sample(params, jnp.asarray(x), jax.random.key(1))
    scores = dice(np.asarray(out["labels"]), y)
    print(f"diffusion DDIM-10 Dice (ball, box): {scores}")  # shown with pytest -s
    assert min(scores) >= 0.9, scores


@pytest.mark.slow
def test_deterministic_mode_segments_a_phantom():
    model = MultiscaleUNet(
        UNetConfig(
            num_classes=K, channels=(8, 16, 32), num_res_blocks=1, norm_groups=4, diffusion=False
        )
    )
    params, _ = train(model, None, steps=250)
    x, y = phantom(np.random.default_rng(99), 8)
    out = jax.jit(functools.partial(segment.segment_deterministic, model))(params, jnp.asarray(x))
    scores = dice(np.asarray(out["labels"]), y)
    print(f"deterministic Dice (ball, box): {scores}")
    assert min(scores) >= 0.9, scores
