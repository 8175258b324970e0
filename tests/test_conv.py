"""The convolution implementations agree with XLA: values, gradients, strides, odd sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msseg.models import conv


def data(shape, c_in, c_out, k, seed=0, dtype=jnp.float32):
    kx, kk = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (2, *shape, c_in), dtype)
    w = jax.random.normal(kk, (k, k, k, c_in, c_out), dtype) / np.sqrt(k**3 * c_in)
    return x, w


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
    assert conv.resolve("auto") == ("slices2d" if jax.default_backend() == "cpu" else "xla")
    with pytest.raises(ValueError, match="conv_impl"):
        conv.resolve("cudnn3d")
