"""Segmenting with a model: sampler wiring, ensembles, fusion and uncertainty, determinism."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msseg.diffusion import schedule as sch
from msseg.diffusion import segment
from msseg.models.unet import MultiscaleUNet, UNetConfig

S = sch.make_schedule("cosine", 10)
CFG = UNetConfig(num_classes=3, channels=(4, 8), num_res_blocks=1, norm_groups=2)
MODEL = MultiscaleUNet(CFG)
IMAGE = jax.random.normal(jax.random.key(3), (2, 8, 8, 8, 1))


@functools.cache
def params():
    x = jnp.zeros((1, 8, 8, 8, CFG.in_channels))
    return jax.jit(MODEL.init)(jax.random.key(0), x, jnp.zeros((1,), jnp.int32))


@functools.cache
def sampler(cfg: segment.SamplerConfig):
    return jax.jit(functools.partial(segment.segment, MODEL, s=S, cfg=cfg, target=sch.Target.X0))


def run(cfg: segment.SamplerConfig, key, image=IMAGE):
    return sampler(cfg)(params(), image, key)


def test_fuse_mean_and_vote_against_numpy():
    rng = np.random.default_rng(0)
    masks = rng.uniform(-1.2, 1.2, (4, 2, 3, 3, 3, 3)).astype(np.float32)
    p = np.clip((masks + 1) / 2, 1e-6, 1)
    p /= p.sum(-1, keepdims=True)
    mean = p.mean(0)
    out = segment.fuse(jnp.asarray(masks), "mean")
    np.testing.assert_allclose(out["probs"], mean, rtol=1e-5)
    np.testing.assert_array_equal(out["labels"], mean.argmax(-1))
    np.testing.assert_allclose(out["entropy"], -(mean * np.log(mean)).sum(-1), rtol=1e-4)
    np.testing.assert_allclose(out["variance"], p.var(0, ddof=1).mean(-1), rtol=1e-4, atol=1e-7)
    votes = np.eye(3)[p.argmax(-1)].mean(0)
    vote = segment.fuse(jnp.asarray(masks), "vote")
    np.testing.assert_allclose(vote["probs"], votes, rtol=1e-6)
    assert (
        votes[np.arange(2)[:, None, None, None], *np.indices((3, 3, 3))[:, None], vote["labels"]]
        == votes.max(-1)
    ).all()


def test_identical_members_have_zero_variance():
    mask = np.random.default_rng(1).uniform(-1, 1, (1, 2, 3, 3, 3, 3)).astype(np.float32)
    out = segment.fuse(jnp.asarray(np.repeat(mask, 5, axis=0)), "mean")
    np.testing.assert_allclose(out["variance"], 0.0, atol=1e-10)


def test_ddim_ensemble_shapes_and_determinism():
    cfg = segment.SamplerConfig(kind="ddim", steps=3, eta=1.0, ensemble=2)
    a, b = run(cfg, jax.random.key(0)), run(cfg, jax.random.key(0))
    c = run(cfg, jax.random.key(1))
    assert a["labels"].shape == (2, 8, 8, 8) and a["labels"].dtype == jnp.int32
    assert a["probs"].shape == (2, 8, 8, 8, 3)
    assert a["entropy"].shape == a["variance"].shape == (2, 8, 8, 8)
    np.testing.assert_allclose(a["probs"].sum(-1), 1.0, rtol=1e-5)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["probs"], c["probs"])
    assert float(a["variance"].max()) > 0  # two different members


@pytest.mark.parametrize("kind", ["ddpm", "multiscale", "anchored"])
def test_other_samplers_run(kind):
    cfg = segment.SamplerConfig(
        kind=kind, coarse_depth=1, coarse_steps=2, refine_t=0.5, refine_steps=2
    )
    out = run(cfg, jax.random.key(0))
    assert out["labels"].shape == (2, 8, 8, 8) and bool(jnp.isfinite(out["probs"]).all())
    expected = {"ddpm": 10, "multiscale": 4, "anchored": 3}[kind]
    assert cfg.denoiser_evaluations(S.num_timesteps) == expected


@pytest.mark.parametrize("scale", [1.0, 0.4])
def test_the_anchored_sampler_refines_the_one_shot_estimate(scale):
    """One call from pure noise at T-1, then a truncated chain from refine_t: a chain that
    records its calls sees exactly that, and the scaled estimate is what gets re-noised."""
    calls = []
    truth = jnp.where(jnp.arange(3) == 1, 1.0, -1.0) * jnp.ones((1, 4, 4, 4, 3))

    def chain(image, x_t, key, ts, ts_next, eta, ancestral, depth):
        calls.append((np.asarray(ts).tolist(), np.asarray(x_t)))
        return truth  # an oracle: every chain lands on the true mask

    cfg = segment.SamplerConfig(kind="anchored", refine_t=0.5, refine_steps=2)
    out = segment.chain_masks(
        chain, IMAGE[:1, :4, :4, :4], jax.random.key(0), S, cfg, 3, 2, 0, scale
    )
    np.testing.assert_allclose(out, truth)
    t_refine = round(0.5 * (S.num_timesteps - 1))
    assert [c[0] for c in calls] == [[S.num_timesteps - 1], [t_refine, 0]]
    # the second chain starts from q_sample(scale * truth, t_refine): its mean is that
    ab = float(S.alphas_cumprod[t_refine])
    x_t = calls[1][1]
    resid = (x_t - np.sqrt(ab) * scale * np.asarray(truth)) / np.sqrt(1 - ab)
    assert abs(resid.mean()) < 0.3 and 0.7 < resid.std() < 1.3


def test_multiscale_handles_sizes_that_do_not_divide():
    cfg = segment.SamplerConfig(kind="multiscale", coarse_depth=1, coarse_steps=2, refine_steps=2)
    image = jax.random.normal(jax.random.key(4), (1, 7, 6, 5, 1))
    out = jax.jit(functools.partial(segment.segment, MODEL, s=S, cfg=cfg, target=sch.Target.X0))(
        params(), image, jax.random.key(0)
    )
    assert out["labels"].shape == (1, 7, 6, 5)
    assert cfg.denoiser_evaluations(S.num_timesteps) == 4
    assert (
        segment.SamplerConfig(kind="multiscale", refine_t=0.1, refine_steps=5).denoiser_evaluations(
            10
        )
        == 12
    )


def test_config_errors():
    with pytest.raises(ValueError, match="sampler"):
        segment.SamplerConfig(kind="plms")
    with pytest.raises(ValueError, match="fusion"):
        segment.SamplerConfig(fusion="max")


def test_deterministic_segmenter_output_format():
    model = MultiscaleUNet(
        UNetConfig(num_classes=3, channels=(4, 8), num_res_blocks=1, norm_groups=2, diffusion=False)
    )
    p = jax.jit(model.init)(jax.random.key(0), IMAGE)
    out = jax.jit(functools.partial(segment.segment_deterministic, model))(p, IMAGE)
    assert out["labels"].shape == (2, 8, 8, 8)
    np.testing.assert_allclose(out["probs"].sum(-1), 1.0, rtol=1e-5)
    assert float(out["variance"].max()) == 0.0


def test_fuse_and_from_logits_decide_top_down_with_a_tree():
    from msseg.diffusion.losses import x0_to_probs
    from msseg.labels import get_protocol

    tree = get_protocol("mni-tissue").level_tables()
    rng = np.random.default_rng(5)
    masks = jnp.asarray(rng.uniform(-1.2, 1.2, (3, 2, 4, 4, 4, 7)).astype(np.float32))
    fuse = jax.jit(functools.partial(segment.fuse, fusion="mean", tree=tree))
    out, flat = fuse(masks), segment.fuse(masks, "mean")
    np.testing.assert_allclose(out["probs"], flat["probs"], rtol=1e-6)
    np.testing.assert_array_equal(out["labels"], tree.labels(np.asarray(out["probs"])))
    assert (np.asarray(out["labels"]) != np.asarray(flat["labels"])).any()
    vote = segment.fuse(masks, "vote", tree)
    members = tree.labels(np.asarray(x0_to_probs(masks)))  # each member's own labels
    shares = np.eye(7)[members].mean(0)
    np.testing.assert_allclose(vote["probs"], shares, rtol=1e-6)
    np.testing.assert_array_equal(vote["labels"], tree.labels(shares))
    logits = masks[0] * 3
    det = segment.from_logits(logits, tree)
    np.testing.assert_array_equal(det["labels"], tree.labels(np.asarray(det["probs"])))
