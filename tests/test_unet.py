"""The multiscale U-Net: outputs per depth, entry depths, padding, skips, remat, dtypes, modes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msseg.models.resize import downsample, upsample
from msseg.models.unet import MultiscaleUNet, UNetConfig

K = 3


def make(**kw):
    base = {"num_classes": K, "channels": (4, 8, 8), "num_res_blocks": 1, "norm_groups": 2}
    return MultiscaleUNet(UNetConfig(**{**base, **kw}))


@functools.cache
def jitted(model):
    """model.apply under jit (op-by-op flax on CPU is far slower to run than to compile)."""
    return jax.jit(model.apply, static_argnames=("entry_depth", "train"))


def run(model, params, x, t=None, **kw):
    return jitted(model)(params, x, t, **kw)


@functools.cache
def init(model, size=8, batch=2):
    x = jnp.ones((batch, size, size, size, model.cfg.in_channels))
    t = jnp.zeros((batch,), jnp.int32) if model.cfg.diffusion else None
    return jax.jit(model.init)(jax.random.key(0), x, t)


def inputs(model, size, batch=2, seed=1):
    x = jax.random.normal(jax.random.key(seed), (batch, size, size, size, model.cfg.in_channels))
    t = jnp.arange(batch, dtype=jnp.int32) * 7 if model.cfg.diffusion else None
    return x, t


@pytest.mark.parametrize("skip", ["unet", "unet3plus"])
def test_one_prediction_per_decoder_depth_from_the_entry_depth(skip):
    model = make(skip=skip)
    params = init(model)
    for e in range(3):
        x, t = inputs(model, 16 // 2**e)
        preds = run(model, params, x, t, entry_depth=e)
        assert [p.shape for p in preds] == [
            (2, 16 // 2**d, 16 // 2**d, 16 // 2**d, K) for d in range(e, 3)
        ]
        assert all(p.dtype == jnp.float32 and bool(jnp.isfinite(p).all()) for p in preds)


def test_entry_depth_uses_its_own_stem():
    model = make()
    params = init(model)
    x, t = inputs(model, 8)
    base = run(model, params, x, t, entry_depth=1)
    changed = jax.tree_util.tree_map_with_path(
        lambda path, v: v + 1.0 if "stem0" in jax.tree_util.keystr(path) else v, params
    )
    np.testing.assert_array_equal(run(model, changed, x, t, entry_depth=1)[0], base[0])
    assert not np.allclose(run(model, changed, x, t, entry_depth=0)[0], run(model, params, x, t)[0])


def test_init_must_use_entry_depth_zero():
    model = make()
    with pytest.raises(ValueError, match="entry_depth=0"):
        model.init(
            jax.random.key(0),
            jnp.ones((1, 4, 4, 4, model.cfg.in_channels)),
            jnp.zeros((1,), jnp.int32),
            entry_depth=1,
        )


def test_sizes_that_do_not_divide_are_padded_and_cropped():
    model = make()
    params = init(model)
    x = jax.random.normal(jax.random.key(2), (1, 13, 10, 7, model.cfg.in_channels))
    preds = run(model, params, x, jnp.array([3]))
    assert [p.shape[1:4] for p in preds] == [(13, 10, 7), (7, 5, 4), (4, 3, 2)]
    x1 = jax.random.normal(jax.random.key(2), (1, 7, 5, 3, model.cfg.in_channels))
    assert [p.shape[1:4] for p in run(model, params, x1, jnp.array([3]), entry_depth=1)] == [
        (7, 5, 3),
        (4, 3, 2),
    ]


def test_remat_loads_the_same_params_and_gives_the_same_outputs():
    plain, remat = make(), make(remat=True)
    params = init(plain)
    assert jax.tree.structure(init(remat)) == jax.tree.structure(params)
    x, t = inputs(plain, 8)
    np.testing.assert_allclose(run(remat, params, x, t)[0], run(plain, params, x, t)[0], atol=1e-6)


def test_unet3plus_aggregates_every_encoder_depth():
    params = init(make(skip="unet3plus"))["params"]
    names = set(params)
    for d in range(2):  # decoder depths below the bottleneck
        for s in range(3):
            assert f"dec{d}_from_{'enc' if s <= d else 'dec'}{s}" in names
    assert not any(n.startswith("up") for n in names)


def test_deterministic_mode_takes_the_image_only():
    model = make(diffusion=False)
    params = init(model)
    assert not any(n.startswith("time") for n in params["params"])
    x, _ = inputs(model, 8)
    assert x.shape[-1] == 1
    assert len(run(model, params, x)) == 3
    with pytest.raises(ValueError, match="input channels"):
        run(model, params, jnp.ones((1, 8, 8, 8, 4)))


def test_diffusion_output_depends_on_the_timestep():
    model = make()
    params = init(model)
    x, _ = inputs(model, 8)
    a = run(model, params, x, jnp.array([0, 0]))[0]
    b = run(model, params, x, jnp.array([50, 50]))[0]
    assert not np.allclose(a, b)
    with pytest.raises(ValueError, match="timestep"):
        run(model, params, x)


def test_attention_and_bfloat16():
    model = make(attention_depths=(2,))
    params = init(model)
    assert any("attn" in n for n in params["params"])
    x, t = inputs(model, 8)
    full = run(model, params, x, t)[0]
    bf16 = make(attention_depths=(2,), dtype="bfloat16")
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(init(bf16)))
    half = run(bf16, params, x, t)[0]
    assert half.dtype == jnp.float32
    np.testing.assert_allclose(half, full, atol=0.1 * float(jnp.abs(full).max()) + 0.05)


def test_mixed_precision_runs_convolutions_in_bfloat16_and_the_rest_in_float32():
    model = make(attention_depths=(2,))
    params = init(model)
    x, t = inputs(model, 8)
    full = run(model, params, x, t)[0]
    mixed = make(attention_depths=(2,), conv_dtype="bfloat16")
    jaxpr = str(jax.make_jaxpr(lambda p: mixed.apply(p, x, t))(params))
    assert "bf16[2,8,8,8,4]" in jaxpr  # a bf16 convolution output at depth 0
    assert "f32[2,8,8,8,4]" in jaxpr  # its float32 activations
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(init(mixed)))
    out = run(mixed, params, x, t)[0]
    assert out.dtype == jnp.float32
    assert not np.array_equal(out, full)
    np.testing.assert_allclose(out, full, atol=0.05 * float(jnp.abs(full).max()) + 0.02)


def test_dropout_only_in_training():
    model = make(dropout=0.5)
    params = init(model)
    x, t = inputs(model, 8)
    np.testing.assert_array_equal(run(model, params, x, t)[0], run(model, params, x, t)[0])
    a = run(model, params, x, t, train=True, rngs={"dropout": jax.random.key(0)})[0]
    b = run(model, params, x, t, train=True, rngs={"dropout": jax.random.key(1)})[0]
    assert not np.allclose(a, b)


def test_resizing_helpers():
    x = jnp.arange(2 * 4 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 4, 3)
    down = downsample(x, 2)
    np.testing.assert_allclose(down[1, 1, 0, 1], x[1, 2:4, 0:2, 2:4].mean(axis=(0, 1, 2)))
    np.testing.assert_array_equal(downsample(upsample(down, 2), 2), down)
    with pytest.raises(ValueError, match="divide"):
        downsample(jnp.ones((1, 5, 4, 4, 1)), 2)


@pytest.mark.parametrize("groups,channels", [(2, 8), (3, 8), (4, 4)])
def test_group_norm_matches_flax_with_scale_shift_and_silu(groups, channels):
    import flax.linen as nn

    from msseg.models.layers import Norm

    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (2, 5, 6, 3, channels))
    ours = Norm(groups)
    params = ours.init(jax.random.key(1), x)
    # non-trivial affine parameters, stored where flax's GroupNorm keeps them
    gn = params["params"]["gn"]
    gn = {"scale": 1 + jnp.arange(channels) / 10, "bias": jnp.arange(channels) / 5 - 0.3}
    params = {"params": {"gn": gn}}
    ref_gn = nn.GroupNorm(num_groups=groups if channels % groups == 0 else 2)
    ref = ref_gn.apply({"params": gn}, x)
    np.testing.assert_allclose(ours.apply(params, x), ref, rtol=1e-4, atol=1e-4)
    scale, shift = jax.random.normal(jax.random.key(2), (2, 2, channels))
    got = ours.apply(params, x, (scale, shift), silu=True)
    want = nn.silu(ref * (1 + scale[:, None, None, None]) + shift[:, None, None, None])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # gradients too (the train step differentiates through the folded affine map)
    g_ours = jax.grad(lambda x: jnp.sum(jnp.sin(ours.apply(params, x, silu=True))))(x)
    g_ref = jax.grad(lambda x: jnp.sum(jnp.sin(nn.silu(ref_gn.apply({"params": gn}, x)))))(x)
    np.testing.assert_allclose(g_ours, g_ref, rtol=1e-3, atol=1e-4)
