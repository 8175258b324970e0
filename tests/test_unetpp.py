"""UNet++ nested dense skips (`skip="unetpp"`): outputs per entry depth, remat, gradients
reaching every nested node, the nesting itself, the deterministic mode and the exported route.

The model: 3 depths, no residual blocks at depth 0 (its nested nodes take the 1x1x1
projection), attention at depth 1 (in the nested node x1_1 too), time conditioning.
"""

import functools
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msseg.models.unet import MultiscaleUNet, UNetConfig

K = 3
NESTED = {"x0_1", "x0_2", "x1_1"}  # X^{i,j}, j >= 1, i + j <= D - 1 for D = 3


def make(**kw):
    base = {
        "num_classes": K,
        "channels": (4, 8, 8),
        "num_res_blocks": (0, 1, 1),
        "attention_depths": (1,),
        "attention_heads": 2,
        "norm_groups": 2,
        "skip": "unetpp",
    }
    return MultiscaleUNet(UNetConfig(**{**base, **kw}))


@functools.cache
def jitted(model):
    return jax.jit(model.apply, static_argnames=("entry_depth", "train"))


def run(model, params, x, t=None, **kw):
    return jitted(model)(params, x, t, **kw)


@functools.cache
def init(model):
    """Params on the shapes `jax.eval_shape` gives, drawn with numpy (no compiled initialiser:
    seconds on 2 cores), biases and norm offsets nonzero, norm scales near 1."""
    x = jnp.ones((1, 4, 4, 4, model.cfg.in_channels))
    t = jnp.zeros((1,), jnp.int32) if model.cfg.diffusion else None
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, t)
    rng = np.random.default_rng(0)

    def draw(path, a):
        fan_in = int(np.prod(a.shape[:-1])) if len(a.shape) > 1 else 100
        v = rng.normal(0, fan_in**-0.5, a.shape)
        return jnp.asarray(v + (path[-1].key == "scale"), a.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def inputs(model, size, batch=2, seed=1):
    shape = (batch, *((size,) * 3 if isinstance(size, int) else size), model.cfg.in_channels)
    x = jax.random.normal(jax.random.key(seed), shape)
    t = jnp.arange(batch, dtype=jnp.int32) * 7 if model.cfg.diffusion else None
    return x, t


def perturbed(params, prefix):
    """params with every leaf of the modules named `prefix*` shifted."""
    return jax.tree_util.tree_map_with_path(
        lambda path, v: v + 0.5 if path[1].key.startswith(prefix) else v, params
    )


def test_the_parameter_tree_holds_the_nested_nodes():
    names = set(init(make())["params"])
    assert {"_".join(n.split("_")[:2]) for n in names if n[0] == "x"} == NESTED
    assert {"x0_1_up", "x0_1_proj", "x0_2_up", "x0_2_proj", "x1_1_up"} <= names
    assert {"x1_1_res0", "x1_1_attn0"} <= names  # depth 1: res blocks and attention
    assert not any(n.startswith(("dec", "up")) for n in names)  # no plain decoder
    unet = set(init(make(skip="unet"))["params"])
    assert not any(n[0] == "x" for n in unet)
    assert {n for n in names if n[0] != "x"} < unet  # encoder, stems, heads: shared names


@pytest.mark.parametrize("entry_depth", [0, 1, 2])
def test_one_prediction_per_decoder_depth_and_remat_changes_nothing(entry_depth):
    plain, remat = make(), make(remat=True)
    params = init(plain)
    assert jax.tree.structure(init(remat)) == jax.tree.structure(params)
    e = entry_depth
    size = (13 // 2**e + 1, 10 // 2**e + 1, 16 // 2**e)  # (14, 11, 16), (7, 6, 8), (4, 3, 4)
    x, t = inputs(plain, size)
    preds = run(plain, params, x, t, entry_depth=e)
    want = [tuple(-(-n // 2**i) for n in size) for i in range(3 - e)]
    assert [p.shape for p in preds] == [(2, *s, K) for s in want]
    assert all(p.dtype == jnp.float32 and bool(jnp.isfinite(p).all()) for p in preds)
    again = run(remat, params, x, t, entry_depth=e)
    for a, b in zip(again, preds, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_each_row_reads_only_itself_and_the_row_below():
    """X^{0,2} = H([X^{0,0}, X^{0,1}, Up(X^{1,1})]): changing x0_1 or x1_1 changes the depth-0
    output; the depth-1 output (X^{1,1}) never reads row 0; entering at depth 1 uses no depth-0
    node (they do not exist there)."""
    model = make()
    params = init(model)
    x, t = inputs(model, 8)
    base = run(model, params, x, t)
    for node in ("x0_1", "x1_1", "x0_2"):
        assert not np.allclose(run(model, perturbed(params, node), x, t)[0], base[0]), node
    row0 = run(model, perturbed(params, "x0_"), x, t)
    for a, b in zip(row0[1:], base[1:], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(run(model, perturbed(params, "x1_1"), x, t)[1], base[1])
    x1, _ = inputs(model, 4)
    low = run(model, params, x1, t, entry_depth=1)
    for a, b in zip(run(model, perturbed(params, "x0_"), x1, t, entry_depth=1), low, strict=True):
        np.testing.assert_array_equal(a, b)


def _loss(model, x, t):
    weights = [jax.random.normal(jax.random.key(10 + i), (K,)) for i in range(3)]

    def loss(params):
        preds = model.apply(params, x, t)
        return sum(jnp.mean(jnp.sin(p) * w) for p, w in zip(preds, weights, strict=True))

    return jax.jit(jax.value_and_grad(loss))


def test_every_parameter_used_at_entry_depth_zero_gets_a_gradient():
    model = make()
    params = init(model)
    x, t = inputs(model, 8)
    value_and_grad = _loss(model, x, t)
    _, grads = value_and_grad(params)
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(grads)}
    assert all(bool(jnp.isfinite(g).all()) for g in flat.values())
    nonzero = {k for k, g in flat.items() if float(jnp.abs(g).max()) > 0}
    unused = {k for k in flat if "'stem1'" in k or "'stem2'" in k}  # the other entries' stems
    assert unused and nonzero == set(flat) - unused
    assert any("'x0_1_proj'" in k for k in nonzero) and any("'x1_1_attn0'" in k for k in nonzero)
    _, remat = _loss(make(remat=True), x, t)(params)  # rematerialised: the same gradients
    for a, b in zip(jax.tree.leaves(remat), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

    # central differences on single scalars of nested nodes (the largest gradient entries)
    eps = 1e-3
    for module in ("x0_1_up", "x0_2_proj", "x1_1_res0"):
        path = (module, "kernel") if module != "x1_1_res0" else (module, "conv1", "kernel")
        g = grads["params"]
        for p in path:
            g = g[p]
        idx = np.unravel_index(int(jnp.argmax(jnp.abs(g))), g.shape)

        def shifted(delta, path=path, idx=idx):
            def set_leaf(tree, keys):
                if not keys:
                    return tree.at[idx].add(delta)
                return {**tree, keys[0]: set_leaf(tree[keys[0]], keys[1:])}

            return {"params": set_leaf(params["params"], path)}

        hi, _ = value_and_grad(shifted(eps))
        lo, _ = value_and_grad(shifted(-eps))
        fd = (float(hi) - float(lo)) / (2 * eps)
        np.testing.assert_allclose(fd, float(g[idx]), rtol=1e-2, err_msg=module)


def test_mixed_precision_runs_every_convolution_in_bfloat16():
    model = make(conv_impl="xla", conv_dtype="bfloat16")
    params = init(make())
    x, t = inputs(model, 8)
    jaxpr = str(jax.make_jaxpr(lambda p: model.apply(p, x, t))(params))
    convs = re.findall(r"(\w+)\[[\d,]*\] = conv_general_dilated", jaxpr)
    kernels = [
        k for k, v in jax.tree_util.tree_leaves_with_path(params) if v.ndim == 5
    ]  # every conv kernel but the two stems of the other entry depths
    assert len(convs) == len(kernels) - 2 and set(convs) == {"bf16"}
    assert any("'x0_2_proj'" in jax.tree_util.keystr(k) for k in kernels)


def test_deterministic_mode():
    model = make(diffusion=False)
    params = init(model)
    assert not any(n.startswith("time") for n in params["params"])
    x, _ = inputs(model, 8)
    assert x.shape[-1] == 1
    preds = run(model, params, x)
    assert [p.shape for p in preds] == [(2, *(3 * (8 // 2**i,)), K) for i in range(3)]
    assert all(bool(jnp.isfinite(p).all()) for p in preds)


def test_the_exported_chain_gives_the_local_route_output():
    """The chain export_model writes (conv_impl "xla", symbolic batch and steps), serialized
    and called, against the local flax model (conv_impl "auto": onednn or slices2d on CPU)."""
    import dataclasses

    from msseg.diffusion import schedule as sch
    from msseg.diffusion import segment as seg
    from msseg.export import exporter

    local = make(conv_impl="auto")
    params = init(make())
    setup = types.SimpleNamespace(
        schedule=sch.make_schedule("linear", 1000),
        loss=types.SimpleNamespace(target=sch.Target.LOGITS, signal_scale=1.0),
        sampler=types.SimpleNamespace(clip_x0=True),
    )
    model = MultiscaleUNet(dataclasses.replace(local.cfg, conv_impl="xla"))
    fn = jax.jit(exporter.chain_function(model, setup, 0))
    specs = exporter.input_specs(model, params, (8, 8, 8), 0)
    blob = jax.export.export(fn, platforms=("cpu",))(*specs).serialize()
    exported = jax.export.deserialize(blob)

    image = jax.random.normal(jax.random.key(4), (3, 8, 8, 8, 1))
    x_t = jax.random.normal(jax.random.key(5), (3, 8, 8, 8, K))
    ts, ts_next = jnp.array([999, 500], jnp.int32), jnp.array([500, -1], jnp.int32)
    key = jax.random.key(6)
    got = exported.call(
        params, image, x_t, jax.random.key_data(key), ts, ts_next, jnp.float32(0.5), jnp.bool_(0)
    )
    chain = seg.model_chain(local, params, setup.schedule, sch.Target.LOGITS, True, 1.0)
    want = jax.jit(chain, static_argnums=7)(image, x_t, key, ts, ts_next, 0.5, False, 0)
    assert got.shape == (3, 8, 8, 8, K)
    np.testing.assert_allclose(got, want, atol=2e-3)
