"""3D convolution implementations behind one function: XLA's, depth-sliced 2D, or oneDNN.

XLA:CPU runs 3D convolutions at ~25-35 GFLOP/s on the 2-core development machine while its
2D path is much faster (experiments/2026-11-26_w1_unet), so `slices2d` writes a k x k x k
convolution as the sum over kernel depth of k x k 2D convolutions of depth-shifted slices
(batch and depth folded together). Both give XLA's result within float tolerance, with the same
parameters, padding ("SAME", as lax computes it) and strides; gradients follow from JAX.

`onednn` calls oneDNN's 3D convolutions through an XLA FFI custom call (msseg.models.onednn,
CPU only, float32/bfloat16): on W1 ~3x faster than `slices2d` in float32 and ~6x with bf16
convolutions. It needs the native library that `pip install` builds; without it, asking for
`onednn` logs a one-line notice and uses `slices2d` instead (other dtypes, or bf16 on a CPU
without oneDNN bf16 kernels, also take the pure-JAX path).

`impl="auto"` resolves to `onednn` on CPU when the library is available, else `slices2d` on
CPU, and `xla` elsewhere (GPU/TPU run their own 3D kernels well).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import logging
from jax import lax

from msseg.models import onednn

IMPLS = ("auto", "xla", "slices2d", "onednn")
_noticed = False


def _fallback() -> str:
    return "slices2d" if jax.default_backend() == "cpu" else "xla"


def resolve(impl: str) -> str:
    """The concrete implementation for `impl` on the default backend.

    `onednn` where it cannot run (library not built or not loadable, or a non-CPU backend)
    resolves to the pure-JAX fallback, with a one-line notice the first time.
    """
    global _noticed
    if impl not in IMPLS:
        raise ValueError(f"conv_impl must be one of {IMPLS}, got {impl!r}")
    cpu = jax.default_backend() == "cpu"
    if impl == "auto":
        return "onednn" if cpu and onednn.available() else _fallback()
    if impl == "onednn" and not (cpu and onednn.available()):
        if not _noticed:
            why = onednn.reason() if cpu else f"backend is {jax.default_backend()}, not cpu"
            logging.warning("conv_impl onednn unavailable (%s); using %s", why, _fallback())
            _noticed = True
        return _fallback()
    return impl


def conv3d(x: jax.Array, kernel: jax.Array, stride: int = 1, impl: str = "xla") -> jax.Array:
    """[B, X, Y, Z, C] * [k, k, k, C, F] → [B, X', Y', Z', F], SAME padding, equal strides."""
    impl = resolve(impl)
    if impl == "onednn":
        if onednn.supports(x, kernel):
            return onednn.conv3d(x, kernel, stride)
        impl = _fallback()  # other dtypes (float16, float64): the pure-JAX path
    k = kernel.shape[:3]
    strides = (stride,) * 3
    if impl == "xla" or k[0] == 1:
        return lax.conv_general_dilated(
            x, kernel, strides, "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
        )
    (lo, hi), *_ = lax.padtype_to_pads(x.shape[1:4], k, strides, "SAME")
    xp = jnp.pad(x, ((0, 0), (lo, hi), (0, 0), (0, 0), (0, 0)))
    b, n_in, y, z, c = xp.shape
    n_out = (n_in - k[0]) // stride + 1
    out = None
    for d in range(k[0]):
        sl = lax.slice_in_dim(xp, d, d + stride * (n_out - 1) + 1, stride=stride, axis=1)
        sl = sl.reshape(b * n_out, y, z, c)
        part = lax.conv_general_dilated(
            sl, kernel[d], strides[1:], "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        out = part if out is None else out + part
    return out.reshape(b, n_out, *out.shape[1:])
