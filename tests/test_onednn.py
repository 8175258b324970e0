"""The oneDNN FFI convolution equals lax's: values, both gradients, bf16, transformations,
threads, sharding, and a whole U-Net. Skipped when the extension is not built, except under
MSSEG_REQUIRE_ONEDNN=1 (CI), where its absence fails."""

import os
import threading

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from msseg.models import conv, onednn, onednn_check

REQUIRED = os.environ.get("MSSEG_REQUIRE_ONEDNN", "0") not in ("", "0")
needs_onednn = pytest.mark.skipif(
    not onednn.available(), reason=f"oneDNN extension unavailable: {onednn.reason()}"
)


def test_extension_available_when_required():
    if not REQUIRED and not onednn.available():
        pytest.skip(f"oneDNN extension unavailable: {onednn.reason()}")
    assert onednn.available(), onednn.reason()


ref = onednn_check.reference
value_and_vjp = onednn_check.value_and_vjp


def data(batch, shape, c, f, k, seed=0):
    """x, w and a numpy Generator (numpy: jax.random compiles slowly per new shape on CPU)."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, *shape, c), np.float32))
    w = jnp.asarray(rng.standard_normal((k, k, k, c, f), np.float32) / np.sqrt(k**3 * c))
    return x, w, rng


def close(a, b, tol):
    """Max abs difference within tol x the reference's max magnitude."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=0, atol=tol * max(float(np.abs(b).max()), 1e-6))


@pytest.fixture
def poisoned():
    """Poison mode for one test: unwritten outputs and reads of unwritten scratchpad memory
    give ~3.4e38 on every call (see onednn.set_poison)."""
    onednn.set_poison(True)
    yield
    onednn.set_poison(False)


@needs_onednn
@pytest.mark.parametrize("case", onednn_check.CASES, ids=onednn_check.case_id)
def test_forward_and_gradients_equal_lax(case, poisoned):
    assert onednn_check.check(case, jnp.float32) == []
    assert onednn_check.check(case, jnp.bfloat16, repeats=3) == []


@needs_onednn
def test_volumes_thinner_than_the_kernel_equal_lax(poisoned):
    """oneDNN 3.2's bf16 backward-weights kernel read scratchpad memory it had not written for
    these volumes (kernel gradients of ~1e18, intermittently: whatever the previous call left)
    and misplaced taps for one-voxel-high volumes such as 5x1x5; they now take oneDNN's gemm
    implementation. Under poison mode the old kernel fails here on every run."""
    bad = []
    for i, case in enumerate(onednn_check.thin_cases()):
        bad += onednn_check.check(case, jnp.bfloat16, seed=i, repeats=2)
        if i % 4 == 0:
            bad += onednn_check.check(case, jnp.float32, seed=i)
    assert bad == []


@needs_onednn
def test_check_grads_fp32():
    x, w, _ = data(1, (3, 4, 3), 2, 3, 3, seed=3)
    jax.test_util.check_grads(
        lambda x, w: onednn.conv3d(x, w, 2),
        (x, w),
        order=1,
        modes=("rev",),
        atol=1e-2,
        rtol=1e-2,
    )


@needs_onednn
def test_transformations_remat_vmap_value_and_grad():
    x, w, _ = data(2, (6, 5, 4), 3, 4, 3, seed=4)
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(jax.checkpoint(f, static_argnums=2)(x, w, 2)))
    got = jax.jit(jax.value_and_grad(loss(onednn.conv3d), argnums=(0, 1)))(x, w)
    want = jax.jit(jax.value_and_grad(loss(ref), argnums=(0, 1)))(x, w)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        close(a, b, 1e-5)
    xs, ws = jnp.stack([x, -x, 2 * x]), jnp.stack([w, -w, w])
    close(
        jax.vmap(lambda x: onednn.conv3d(x, w, 1))(xs), jax.vmap(lambda x: ref(x, w, 1))(xs), 1e-5
    )
    vm = lambda f: jax.jit(jax.vmap(lambda x, w: f(x, w, 2)))
    close(vm(onednn.conv3d)(xs, ws), vm(ref)(xs, ws), 1e-5)
    per_example = lambda f: jax.jit(
        jax.vmap(jax.grad(lambda x, w: jnp.sum(f(x[None], w, 1) ** 2), 1), in_axes=(0, None))
    )
    close(per_example(onednn.conv3d)(x, w), per_example(ref)(x, w), 1e-5)


