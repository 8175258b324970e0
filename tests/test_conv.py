"""The convolution implementations agree with XLA: values, gradients, strides, odd sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msseg.models import conv, onednn


def data(shape, c_in, c_out, k, seed=0, dtype=jnp.float32):
    # numpy, not jax.random: XLA:CPU compiles the random bits slowly for every new shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, *shape, c_in), np.float32)
    w = rng.standard_normal((k, k, k, c_in, c_out), np.float32) / np.sqrt(k**3 * c_in)
    return jnp.asarray(x, dtype), jnp.asarray(w, dtype)


@pytest.mark.parametrize("shape", [(8, 8, 8), (7, 5, 6), (1, 4, 3)])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_slices2d_equals_xla(shape, stride, k):
    x, w = data(shape, 3, 4, k)
    ref = conv.conv3d(x, w, stride, "xla")
    out = conv.conv3d(x, w, stride, "slices2d")
    assert out.shape == ref.shape == (2, *[-(-n // stride) for n in shape], 4)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_slices2d_gradients_equal_xla(stride):
    x, w = data((6, 5, 7), 2, 3, 3, seed=1)
    f = lambda impl: jax.grad(
        lambda x, w: (conv.conv3d(x, w, stride, impl) ** 2).sum(), argnums=(0, 1)
    )
    for a, b in zip(f("slices2d")(x, w), f("xla")(x, w), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_bfloat16():
    x, w = data((8, 8, 8), 8, 8, 3, seed=2)
    ref = conv.conv3d(x, w, 1, "xla")
    out = conv.conv3d(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), 1, "slices2d")
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=0.05 * float(jnp.abs(ref).max()))


def test_auto_and_errors():
    cpu = jax.default_backend() == "cpu"
    best_cpu = "onednn" if onednn.available() else "slices2d"
    assert conv.resolve("auto") == (best_cpu if cpu else "xla")
    with pytest.raises(ValueError, match="conv_impl"):
        conv.resolve("cudnn3d")


def test_onednn_falls_back_with_one_notice_when_unavailable(monkeypatch):
    monkeypatch.setattr(onednn, "available", lambda: False)
    monkeypatch.setattr(onednn, "reason", lambda: "not built (test)")
    monkeypatch.setattr(conv, "_noticed", False)
    warnings = []
    monkeypatch.setattr(conv.logging, "warning", lambda *a: warnings.append(a[0] % a[1:]))
    fallback = "slices2d" if jax.default_backend() == "cpu" else "xla"
    assert conv.resolve("auto") == fallback and not warnings  # auto falls back silently
    assert conv.resolve("onednn") == conv.resolve("onednn") == fallback
    assert len(warnings) == 1 and "not built (test)" in warnings[0]
    x, w = data((7, 5, 6), 3, 4, 3)
    np.testing.assert_allclose(
        conv.conv3d(x, w, 2, "onednn"), conv.conv3d(x, w, 2, "xla"), rtol=1e-5, atol=1e-5
    )
