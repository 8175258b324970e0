"""The training recipe: the logits target, the signal scale, the training timesteps,
recycling, residual blocks per depth, step fusion in the sampler, and a logits model with a
signal scale through export."""

import functools
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_export_config

from msseg.diffusion import losses, samplers
from msseg.diffusion import schedule as sch
from msseg.diffusion import segment as seg
from msseg.diffusion.schedule import Target
from msseg.export import format as fmt
from msseg.models.resize import upsample
from msseg.models.unet import MultiscaleUNet, UNetConfig
from msseg.train import loop
from msseg.train import setup as setup_lib

K = 3
S = sch.make_schedule("cosine", 50)


def softmax(a):
    a = np.asarray(a, np.float64)
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def pool(a, f):
    """Plain NumPy average pooling of [B, X, Y, Z, C] by f."""
    b, x, y, z, c = a.shape
    return a.reshape(b, x // f, f, y // f, f, z // f, f, c).mean(axis=(2, 4, 6))


def one_hot_batch(seed=0, size=8, batch=2):
    labels = np.random.default_rng(seed).integers(0, K, (batch, size, size, size))
    return np.eye(K, dtype=np.float32)[labels]


def numpy_ce(p, f):
    return -(f * np.log(p)).sum() / f.sum()


def numpy_dice(p, f):
    """1 - mean soft Dice over samples and classes (every voxel labelled)."""
    axes = (1, 2, 3)
    inter = (p * f).sum(axes)
    denom = (p * f.sum(-1, keepdims=True)).sum(axes) + f.sum(axes)
    return 1 - ((2 * inter + 1e-5) / (denom + 1e-5)).mean()


def fast_key(seed):
    """An rbg key: XLA:CPU compiles its sampling (and a model's init) far faster than
    threefry's."""
    return jax.random.key(seed, impl="rbg")


# ---------------------------------------------------------------------------------------
# The logits target: x0 = 2 softmax - 1, CE and Dice on the softmax itself.


@pytest.mark.parametrize("scale", [0.3, 1.0])
def test_logits_give_the_scaled_softmax_mask_and_the_noise_q_sample_used(scale):
    rng = np.random.default_rng(0)
    y = one_hot_batch(0, 4)
    logits = rng.normal(0, 3, y.shape).astype(np.float32)
    eps = rng.standard_normal(y.shape).astype(np.float32)
    t = jnp.array([3, 40])
    x_t = sch.q_sample(S, scale * (2 * y - 1), t, jnp.asarray(eps))
    mask = 2 * softmax(logits) - 1
    np.testing.assert_allclose(sch.mask_from_logits(jnp.asarray(logits)), mask, atol=1e-6)
    z0, eps_hat = sch.to_x0_eps(S, x_t, t, jnp.asarray(logits), Target.LOGITS, scale)
    np.testing.assert_allclose(z0, scale * mask, atol=1e-6)
    # the pair is consistent: noising z0 with eps_hat gives x_t back
    np.testing.assert_allclose(sch.q_sample(S, z0, t, eps_hat), x_t, atol=1e-5)
    # large logits of the truth: the true (scaled) mask and the true noise
    z0, eps_hat = sch.to_x0_eps(S, x_t, t, jnp.asarray(30.0 * y), Target.LOGITS, scale)
    np.testing.assert_allclose(z0, scale * (2 * y - 1), atol=1e-6)
    np.testing.assert_allclose(eps_hat, eps, atol=1e-4)


def test_the_logits_loss_scores_the_softmax_with_ce_and_dice_and_regresses_its_mask():
    y = one_hot_batch(1)
    rng = np.random.default_rng(2)
    preds = [
        rng.normal(0, 2, (2, 8 // 2**i, 8 // 2**i, 8 // 2**i, K)).astype(np.float32)
        for i in range(2)
    ]
    eps = rng.standard_normal(y.shape).astype(np.float32)
    t = jnp.array([5, 45])
    x_t = sch.q_sample(S, 2 * y - 1, t, jnp.asarray(eps))
    cfg = losses.LossConfig(target=Target.LOGITS, mse_weight=0.7, ce_weight=1.0, dice_weight=0.5)
    args = (jnp.asarray(y), x_t, jnp.asarray(eps), t, cfg)
    loss, metrics = losses.diffusion_loss(S, tuple(map(jnp.asarray, preds)), *args)
    weights, want = np.array([1.0, 0.5]) / 1.5, 0.0
    for i, pred in enumerate(preds):
        p, f = softmax(pred), pool(y, 2**i)
        ce, dice = numpy_ce(p, f), numpy_dice(p, f)
        mse = np.mean((2 * p - 1 - (2 * f - 1)) ** 2)
        np.testing.assert_allclose(float(metrics[f"ce/depth{i}"]), ce, rtol=1e-5)
        np.testing.assert_allclose(float(metrics[f"dice/depth{i}"]), dice, rtol=1e-5)
        np.testing.assert_allclose(float(metrics[f"mse/depth{i}"]), mse, rtol=1e-5)
        # the library's own CE and Dice of the softmax, too
        pj, fj = jnp.asarray(p, jnp.float32), jnp.asarray(f)
        np.testing.assert_allclose(float(losses.cross_entropy(pj, fj)), ce, rtol=1e-5)
        np.testing.assert_allclose(float(losses.soft_dice_loss(pj, fj)), dice, rtol=1e-5)
        want += weights[i] * (0.7 * mse + ce + 0.5 * dice)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    # the logits carry the whole estimate: another x_t, eps and t change nothing
    other, _ = losses.diffusion_loss(
        S, tuple(map(jnp.asarray, preds)), jnp.asarray(y), 0.5 * x_t + 1, -eps, t[::-1], cfg
    )
    np.testing.assert_allclose(float(other), float(loss), rtol=1e-7)


def test_confident_correct_logits_cost_almost_nothing_and_confident_wrong_ones_a_lot():
    y = one_hot_batch(3)
    eps = np.random.default_rng(4).standard_normal(y.shape).astype(np.float32)
    t = jnp.array([10, 30])
    x_t = sch.q_sample(S, 2 * y - 1, t, jnp.asarray(eps))
    cfg = losses.LossConfig(target=Target.LOGITS, ce_weight=1.0, dice_weight=1.0)

    def terms(logits):
        return losses.diffusion_loss(
            S, (jnp.asarray(logits),), jnp.asarray(y), x_t, jnp.asarray(eps), t, cfg
        )[1]

    good = terms(20.0 * y)
    for name in ("mse", "ce", "dice"):
        assert float(good[f"{name}/depth0"]) < 1e-6, (name, float(good[f"{name}/depth0"]))
    bad = terms(20.0 * np.roll(y, 1, axis=-1))  # every voxel sure of another class
    assert float(bad["mse/depth0"]) > 2.5  # two of three mask entries off by 2
    assert float(bad["ce/depth0"]) > 10 and float(bad["dice/depth0"]) > 0.99


def _wrong_half(seed=5):
    """(one-hot y, the labels, a mask of the voxels estimated wrongly, the estimated one-hot):
    half of each volume estimated as the next class."""
    y = one_hot_batch(seed)
    lab = y.argmax(-1)
    wrong = np.zeros(lab.shape, bool)
    wrong[:, :4] = True
    est = np.eye(K, dtype=np.float32)[np.where(wrong, (lab + 1) % K, lab)]
    return y, lab, wrong, est


def _grad_at_pred(pred, y, cfg):
    t = jnp.array([10, 30])
    eps = jnp.asarray(np.random.default_rng(6).standard_normal(y.shape), jnp.float32)
    x_t = sch.q_sample(S, 2 * y - 1, t, eps)

    def loss(p):
        return losses.diffusion_loss(S, (p,), jnp.asarray(y), x_t, eps, t, cfg)[0]

    return np.asarray(jax.grad(loss)(jnp.asarray(pred)))


@pytest.mark.parametrize("term", ["dice_weight", "ce_weight"])
def test_confidently_wrong_logits_are_taught_where_an_overshooting_x0_estimate_is_not(term):
    """x0 target: an estimate beyond [-1, 1] (the wrong class at 1.5, the others at -1.5) is
    clipped before CE and Dice, so nothing reaches it; logits of the same wrong answer
    (margin 12) always lie inside, and descent raises their true class."""
    y, lab, wrong, est = _wrong_half()
    g_x0 = _grad_at_pred(
        1.5 * (2 * est - 1), y, losses.LossConfig(target=Target.X0, mse_weight=0.0, **{term: 1.0})
    )
    assert np.all(g_x0[wrong] == 0)  # the clipped estimate: no gradient at all
    g = _grad_at_pred(
        6.0 * (2 * est - 1),
        y,
        losses.LossConfig(target=Target.LOGITS, mse_weight=0.0, **{term: 1.0}),
    )
    assert np.all(np.isfinite(g))
    g_true = np.take_along_axis(g, lab[..., None], -1)[..., 0]
    assert np.all(g_true[wrong] < 0), g_true[wrong].max()  # descent raises the true class
    g_est = (g * est).sum(-1)
    assert np.all(g_est[wrong] > 0)  # and lowers the wrongly chosen one


def test_cross_entropy_of_very_confidently_wrong_logits_still_raises_the_true_class():
    y, lab, wrong, est = _wrong_half()
    cfg = losses.LossConfig(target=Target.LOGITS, mse_weight=0.0, ce_weight=1.0)
    g = _grad_at_pred(10.0 * (2 * est - 1), y, cfg)  # margin 20: p(true) ~ 2e-9
    g_true = np.take_along_axis(g, lab[..., None], -1)[..., 0]
    # log-softmax CE: d/d logit_true = (p_true - 1) / voxels ~ -1 / 1024
    assert np.all(g_true[wrong] < -0.5 / wrong.size), g_true[wrong].max()


# ---------------------------------------------------------------------------------------
# The signal scale: the chain diffuses scale * mask; samples come back in mask units.


def mask_oracle(s, x0, target, scale):
    """A denoiser that knows the mask x0: the exact `target` for the current x_t of the chain
    on z = scale * x0 (logits: large logits of the one-hot x0)."""

    def denoise(x_t, t):
        if target is Target.LOGITS:
            return 20.0 * (x0 + 1.0)
        eps = sch.eps_from_x0(s, x_t, t, scale * x0)
        return sch.target_from(s, x0, eps, t, target, scale)

    return denoise


@pytest.mark.parametrize(
    "target,scale",
    [(t, 0.3) for t in Target] + [(Target.X0, 1.0), (Target.LOGITS, 1.0)],
)
@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_an_oracle_chain_on_the_scaled_mask_returns_the_mask(kind, target, scale):
    s = sch.make_schedule("linear", 50)
    rng = np.random.default_rng(7)
    if target is Target.LOGITS:
        x0 = 2 * one_hot_batch(8, 4) - 1
    else:
        x0 = rng.uniform(-1, 1, (2, 4, 4, 4, K)).astype(np.float32)
    x0 = jnp.asarray(x0)
    noise = jnp.asarray(rng.standard_normal(x0.shape), jnp.float32)
    x_T = sch.q_sample(s, scale * x0, jnp.full((2,), 49, jnp.int32), noise)
    ts, ts_next = samplers.chain_timesteps(kind, 50, 5)
    out = samplers.sample_chain(
        mask_oracle(s, x0, target, scale),
        s,
        x_T,
        fast_key(1),
        ts,
        ts_next,
        eta=1.0 if kind == "ddpm" else 0.0,
        ancestral=kind == "ddpm",
        target=target,
        scale=scale,
    )
    np.testing.assert_allclose(out, x0, atol=1e-4)


def test_the_multiscale_sampler_renoises_the_scaled_estimate():
    """The coarse chain returns a known mask; the refine chain takes one step from t = 0 with a
    denoiser that reads the mask off x_t as scale * mask (x_t / (scale sqrt(ab))): it gives
    back the upsampled coarse mask only if the sampler noised scale times it (without the
    scale it would read twice the mask)."""
    scale = 0.5
    s = sch.make_schedule("linear", 1000)
    rng = np.random.default_rng(9)
    coarse = rng.uniform(0.3, 0.6, (1, 4, 4, 4, K)) * rng.choice([-1, 1], (1, 4, 4, 4, K))
    coarse = jnp.asarray(coarse, jnp.float32)
    sqrt_ab = s.table("sqrt_alphas_cumprod")

    def chain(image, x_t, key, ts, ts_next, eta, ancestral, depth):
        if depth == 1:
            den = lambda x, t: coarse  # noqa: E731
        else:
            den = lambda x, t: x / (scale * sqrt_ab[t][:, None, None, None, None])  # noqa: E731
        return samplers.sample_chain(
            den, s, x_t, key, ts, ts_next, eta=eta, ancestral=ancestral, target=Target.X0,
            scale=scale,
        )  # fmt: skip

    cfg = seg.SamplerConfig(
        kind="multiscale", coarse_depth=1, coarse_steps=2, refine_t=0.0, refine_steps=1
    )
    out = seg.chain_masks(chain, jnp.zeros((1, 8, 8, 8, 1)), fast_key(0), s, cfg, K, 2, 0, scale)
    err = np.abs(np.asarray(out) - np.asarray(upsample(coarse, 2)))
    assert err.mean() < 0.03 and err.max() < 0.15, (err.mean(), err.max())


# A tiny model and batch for the training objective (model_loss).
S100 = sch.make_schedule("linear", 100)


@functools.cache
def tiny():
    """(model, params, image [2, 8³, 1], one-hot y [2, 8³, K]) of a 2-depth U-Net."""
    cfg = UNetConfig(num_classes=K, channels=(4, 8), num_res_blocks=1, norm_groups=2)
    model = MultiscaleUNet(cfg)
    x = jnp.zeros((1, 8, 8, 8, cfg.in_channels))
    params = jax.jit(model.init)(fast_key(0), x, jnp.zeros((1,), jnp.int32))
    rng = np.random.default_rng(10)
    image = jnp.asarray(rng.standard_normal((2, 8, 8, 8, 1)), jnp.float32)
    return model, params, image, jnp.asarray(one_hot_batch(11))


@functools.partial(jax.jit, static_argnames="cfg")
def model_loss(params, key, cfg):
    model, _, image, y = tiny()
    return losses.model_loss(model, params, image, y, key, S100, cfg)[0]


@functools.partial(jax.jit, static_argnames="cfg")
def loss_at(params, key, cfg, t, z0=None):
    """model_loss's objective with its noise draw for `key`, at given timesteps t [B] and
    noising input z0 (default: the truth times the signal scale), z0 a constant."""
    model, _, image, y = tiny()
    _, k_eps, k_drop = jax.random.split(key, 3)
    eps = jax.random.normal(k_eps, y.shape, jnp.float32)
    z0 = cfg.signal_scale * (2.0 * y - 1.0) if z0 is None else z0
    x_t = sch.q_sample(S100, z0, t, eps)
    x = jnp.concatenate([x_t, image], axis=-1)
    preds = model.apply(params, x, t, train=True, rngs={"dropout": k_drop})
    return losses.diffusion_loss(S100, preds, y, x_t, eps, t, cfg)[0]


def drawn_t(key):
    """The timesteps model_loss draws from all of 0..T-1."""
    return jax.random.randint(jax.random.split(key, 3)[0], (2,), 0, 100)


def test_signal_scale_one_is_the_default_and_another_scale_noises_the_scaled_truth():
    params, key = tiny()[1], fast_key(12)
    base = float(model_loss(params, key, losses.LossConfig()))
    assert float(model_loss(params, key, losses.LossConfig(signal_scale=1.0))) == base
    np.testing.assert_allclose(base, float(loss_at(params, key, losses.LossConfig(), drawn_t(key))))
    cfg = losses.LossConfig(signal_scale=0.3)
    scaled = float(model_loss(params, key, cfg))
    assert abs(scaled - base) > 1e-4 * abs(base)
    np.testing.assert_allclose(scaled, float(loss_at(params, key, cfg, drawn_t(key))), rtol=1e-6)
    with pytest.raises(ValueError, match="signal_scale"):
        losses.LossConfig(signal_scale=0.0)


# ---------------------------------------------------------------------------------------
# The training timesteps.


def test_training_draws_each_example_s_timestep_from_the_given_set_only():
    params = tiny()[1]
    allowed = (17, 60, 88)
    cfg = losses.LossConfig(timesteps=allowed)
    seen = set()
    for i in range(6):
        key = fast_key(100 + i)
        got = float(model_loss(params, key, cfg))
        by_t = {
            (a, b): float(loss_at(params, key, cfg, jnp.array([a, b])))
            for a in allowed
            for b in allowed
        }
        assert len({round(v, 6) for v in by_t.values()}) == len(by_t)  # the pairs differ
        match = [ts for ts, v in by_t.items() if abs(v - got) <= 1e-6 * abs(got)]
        assert len(match) == 1, (got, by_t)
        seen |= set(match[0])
    assert len(seen) >= 2  # not one fixed timestep
    for k in (0, 99):  # a single timestep, at either end of the schedule
        key = fast_key(7)
        one = float(model_loss(params, key, losses.LossConfig(timesteps=(k,))))
        np.testing.assert_allclose(one, float(loss_at(params, key, cfg, jnp.array([k, k]))))
    with pytest.raises(ValueError, match="timesteps"):
        losses.LossConfig(timesteps=(3, -1))


def test_a_training_timestep_outside_the_schedule_is_refused():
    with pytest.raises(ValueError, match="timesteps"):
        model_loss(tiny()[1], fast_key(7), losses.LossConfig(timesteps=(100,)))  # T = 100


def test_train_timesteps_are_all_or_the_sampler_s_ddim_timesteps():
    sampler = seg.SamplerConfig(steps=5)
    ts = setup_lib.train_timesteps("sampler", 1000, sampler)
    assert isinstance(ts, tuple) and all(type(t) is int for t in ts)
    assert ts == tuple(samplers.ddim_timesteps(1000, 5).tolist()) and ts[0] == 999
    assert setup_lib.train_timesteps("all", 1000, sampler) == ()
    with pytest.raises(ValueError, match="train_timesteps"):
        setup_lib.train_timesteps("ddim", 1000, sampler)


# ---------------------------------------------------------------------------------------
# Recycling: x_t noises the model's own stop-gradient estimate.


@pytest.mark.parametrize("target", [Target.EPS, Target.V])
def test_recycling_needs_an_x0_or_logits_target(target):
    with pytest.raises(ValueError, match="recycling"):
        losses.LossConfig(target=target, recycle_prob=0.5)
    losses.LossConfig(target=target, recycle_prob=0.0)


@pytest.mark.parametrize("prob", [-0.1, 1.5, float("nan")])
def test_a_recycling_probability_outside_zero_one_is_refused(prob):
    with pytest.raises(ValueError, match="recycle_prob"):
        losses.LossConfig(recycle_prob=prob)


def _recycled_by_hand(params, key, cfg):
    """`losses._recycled` at recycle_prob = 1 (every example), written out *without* the
    stop-gradient: the estimate of the truth from x_{T-1}."""
    model, _, image, y = tiny()
    z0 = cfg.signal_scale * (2.0 * y - 1.0)
    t_max = jnp.full((2,), 99, jnp.int32)
    noise = jax.random.normal(jax.random.fold_in(key, 12), z0.shape, jnp.float32)
    x_max = sch.q_sample(S100, z0, t_max, noise)
    x = jnp.concatenate([x_max, image], axis=-1)
    rngs = {"dropout": jax.random.fold_in(key, 13)}
    pred = model.apply(params, x, t_max, train=True, rngs=rngs)[0]
    z0_hat = sch.to_x0_eps(S100, x_max, t_max, pred, cfg.target, cfg.signal_scale)[0]
    return jnp.clip(z0_hat, -cfg.signal_scale, cfg.signal_scale)


def test_recycled_inputs_change_the_loss_but_no_gradient_flows_through_the_estimate():
    """model_loss with recycling equals, in value and gradient, the same objective with the
    model's estimate from x_{T-1} (written out by hand) held constant as the noising input;
    the gradient through that estimate would differ by half its size."""
    params, key = tiny()[1], fast_key(13)
    cfg = losses.LossConfig(target=Target.LOGITS, ce_weight=1.0, signal_scale=0.5, recycle_prob=1.0)
    t = drawn_t(key)

    def through(p):  # the gradient through the estimate too
        z0_p = _recycled_by_hand(p, key, cfg)
        return loss_at(p, key, cfg, t, z0_p), z0_p

    through_grads, z0 = jax.jit(jax.grad(through, has_aux=True))(params)
    truth = 0.5 * (2.0 * tiny()[3] - 1.0)
    assert float(jnp.abs(z0 - truth).mean()) > 0.1 and float(jnp.abs(z0).max()) <= 0.5
    value, grads = jax.value_and_grad(model_loss)(params, key, cfg)
    fixed = jax.jit(jax.value_and_grad(loss_at), static_argnames="cfg")
    fixed_value, fixed_grads = fixed(params, key, cfg, t, z0)
    np.testing.assert_allclose(float(value), float(fixed_value), rtol=1e-5)
    leaves, fixed_leaves = jax.tree.leaves(grads), jax.tree.leaves(fixed_grads)
    assert all(bool(jnp.isfinite(g).all()) for g in leaves)
    assert max(float(jnp.abs(g).max()) for g in leaves) > 1e-3
    for g, h in zip(leaves, fixed_leaves, strict=True):
        np.testing.assert_allclose(g, h, rtol=1e-3, atol=1e-6)
    # recycling changed the loss: noising the truth (no recycling) gives another
    unrecycled = float(fixed(params, key, cfg, t, truth)[0])
    assert abs(float(value) - unrecycled) > 1e-3 * abs(unrecycled)
    # what the comparison rules out: the gradient through the estimate
    diff = max(
        float(jnp.abs(a - b).max() / jnp.abs(b).max())
        for a, b in zip(jax.tree.leaves(through_grads), fixed_leaves, strict=True)
    )
    assert diff > 0.1, diff


def test_recycling_replaces_a_share_of_the_examples_and_keeps_the_others():
    model, params, _, _ = tiny()
    y = jnp.asarray(one_hot_batch(14, 8, batch=8))
    image = jnp.asarray(np.random.default_rng(15).standard_normal((8, 8, 8, 8, 1)), jnp.float32)
    truth = 2.0 * y - 1.0
    cfg = losses.LossConfig(recycle_prob=0.5)
    z0 = losses._recycled(model, params, image, truth, fast_key(16), S100, cfg, 0, False)
    kept = np.asarray((z0 == truth).all(axis=(1, 2, 3, 4)))
    changed = np.asarray(jnp.abs(z0 - truth).mean(axis=(1, 2, 3, 4)) > 0.1)
    assert np.all(kept | changed) and kept.any() and changed.any(), (kept, changed)


# ---------------------------------------------------------------------------------------
# Residual blocks per depth.


def unet(**kw):
    base = {"num_classes": K, "channels": (4, 8, 8), "num_res_blocks": 1, "norm_groups": 2}
    return MultiscaleUNet(UNetConfig(**{**base, **kw}))


def param_shapes(model):
    """{name: {param: shape}} of the model's parameters (no compilation)."""
    x = jax.ShapeDtypeStruct((2, 8, 8, 8, model.cfg.in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((2,), jnp.int32)
    tree = jax.eval_shape(model.init, fast_key(0), x, t)["params"]
    return jax.tree.map(lambda a: a.shape, tree)


def test_zero_blocks_at_a_depth_leave_it_without_residual_blocks():
    names = set(param_shapes(unet(num_res_blocks=1)))
    assert {"enc0_res0", "dec0_res0", "enc1_res0"} <= names  # the names checked below
    model = unet(num_res_blocks=(0, 1, 1))
    assert [model.cfg.blocks(d) for d in range(3)] == [0, 1, 1]
    names = set(param_shapes(model))
    assert not any(n.startswith(("enc0_res", "dec0_res")) for n in names)
    assert {"enc1_res0", "enc2_res0", "dec1_res0", "stem0", "head0"} <= names
    assert "enc1_res1" not in names
    x = jnp.ones((2, 8, 8, 8, model.cfg.in_channels))
    params = jax.jit(model.init)(fast_key(0), x, jnp.zeros((2,), jnp.int32))
    run = jax.jit(model.apply, static_argnames="entry_depth")
    rng = np.random.default_rng(17)
    for e in (0, 1):
        size = 8 // 2**e
        x = jnp.asarray(rng.standard_normal((2, size, size, size, model.cfg.in_channels)))
        preds = run(params, x, jnp.array([3, 40]), entry_depth=e)
        assert [p.shape for p in preds] == [
            (2, 8 // 2**d, 8 // 2**d, 8 // 2**d, K) for d in range(e, 3)
        ]
        assert all(bool(jnp.isfinite(p).all()) for p in preds)


def test_one_count_as_an_int_or_a_one_tuple_builds_the_same_model():
    ref = param_shapes(unet(num_res_blocks=2))
    assert "enc2_res1" in ref and "enc2_res2" not in ref and "dec0_res1" in ref
    for blocks in ((2,), (2, 2, 2)):
        assert param_shapes(unet(num_res_blocks=blocks)) == ref
    per_depth = param_shapes(unet(num_res_blocks=(1, 2, 3)))
    assert {"enc2_res2", "dec1_res1"} <= set(per_depth) and "enc0_res1" not in per_depth
    assert per_depth != ref


@pytest.mark.parametrize("blocks", [(1, 1), (1, 1, 1, 1), (), -1, (-1,), (1, -1, 1), (1.5,)])
def test_a_wrong_number_of_counts_or_a_negative_count_is_refused(blocks):
    with pytest.raises(ValueError, match="num_res_blocks"):
        UNetConfig(num_classes=K, channels=(4, 8, 8), num_res_blocks=blocks)


# ---------------------------------------------------------------------------------------
# Step fusion: a DDIM chain's per-step estimates averaged.


def tiny_chain(target, scale):
    model, params, image, _ = tiny()
    return seg.model_chain(model, params, S100, target, True, scale), image


def test_step_weights_sum_to_one_and_none_keeps_the_last_estimate():
    np.testing.assert_allclose(seg.step_weights("none", 4), [0, 0, 0, 1])
    np.testing.assert_allclose(seg.step_weights("mean", 4), [0.25] * 4)
    np.testing.assert_allclose(seg.step_weights("linear", 4), np.arange(1, 5) / 10)
    with pytest.raises(ValueError, match="step_fusion"):
        seg.step_weights("median", 4)


@pytest.mark.parametrize(
    "target,scale,eta", [(Target.LOGITS, 0.5, 0.0), (Target.X0, 1.0, 0.0), (Target.X0, 1.0, 0.7)]
)
def test_a_fused_chain_weighting_only_the_last_step_is_the_plain_chain(target, scale, eta):
    chain, image = tiny_chain(target, scale)
    x_t = jax.random.normal(fast_key(4), (*image.shape[:-1], K))
    ts, ts_next = samplers.chain_timesteps("ddim", 100, 4)
    plain = chain(image, x_t, fast_key(5), ts, ts_next, eta, False, 0)
    last = seg.step_weights("none", 4)
    fused = seg.fused_chain(chain, image, x_t, fast_key(5), S100, ts, ts_next, eta, 0, last, scale)
    np.testing.assert_allclose(fused, plain, atol=2e-5)


@pytest.mark.parametrize("fusion", ["mean", "linear"])
def test_a_fused_chain_averages_the_estimates_the_chain_makes_at_each_step(fusion):
    """The oracle: estimate i is the chain's first i steps followed by a last step to x0
    (eta = 0: the same trajectory), computed without fused_chain."""
    chain, image = tiny_chain(Target.LOGITS, 0.5)
    x_t = jax.random.normal(fast_key(6), (*image.shape[:-1], K))
    ts, ts_next = samplers.chain_timesteps("ddim", 100, 4)
    estimates = [
        chain(image, x_t, fast_key(7), ts[: i + 1], np.append(ts_next[:i], -1), 0.0, False, 0)
        for i in range(4)
    ]
    w = seg.step_weights(fusion, 4)
    want = sum(wi * e for wi, e in zip(w, estimates, strict=True))
    fused = seg.fused_chain(chain, image, x_t, fast_key(7), S100, ts, ts_next, 0.0, 0, w, 0.5)
    np.testing.assert_allclose(fused, want, atol=2e-5)
    assert np.abs(np.asarray(fused) - np.asarray(estimates[-1])).max() > 1e-3  # not the last


def test_the_sampler_fuses_its_ddim_chain_when_asked_and_not_otherwise():
    chain, image = tiny_chain(Target.LOGITS, 0.5)
    masks = {
        f: seg.chain_masks(chain, image, fast_key(8), S100, seg.SamplerConfig(
            steps=3, step_fusion=f), K, 2, 0, 0.5)
        for f in ("none", "mean")
    }  # fmt: skip
    k_init, k_chain = jax.random.split(fast_key(8))
    x_t = jax.random.normal(k_init, masks["none"].shape, jnp.float32)
    ts, ts_next = samplers.chain_timesteps("ddim", 100, 3)
    np.testing.assert_allclose(
        masks["none"], chain(image, x_t, k_chain, ts, ts_next, 0.0, False, 0)
    )
    w = seg.step_weights("mean", 3)
    want = seg.fused_chain(chain, image, x_t, k_chain, S100, ts, ts_next, 0.0, 0, w, 0.5)
    np.testing.assert_allclose(masks["mean"], want, atol=1e-6)


@pytest.mark.parametrize("kw", [{"step_fusion": "median"}, {"kind": "ddpm", "step_fusion": "mean"}])
def test_an_unknown_step_fusion_or_fusing_ddpm_is_refused(kw):
    with pytest.raises(ValueError, match="step.fusion"):
        seg.SamplerConfig(**kw)


# ---------------------------------------------------------------------------------------
# A logits model with signal scale 0.5: trained, exported, sampled on both routes.


def _tiny_logits(cache):
    c = tiny_export_config(cache, steps=2)
    d = c.diffusion
    d.target = "logits"
    d.signal_scale = 0.5
    d.mse_weight = 0.0
    d.ce_weight = 1.0
    d.dice_weight = 1.0
    return c


def test_the_setup_reads_the_recipe_from_the_config(tiny_mni_cache):
    c = _tiny_logits(tiny_mni_cache)
    c.diffusion.train_timesteps = "sampler"
    c.diffusion.recycle_prob = 0.25
    loss = setup_lib.build_setup(c, str(tiny_mni_cache)).loss
    assert loss.target is Target.LOGITS and loss.signal_scale == 0.5
    assert loss.recycle_prob == 0.25
    assert loss.timesteps == tuple(samplers.ddim_timesteps(100, c.sampler.steps).tolist())
    c.diffusion.train_timesteps = "every"
    with pytest.raises(ValueError, match="train_timesteps"):
        setup_lib.build_setup(c, str(tiny_mni_cache))


@pytest.fixture(scope="module")
def exported_logits(tmp_path_factory, tiny_mni_cache):
    """(model dir, raw dataset folder) of a tiny logits model trained 2 steps and exported."""
    from msseg.export import exporter

    root = tmp_path_factory.mktemp("recipe_export")
    metrics = loop.train(_tiny_logits(tiny_mni_cache), root / "run")
    assert metrics["step"] == 2
    model_dir = exporter.export_model(root / "run", root / "model")
    manifest = json.loads((Path(tiny_mni_cache) / "manifest.json").read_text())
    return model_dir, Path(manifest["root"])


def _segment(model_dir, route, kind, raw, scale=0.5, **sampler):
    from msseg import io
    from msseg.data.prepare import prepare_image
    from msseg.inference import model as model_lib
    from msseg.inference import predict

    model = model_lib.load_model(model_dir, route=route)
    assert model.route == route and model.signal_scale == scale
    cfg = model_lib.sampler_config(
        model, kind=kind, steps=3, coarse_steps=2, refine_steps=2, **sampler
    )
    segmenter = predict.Segmenter(model, predict.Options(cfg, batch=8))
    image = sorted((raw / "imagesTs").glob("*.nii.gz"))[0]
    prepared, _ = prepare_image(io.load_image(image), model.preprocess)
    crop = prepared.image[:24, :24, :24]  # 8 windows of 16³
    return segmenter.segment_array(crop, jax.random.key(3))


@pytest.mark.parametrize("kind", ["ddim", "multiscale"])
def test_a_scaled_logits_model_gives_the_same_segmentation_on_both_routes(
    exported_logits, kind, tmp_path
):
    model_dir, raw = exported_logits
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert meta["diffusion"]["signal_scale"] == 0.5 and meta["diffusion"]["target"] == "logits"
    out = {route: _segment(model_dir, route, kind, raw) for route in ("exported", "local")}
    np.testing.assert_allclose(out["exported"][0], out["local"][0], atol=2e-3)
    same = np.mean(out["exported"][0].argmax(-1) == out["local"][0].argmax(-1))
    assert same > 0.995, same
    if kind == "ddim":  # the scale is read from the metadata: 1.0 there samples otherwise
        unscaled = tmp_path / "unscaled"
        shutil.copytree(model_dir, unscaled)
        meta["diffusion"]["signal_scale"] = 1.0
        meta["metadata_sha256"] = fmt.metadata_digest(meta)  # a deliberate, re-signed edit
        (unscaled / "metadata.json").write_text(json.dumps(meta))
        other = _segment(unscaled, "local", kind, raw, scale=1.0)
        assert np.abs(other[0] - out["local"][0]).max() > 1e-2


def test_step_fusion_gives_the_same_segmentation_on_both_routes(exported_logits):
    model_dir, raw = exported_logits
    out = {
        r: _segment(model_dir, r, "ddim", raw, step_fusion="mean") for r in ("exported", "local")
    }
    np.testing.assert_allclose(out["exported"][0], out["local"][0], atol=2e-3)
    plain = _segment(model_dir, "local", "ddim", raw)
    assert np.abs(plain[0] - out["local"][0]).max() > 1e-3