@needs_onednn
def test_threads_run_different_shapes_at_once():
    cases = [
        (2, (6, 5, 4), 3, 4, 3, 1),
        (1, (7, 7, 7), 8, 2, 3, 2),
        (3, (4, 4, 4), 5, 6, 1, 1),
        (1, (9, 3, 5), 2, 8, 3, 2),
    ]
    work = []
    for i, (b, shape, c, f, k, s) in enumerate(cases):
        x, w, _ = data(b, shape, c, f, k, seed=10 + i)
        fn = jax.jit(jax.value_and_grad(lambda x, w, s=s: jnp.sum(onednn.conv3d(x, w, s) ** 2), 1))
        want = jax.jit(jax.value_and_grad(lambda x, w, s=s: jnp.sum(ref(x, w, s) ** 2), 1))(x, w)
        work.append((fn, x, w, want))
    errors = []
    barrier = threading.Barrier(len(work))

    def run(fn, x, w, want):
        try:
            barrier.wait()
            for _ in range(5):
                got = fn(x, w)
                for a, b in zip(got, want, strict=True):
                    close(a, b, 1e-5)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=item) for item in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@needs_onednn
@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
def test_batch_sharded_over_8_devices(axis_type):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices")
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(axis_type, axis_type))
    x, w, _ = data(8, (6, 5, 7), 3, 4, 3, seed=5)
    xs = jax.device_put(x, NamedSharding(mesh, P(("data", "model"))))
    ws = jax.device_put(w, NamedSharding(mesh, P()))
    for stride in (1, 2):
        loss = lambda f, s=stride: lambda x, w: jnp.sum(jnp.sin(f(x, w, s)))
        step = jax.jit(jax.value_and_grad(loss(onednn.conv3d), argnums=(0, 1)))
        got = step(xs, ws)
        want = jax.jit(jax.value_and_grad(loss(ref), argnums=(0, 1)))(x, w)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            close(a, b, 1e-5)
        assert got[1][0].sharding.spec[0] == ("data", "model")  # dx stays batch-sharded
    hlo = jax.jit(lambda x, w: onednn.conv3d(x, w, 1)).lower(xs, ws).compile().as_text()
    calls = [line for line in hlo.splitlines() if "msseg_onednn_conv3d_fwd" in line]
    assert calls and all("f32[1,6,5,7,4]" in line for line in calls)  # one sample per device


@needs_onednn
def test_dtypes_errors_and_cache():
    x, w, _ = data(1, (4, 4, 4), 2, 3, 3)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        onednn.conv3d(x, w.astype(jnp.bfloat16))
    with pytest.raises(ValueError, match="channels"):
        onednn.conv3d(x, w[:, :, :, :1])
    bad = jax.ShapeDtypeStruct((1, 5, 4, 4, 3), jnp.float32)  # the handler checks shapes
    with pytest.raises(Exception, match="inconsistent shapes"):
        jax.block_until_ready(onednn._call("fwd", x, w, bad, 1, onednn._padding((4,) * 3, 3, 1)))
    x16, w16 = x.astype(jnp.float16), w.astype(jnp.float16)  # conv.conv3d falls back to XLA
    close(conv.conv3d(x16, w16, 1, "onednn"), ref(x, w, 1), 1e-2)
    jax.jit(onednn.conv3d)(x, w).block_until_ready()
    n = onednn.cache_size()
    assert n >= 1
    jax.jit(onednn.conv3d)(x, w).block_until_ready()  # same shapes: the cached primitive
    assert onednn.cache_size() == n


@needs_onednn
def test_unet_forward_and_grad_equal_xla():
    from msseg.models.unet import MultiscaleUNet, UNetConfig

    def make(impl):
        cfg = UNetConfig(
            num_classes=3, channels=(4, 8), num_res_blocks=1, norm_groups=2, conv_impl=impl
        )
        return MultiscaleUNet(cfg)

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 8, 4), np.float32))
    t = jnp.array([3, 40], jnp.int32)
    # Random parameters of the right shapes without model.init (whose RNG compiles slowly).
    shapes = jax.eval_shape(make("xla").init, jax.random.key(1), x, t)
    fan_in = lambda a: np.sqrt(np.prod(a.shape[:-1])) if a.ndim > 1 else 10.0
    params = jax.tree.map(
        lambda a: jnp.asarray(rng.standard_normal(a.shape, np.float32) / fan_in(a)), shapes
    )

    def step(impl):
        model = make(impl)
        loss = lambda p: sum(jnp.mean(jnp.sin(y)) for y in model.apply(p, x, t))
        return jax.jit(jax.value_and_grad(loss))(params)

    (l1, g1), (l2, g2) = step("onednn"), step("xla")
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        close(a, b, 1e-4)
