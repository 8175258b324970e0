"""Building blocks of the 3D U-Net: the convolution module (over msseg.models.conv), GroupNorm,
time embedding, residual and attention blocks.

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


def group_norm(
    x: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    groups: int,
    *,
    eps: float = 1e-6,
    scale_shift: tuple[jax.Array, jax.Array] | None = None,
    silu: bool = False,
    dtype: Dtype = jnp.float32,
) -> jax.Array:
    """GroupNorm of [B, X, Y, Z, C] with float32 statistics, as one affine map per channel.

    The statistics are per-channel sums of x and x² over the spatial axes (a [B, C]
    reduction, which XLA:CPU runs far faster than the [.., G, C/G] reduction of
    flax's GroupNorm), combined per group; var = E[x²] - E[x]² clamped at 0 (flax's fast
    variance). Normalisation, the affine parameters, an optional time scale-shift
    (`y * (1 + scale) + shift`, both [B, C]) and an optional SiLU then fold into one
    elementwise pass `x * a + b`. Same result as flax.linen.GroupNorm (epsilon 1e-6).
    """
    b, *spatial, c = x.shape
    g = _groups(groups, c)
    xf = x.astype(jnp.float32)
    n = math.prod(spatial) * (c // g)
    s1 = jnp.sum(xf, axis=(1, 2, 3)).reshape(b, g, -1).sum(-1)
    s2 = jnp.sum(xf * xf, axis=(1, 2, 3)).reshape(b, g, -1).sum(-1)
    mean = s1 / n
    inv = jax.lax.rsqrt(jnp.maximum(s2 / n - mean * mean, 0.0) + eps)
    a = jnp.repeat(inv, c // g, axis=-1) * scale.astype(jnp.float32)
    off = bias.astype(jnp.float32) - jnp.repeat(mean, c // g, axis=-1) * a
    if scale_shift is not None:
        mul = 1 + scale_shift[0].astype(jnp.float32)
        a, off = a * mul, off * mul + scale_shift[1].astype(jnp.float32)
    # Materialise the [B, C] coefficients: fused into the elementwise pass, XLA:CPU would
    # recompute their whole chain for every voxel (several times slower at 64³ x 32). A dot
    # with the identity is never fused as a producer (XLA drops optimization barriers
    # before fusion on CPU).
    coef = jnp.einsum("bkc,cd->bkd", jnp.stack([a, off], 1), jnp.eye(c, dtype=jnp.float32))
    a, off = coef[:, 0], coef[:, 1]
    y = xf * a[:, None, None, None, :] + off[:, None, None, None, :]
    return (nn.silu(y) if silu else y).astype(dtype)


class Norm(nn.Module):
    """GroupNorm (float32 statistics) with an optional time scale-shift and SiLU; returns `dtype`.

    Parameters live at `gn/scale` and `gn/bias` [C] (the layout of flax's GroupNorm).
    """

    groups: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        scale_shift: tuple[jax.Array, jax.Array] | None = None,
        silu: bool = False,
    ) -> jax.Array:
        scale, bias = _AffineParams(x.shape[-1], self.param_dtype, name="gn")()
        return group_norm(
            x, scale, bias, self.groups, scale_shift=scale_shift, silu=silu, dtype=self.dtype
        )


class _AffineParams(nn.Module):
    """The per-channel `scale` (ones) and `bias` (zeros) of a normalisation."""

    features: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array]:
        scale = self.param("scale", nn.initializers.ones, (self.features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        return scale, bias


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
        h = Norm(self.groups, name="norm1", **kw)(x, silu=True)
        h = Conv3D(self.features, name="conv1", **ckw)(h)
        scale_shift = None
        if temb is not None:
            ss = nn.Dense(2 * self.features, name="time", **kw)(nn.silu(temb))
            scale_shift = tuple(jnp.split(ss, 2, axis=-1))
        h = Norm(self.groups, name="norm2", **kw)(h, scale_shift, silu=True)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
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
