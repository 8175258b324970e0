"""Building blocks of the 3D U-Net: convolution, resizing, time embedding, residual, attention.

All arrays are channels-last, [B, X, Y, Z, C]. Normalisation statistics are computed in
float32 whatever the compute dtype; parameters are kept in `param_dtype`.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from msseg.models.conv import conv3d

Dtype = Any


def downsample(x: jax.Array, factor: int) -> jax.Array:
    """[B, X, Y, Z, C] → [B, X/f, Y/f, Z/f, C] by average pooling (sizes must divide by f)."""
    if factor == 1:
        return x
    b, *spatial, c = x.shape
    shape = [b]
    for n in spatial:
        if n % factor:
            raise ValueError(f"spatial shape {tuple(spatial)} does not divide by {factor}")
        shape += [n // factor, factor]
    return x.reshape(*shape, c).mean(axis=(2, 4, 6))


def upsample(x: jax.Array, factor: int) -> jax.Array:
    """[B, X, Y, Z, C] → [B, fX, fY, fZ, C] by nearest-neighbour repetition."""
    for axis in (1, 2, 3):
        x = jnp.repeat(x, factor, axis=axis) if factor > 1 else x
    return x


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """[B] timesteps → [B, dim] sinusoidal embedding (as in DDPM / Transformer)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def _groups(groups: int, channels: int) -> int:
    """The largest group count <= groups that divides channels."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


class Conv3D(nn.Module):
    """A 3D convolution with bias, SAME padding (stride 2 gives ceil(n / 2)).

    Parameters `kernel` [k, k, k, C, F] (lecun normal) and `bias` [F] are the same for every
    `conv_impl` (see msseg.models.conv), so a model trained with one loads with another.
    `conv_dtype` (default: `dtype`) is the dtype of the convolution's inputs and output; with
    bfloat16 here and float32 `dtype` the block runs like autocast: bf16 convolution (fp32
    accumulation in the backends), result and bias in float32.
    """

    features: int
    kernel: int = 3
    stride: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    conv_impl: str = "xla"
    conv_dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.kernel,) * 3 + (x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        cdt = self.dtype if self.conv_dtype is None else self.conv_dtype
        y = conv3d(x.astype(cdt), kernel.astype(cdt), self.stride, self.conv_impl)
        return y.astype(self.dtype) + bias.astype(self.dtype)


class Norm(nn.Module):
    """GroupNorm with float32 statistics; returns `dtype`."""

    groups: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        g = _groups(self.groups, x.shape[-1])
        norm = nn.GroupNorm(
            num_groups=g, dtype=jnp.float32, param_dtype=self.param_dtype, name="gn"
        )
        return norm(x.astype(jnp.float32)).astype(self.dtype)


class ResBlock(nn.Module):
    """GN, SiLU, conv, GN (scale-shift by the time embedding), SiLU, dropout, conv; plus skip."""

    features: int
    groups: int = 8
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    conv_impl: str = "xla"
    conv_dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array | None, train: bool) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        ckw = {**kw, "conv_impl": self.conv_impl, "conv_dtype": self.conv_dtype}
        h = nn.silu(Norm(self.groups, name="norm1", **kw)(x))
        h = Conv3D(self.features, name="conv1", **ckw)(h)
        h = Norm(self.groups, name="norm2", **kw)(h)
        if temb is not None:
            ss = nn.Dense(2 * self.features, name="time", **kw)(nn.silu(temb))
            scale, shift = jnp.split(ss[:, None, None, None, :].astype(self.dtype), 2, axis=-1)
            h = h * (1 + scale) + shift
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
        h = Conv3D(self.features, name="conv2", **ckw)(h)
        if x.shape[-1] != self.features:
            x = Conv3D(self.features, kernel=1, name="skip", **ckw)(x)
        return x.astype(self.dtype) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all voxels of [B, X, Y, Z, C], with a residual."""

    heads: int = 4
    groups: int = 8
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, *spatial, c = x.shape
        h = Norm(self.groups, self.dtype, self.param_dtype, name="norm")(x).reshape(b, -1, c)
        attn = nn.MultiHeadDotProductAttention(
            num_heads=self.heads, dtype=self.dtype, param_dtype=self.param_dtype, name="attn"
        )
        return x + attn(h).reshape(x.shape)
