"""Resizing [B, X, Y, Z, C] arrays between U-Net depths: average pooling and nearest repetition.

jax only (no flax), so the sampling binary can use it without the model code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
