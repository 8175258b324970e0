"""The oneDNN convolution checked against lax: the shapes the tests cover, and a checker that
the tests and tools/stress_onednn.py share.

`check` runs the forward pass and both gradients through `onednn.conv3d` (the custom_vjp the
models use) and the backward-weights handler on its own, and compares each with lax's float32
result. Run it under `onednn.set_poison(True)`: an output oneDNN did not write, or a read of
scratchpad memory it did not write, then shows on every call rather than now and then.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from msseg.models import onednn

# (batch, spatial, C, F, k, stride): odd sizes, 1-voxel dims, channels 1/3/8/17, batch 1/3.
CASES = [
    (1, (5, 7, 9), 3, 8, 3, 1),
    (3, (5, 7, 9), 8, 3, 3, 2),
    (1, (1, 4, 3), 17, 1, 3, 2),
    (3, (6, 1, 5), 1, 17, 3, 1),
    (1, (1, 1, 1), 3, 8, 3, 2),
    (3, (7, 6, 5), 17, 8, 1, 1),
    (1, (5, 4, 3), 8, 17, 1, 2),
    (1, (8, 8, 8), 8, 8, 3, 2),
]


def thin_cases() -> list[tuple]:
    """Volumes thinner than the kernel on some axis (1 or 2 voxels), k 3, strides 1 and 2:
    where oneDNN 3.2's bf16 backward-weights kernel was wrong (csrc/onednn_conv.cc)."""
    cases = []
    for shape in itertools.product((1, 2, 5), repeat=3):
        if min(shape) < 3:
            for stride in (1, 2):
                cases.append((1, shape, 3, 8, 3, stride))
    return cases


def case_id(case) -> str:
    return "b{}_{}x{}x{}_c{}_f{}_k{}_s{}".format(case[0], *case[1], *case[2:])


def reference(x, w, stride):
    return lax.conv_general_dilated(
        x, w, (stride,) * 3, "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
    )


def operands(case, seed=0):
    """x, w, g (the output cotangent) for a case, float32, from numpy (jax.random compiles
    slowly for each new shape on CPU)."""
    batch, shape, c, f, k, stride = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *shape, c), np.float32)
    w = rng.standard_normal((k, k, k, c, f), np.float32) / np.sqrt(k**3 * c)
    g = rng.standard_normal((batch, *[-(-n // stride) for n in shape], f), np.float32)
    return jnp.asarray(x), jnp.asarray(w), jnp.asarray(g)


def value_and_vjp(fn, stride):
    """jit(x, w, g → (y, dx, dw)): the forward pass and both gradients for the cotangent g."""

    def f(x, w, g):
        y, vjp = jax.vjp(lambda x, w: fn(x, w, stride), x, w)
        return (y, *vjp(g.astype(y.dtype)))

    return jax.jit(f)


TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2}


def relative_error(got, want) -> float:
    """Max abs difference over the reference's max magnitude (inf for non-finite values)."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    if got.shape != want.shape:
        return float("inf")
    err = float(np.abs(got - want).max(initial=0.0)) / max(float(np.abs(want).max(initial=0)), 1e-6)
    return err if np.isfinite(err) else float("inf")


def check(case, dtype, seed=0, repeats=1) -> list[str]:
    """The mismatches of `repeats` calls of the forward pass, both gradients and the
    backward-weights handler alone, in `dtype`, against lax in float32; [] when all match."""
    stride, k = case[5], case[4]
    x, w, g = operands(case, seed)
    want = value_and_vjp(reference, stride)(x, w, g)
    cast = lambda a: a.astype(dtype)
    fn = value_and_vjp(onednn.conv3d, stride)
    handler = jax.jit(lambda x, g: onednn._op("bwd_weights", x, g, k, stride))
    name = jnp.dtype(dtype).name
    tol = TOLERANCE[name]
    bad = []
    for i in range(repeats):
        got = (*fn(cast(x), cast(w), cast(g)), handler(cast(x), cast(g)))
        for what, a, b in zip(("y", "dx", "dw", "dw handler"), got, (*want, want[2]), strict=True):
            if a.dtype != (jnp.float32 if what == "dw handler" else dtype):
                bad.append(f"{case_id(case)} {name} {what}: dtype {a.dtype}")
            err = relative_error(a, b)
            if not err <= tol:
                bad.append(f"{case_id(case)} {name} {what} call {i}: relative error {err:.3g}")
    return bad
