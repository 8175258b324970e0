"""The multiscale losses: depth weights, pooled targets, ignored voxels, both model modes."""

import jax.numpy as jnp
import numpy as np
import pytest

from msseg.diffusion import losses
from msseg.diffusion import schedule as sch

S = sch.make_schedule("cosine", 50)


def pool(a, f):
    """Plain NumPy average pooling of [B, X, Y, Z, C] by f."""
    b, x, y, z, c = a.shape
    return a.reshape(b, x // f, f, y // f, f, z // f, f, c).mean(axis=(2, 4, 6))


def one_hot_batch(seed=0, size=8, k=3):
    labels = np.random.default_rng(seed).integers(0, k, (2, size, size, size))
    return np.eye(k, dtype=np.float32)[labels]


def test_depth_weights():
    np.testing.assert_allclose(losses.depth_weights(3), np.array([1, 0.5, 0.25]) / 1.75)
    np.testing.assert_allclose(losses.depth_weights(2, (1.0, 3.0, 9.0)), [0.25, 0.75])
    with pytest.raises(ValueError):
        losses.depth_weights(3, (1.0, -1.0, 1.0))


@pytest.mark.parametrize("target", list(sch.Target))
def test_exact_predictions_give_zero_diffusion_loss(target):
    y = one_hot_batch()
    eps = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    t = jnp.array([3, 40])
    x_t = sch.q_sample(S, 2 * y - 1, t, eps)
    exact = [
        sch.target_from(S, 2 * pool(y, 2**i) - 1, pool(eps, 2**i), t, target) for i in range(3)
    ]
    cfg = losses.LossConfig(target=target, ce_weight=1.0, dice_weight=1.0)
    loss, metrics = losses.diffusion_loss(
        S, tuple(exact), jnp.asarray(y), x_t, jnp.asarray(eps), t, cfg
    )
    for i in range(3):
        assert float(metrics[f"mse/depth{i}"]) < 1e-8
    assert float(metrics["dice/depth0"]) < 1e-3  # x0 recovered exactly: one-hot
    # one-hot x0 after clipping and renormalising: p(true) = 1 / (1 + 2e-6) → tiny CE
    assert float(metrics["ce/depth0"]) < 1e-4


def test_coarse_depths_compare_with_the_pooled_target():
    y = one_hot_batch(2)
    eps = np.zeros_like(y)
    t = jnp.array([0, 0])
    x_t = sch.q_sample(S, 2 * y - 1, t, eps)
    preds = tuple(jnp.zeros((2, 8 // 2**i, 8 // 2**i, 8 // 2**i, 3)) for i in range(2))
    cfg = losses.LossConfig(target=sch.Target.X0)
    _, metrics = losses.diffusion_loss(S, preds, jnp.asarray(y), x_t, jnp.asarray(eps), t, cfg)
    np.testing.assert_allclose(
        float(metrics["mse/depth1"]), np.mean((2 * pool(y, 2) - 1) ** 2), rtol=1e-5
    )


def test_ignored_voxels_do_not_count():
    y = one_hot_batch(3)
    y[:, :4] = 0.0  # IGNORE rows
    eps = np.random.default_rng(4).standard_normal(y.shape).astype(np.float32)
    t = jnp.array([10, 20])
    x_t = sch.q_sample(S, 2 * y - 1, t, eps)
    cfg = losses.LossConfig(ce_weight=1.0, dice_weight=1.0)
    rng = np.random.default_rng(5)
    preds = [
        rng.standard_normal((2, 8 // 2**i, 8 // 2**i, 8 // 2**i, 3)).astype(np.float32)
        for i in range(2)
    ]
    base, _ = losses.diffusion_loss(S, tuple(preds), jnp.asarray(y), x_t, jnp.asarray(eps), t, cfg)
    preds[0][:, :4] += 5.0
    preds[1][:, :2] += 5.0  # pooled cells that are entirely ignored
    moved, _ = losses.diffusion_loss(S, tuple(preds), jnp.asarray(y), x_t, jnp.asarray(eps), t, cfg)
    np.testing.assert_allclose(float(moved), float(base), rtol=1e-6)
    seg, _ = losses.segmentation_loss(tuple(map(jnp.asarray, preds)), jnp.asarray(y), cfg)
    preds[0][:, :4] -= 9.0
    seg2, _ = losses.segmentation_loss(tuple(map(jnp.asarray, preds)), jnp.asarray(y), cfg)
    np.testing.assert_allclose(float(seg2), float(seg), rtol=1e-6)


def test_cross_entropy_and_dice_against_numpy():
    rng = np.random.default_rng(6)
    p = rng.dirichlet(np.ones(3), (2, 4, 4, 4)).astype(np.float32)
    y = one_hot_batch(7, 4)
    ce = -(y * np.log(p)).sum(-1).mean()
    np.testing.assert_allclose(
        float(losses.cross_entropy(jnp.asarray(p), jnp.asarray(y))), ce, rtol=1e-5
    )
    inter = (p * y).sum((1, 2, 3))
    dice = 1 - ((2 * inter + 1e-5) / (p.sum((1, 2, 3)) + y.sum((1, 2, 3)) + 1e-5)).mean()
    np.testing.assert_allclose(
        float(losses.soft_dice_loss(jnp.asarray(p), jnp.asarray(y))), dice, rtol=1e-5
    )


def test_dice_weights_partly_ignored_cells_by_their_labelled_fraction():
    p = jnp.full((1, 2, 1, 1, 2), 0.5)
    y = jnp.array([[1.0, 0.0], [0.25, 0.25]]).reshape(1, 2, 1, 1, 2)  # second cell half IGNORE
    w = np.array([1.0, 0.5])[:, None]
    pn, yn = np.asarray(p)[0, :, 0, 0], np.asarray(y)[0, :, 0, 0]
    inter, denom = (pn * yn).sum(0), (pn * w).sum(0) + yn.sum(0)
    expected = 1 - ((2 * inter + 1e-5) / (denom + 1e-5)).mean()
    np.testing.assert_allclose(float(losses.soft_dice_loss(p, y)), expected, rtol=1e-6)


def test_segmentation_loss_prefers_the_truth():
    y = jnp.asarray(one_hot_batch(8))
    good = tuple(losses.pyramid(10 * y, 3))
    bad = tuple(losses.pyramid(10 * y[..., ::-1], 3))
    cfg = losses.LossConfig()
    good_loss, good_terms = losses.segmentation_loss(good, y, cfg)
    bad_loss, _ = losses.segmentation_loss(bad, y, cfg)
    assert float(good_terms["ce/depth0"]) < 1e-3 and float(good_terms["dice/depth0"]) < 1e-3
    assert float(bad_loss) > 5 * float(good_loss)
