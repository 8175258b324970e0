"""oneDNN 3D convolutions on CPU, called from XLA through the FFI (csrc/onednn_conv.cc).

XLA:CPU runs 3D convolutions at ~25-30 GFLOP/s on the development machine; oneDNN reaches
~330 GFLOP/s in float32 and far more in bfloat16 where the CPU has AMX
(experiments/2026-11-26_w1_onednn).
The native library holds three XLA FFI handlers (forward, backward-data, backward-weights)
for [B, X, Y, Z, C] activations and [k, k, k, C, F] kernels, SAME padding as lax computes it
(asymmetric for stride 2), float32 or bfloat16 (f32 accumulation, result dtype = input dtype;
the kernel gradient is accumulated and returned in f32, then cast to the kernel's dtype).

`conv3d` is a `jax.custom_vjp` whose backward pass calls the two backward handlers, so it
works under jit, grad, value_and_grad and jax.checkpoint. Other transformations:
- vmap (`custom_vmap` rule in `_op`): a mapped activation with an unmapped kernel is folded
  into the batch dimension (one call); mapped kernels, and the kernel gradient of mapped
  activations (per-example gradients), run one call per mapped element (lax.map).
- Sharding: a batch-sharded input runs one oneDNN call per device on its own batch shard;
  the kernel gradient is psum'd over the batch axes; any other sharded dimension is gathered
  first. Auto mesh axes: `custom_partitioning` with a Shardy rule (`_partitioned`); Explicit
  axes (sharding in types): a shard_map over the batch axes (`_apply`).
- Forward-mode AD (jvp, jacfwd) and second derivatives are not defined.

The library is built by `pip install` (setup.py); when it is missing or fails to load,
`available()` is False and `reason()` says why; msseg.models.conv then falls back to its
pure-JAX implementations. Environment: MSSEG_DISABLE_ONEDNN=1 never loads it;
MSSEG_ONEDNN_LAYOUT picks the memory formats (0 plain ndhwc/dhwio, 1 = oneDNN's kernel
format, reordered per call (default), 2 = oneDNN's formats for everything).
"""

from __future__ import annotations

import ctypes
import functools
import glob
import importlib.metadata
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DTYPES = (jnp.float32, jnp.bfloat16)
RUNTIME_DIST = "onednn-cpu-gomp"  # the pip package that ships libdnnl.so.3
_TARGETS = {
    "fwd": "MssegOnednnConvFwd",
    "bwd_data": "MssegOnednnConvBwdData",
    "bwd_weights": "MssegOnednnConvBwdWeights",
}
_NAME = "msseg_onednn_conv3d_"
_lock = threading.Lock()
_state: tuple[bool, str, ctypes.CDLL | None] | None = None


def _extension_path() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    found = sorted(glob.glob(os.path.join(here, "_onednn_ffi*.so")))
    return found[0] if found else None


def _preload_libdnnl() -> str | None:
    """Loads libdnnl.so.3 from the runtime pip package (RTLD_GLOBAL) so that the extension's
    dependency on it resolves there, wherever the extension was built; None if no package."""
    try:
        dist = importlib.metadata.distribution(RUNTIME_DIST)
    except importlib.metadata.PackageNotFoundError:
        return None
    libs = [f for f in dist.files or () if f.name.startswith("libdnnl.so")]
    if not libs:
        return None
    lib = min(libs, key=lambda f: (f.name != "libdnnl.so.3", len(f.name)))
    path = os.path.normpath(str(dist.locate_file(lib)))
    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    return path


def _load() -> tuple[bool, str, ctypes.CDLL | None]:
    if os.environ.get("MSSEG_DISABLE_ONEDNN", "0") not in ("", "0"):
        return False, "disabled by MSSEG_DISABLE_ONEDNN", None
    ext = _extension_path()
    if ext is None:
        return False, "the native extension msseg/models/_onednn_ffi*.so was not built", None
    try:
        dnnl = _preload_libdnnl()
        lib = ctypes.CDLL(ext)
        for kind, symbol in _TARGETS.items():
            fn = jax.ffi.pycapsule(getattr(lib, symbol))
            jax.ffi.register_ffi_target(_NAME + kind, fn, platform="cpu")
        lib.MssegOnednnVersion.restype = ctypes.c_int64
        lib.MssegOnednnCacheSize.restype = ctypes.c_int64
        lib.MssegOnednnSupports.restype = ctypes.c_int64
        lib.MssegOnednnSupports.argtypes = [ctypes.c_int64]
        lib.MssegOnednnSetPoison.argtypes = [ctypes.c_int64]
        v = lib.MssegOnednnVersion()
    except (OSError, AttributeError) as e:
        return False, f"cannot load {os.path.basename(ext)}: {e}", None
    where = dnnl or "the system loader path"
    return True, f"oneDNN {v // 10000}.{v // 100 % 100}.{v % 100} from {where}", lib


def _status() -> tuple[bool, str, ctypes.CDLL | None]:
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                _state = _load()
    return _state


def available() -> bool:
    """Whether the oneDNN extension is built, loads, and its FFI targets are registered."""
    return _status()[0]


def reason() -> str:
    """Why `available()` is False, or the loaded oneDNN version and path when it is True."""
    return _status()[1]


def cache_size() -> int:
    """Number of oneDNN primitives built so far (one per shape, dtype, stride and kind)."""
    lib = _status()[2]
    return int(lib.MssegOnednnCacheSize()) if lib is not None else 0


def set_poison(on: bool) -> None:
    """Poison mode: before every call the library fills its results, reorder buffers and
    scratchpads with 0x7F bytes (~3.4e38 as float32 or bfloat16), so an output oneDNN does not
    write, or a read of scratchpad memory it did not write first, gives huge values on every
    call instead of intermittently. For tests (tests/test_onednn.py) and
    tools/stress_onednn.py; it costs a memset per buffer."""
    lib = _status()[2]
    if lib is None:
        raise RuntimeError(f"the oneDNN convolution is unavailable: {reason()}")
    lib.MssegOnednnSetPoison(int(bool(on)))


@functools.cache
def _cpu_supports(dtype_name: str) -> bool:
    """Whether oneDNN has all three primitives for this dtype on this CPU (bf16 needs AVX-512)."""
    lib = _status()[2]
    return lib is not None and bool(lib.MssegOnednnSupports(int(dtype_name == "bfloat16")))


def supports(x: jax.Array, kernel: jax.Array) -> bool:
    """Whether `conv3d` handles these operands: float32 or bfloat16 (both the same), and this
    CPU has oneDNN kernels for that dtype."""
    return (
        x.dtype == kernel.dtype
        and any(x.dtype == d for d in DTYPES)
        and _cpu_supports(jnp.dtype(x.dtype).name)
    )


def _layout() -> int:
    layout = int(os.environ.get("MSSEG_ONEDNN_LAYOUT", "1"))
    if layout not in (0, 1, 2):
        raise ValueError(f"MSSEG_ONEDNN_LAYOUT must be 0, 1 or 2, got {layout}")
    return layout


def _padding(spatial, k: int, stride: int) -> np.ndarray:
    pads = lax.padtype_to_pads(tuple(spatial), (k,) * 3, (stride,) * 3, "SAME")
    return np.array([lo for lo, _ in pads] + [hi for _, hi in pads], np.int64)


def _call(kind: str, a, b, out: jax.ShapeDtypeStruct, stride: int, padding: np.ndarray):
    ok, why, _ = _status()  # loads the library and registers the targets on first use
    if not ok:
        raise RuntimeError(f"the oneDNN convolution is unavailable: {why}")
    return jax.ffi.ffi_call(_NAME + kind, out, vmap_method="sequential")(
        a, b, stride=np.int64(stride), padding=padding, layout=np.int64(_layout())
    )


def _out_spatial(spatial, stride: int) -> tuple[int, ...]:
    return tuple(-(-n // stride) for n in spatial)


def _raw(kind: str, a, b, aux, stride: int):
    """One FFI call. fwd: (x, w) → y; bwd_data: (dy, w) → dx with aux = x's spatial shape;
    bwd_weights: (x, dy) → dw in float32 with aux = k."""
    if kind == "fwd":
        spatial, k = a.shape[1:4], b.shape[0]
        shape, dtype = (a.shape[0], *_out_spatial(spatial, stride), b.shape[4]), a.dtype
    elif kind == "bwd_data":
        spatial, k = aux, b.shape[0]
        shape, dtype = (a.shape[0], *spatial, b.shape[3]), a.dtype
    else:
        spatial, k = a.shape[1:4], aux
        shape, dtype = (k, k, k, a.shape[4], b.shape[4]), jnp.float32
    out = jax.ShapeDtypeStruct(shape, dtype)
    return _call(kind, a, b, out, stride, _padding(spatial, k, stride))


# Sharding (Shardy rules for custom_partitioning): the batch factor `b` may stay sharded,
# every other dimension is gathered; the kernel gradient reduces over `b` (psum per shard).
_RULES = {
    "fwd": "b x y z c, i j k c f -> b p q r f",
    "bwd_data": "b p q r f, i j k c f -> b x y z c",
    "bwd_weights": "b x y z c, b p q r f -> i j k c f",
}


def _not_batch(rule: str) -> tuple[str, ...]:
    """The rule's factors other than `b`, in order of first appearance (as Shardy wants)."""
    names = rule.replace(",", " ").replace("->", " ").split()
    return tuple(n for n in dict.fromkeys(names) if n != "b")


def _batch_axes(sharding):
    """The mesh axes that shard dimension 0 under `sharding`, or None."""
    spec = getattr(sharding, "spec", None)
    return spec[0] if spec else None


def _partitioned(kind: str):
    """The FFI call wrapped in custom_partitioning: a batch-sharded operand runs one oneDNN
    call per device on its shard; anything else is gathered to replicated first."""

    def fn(a, b, aux, stride):
        return _raw(kind, a, b, aux, stride)

    op = custom_partitioning(fn, static_argnums=(2, 3))

    def partition(aux, stride, mesh, arg_shapes, result_shape):
        axes = _batch_axes(arg_shapes[0].sharding)
        batch, rep = NamedSharding(mesh, P(axes)), NamedSharding(mesh, P())
        second = batch if kind == "bwd_weights" else rep

        def lower(a, b):
            r = _raw(kind, a, b, aux, stride)
            if kind == "bwd_weights" and axes is not None:
                r = lax.psum(r, axes)
            return r

        return mesh, lower, rep if kind == "bwd_weights" else batch, (batch, second)

    def infer(aux, stride, mesh, arg_shapes, result_shape):
        if kind == "bwd_weights":
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, P(_batch_axes(arg_shapes[0].sharding)))

    op.def_partition(
        partition,
        infer_sharding_from_operands=infer,
        propagate_user_sharding=None,
        sharding_rule=_RULES[kind],
        reduction_factors=("b",) if kind == "bwd_weights" else (),
        need_replication_factors=_not_batch(_RULES[kind]),
    )
    return op


_OPS = {kind: _partitioned(kind) for kind in _TARGETS}


def _explicit_mesh(a):
    """The abstract mesh when `a`'s type carries Explicit sharding axes, else None."""
    mesh = getattr(jax.typeof(a).sharding, "mesh", None)
    explicit = jax.sharding.AxisType.Explicit
    if mesh is None or mesh.empty or explicit not in getattr(mesh, "axis_types", ()):
        return None
    return mesh


def _apply(kind: str, a, b, aux, stride: int):
    """The FFI call, one per device on its batch shard where the inputs are batch-sharded.

    Sharding in types (Explicit mesh axes): a shard_map over the batch axes of `a`'s type;
    otherwise (Auto axes, or no mesh) custom_partitioning decides during SPMD partitioning."""
    mesh = _explicit_mesh(a)
    if mesh is None:
        return _OPS[kind](a, b, aux, stride)
    axes = _batch_axes(jax.typeof(a).sharding)
    a_spec = P(axes)
    b_spec = P(axes) if kind == "bwd_weights" else P()
    out_spec = P() if kind == "bwd_weights" else P(axes)
    a = jax.sharding.reshard(a, NamedSharding(mesh, a_spec))
    b = jax.sharding.reshard(b, NamedSharding(mesh, b_spec))

    def local(a, b):
        r = _raw(kind, a, b, aux, stride)
        return lax.psum(r, axes) if kind == "bwd_weights" and axes is not None else r

    return jax.shard_map(local, mesh=mesh, in_specs=(a_spec, b_spec), out_specs=out_spec)(a, b)


def _op(kind: str, a, b, aux, stride: int):
    """`_apply` with a vmap rule: a mapped activation with an unmapped kernel folds the mapped
    axis into the batch (one call); any other mapped case runs one call per element."""

    @jax.custom_batching.custom_vmap
    def op(a, b):
        return _apply(kind, a, b, aux, stride)

    @op.def_vmap
    def rule(axis_size, in_batched, a, b):
        a_mapped, b_mapped = in_batched
        if a_mapped and not b_mapped and kind != "bwd_weights":
            r = _op(kind, a.reshape(-1, *a.shape[2:]), b, aux, stride)
            return r.reshape(axis_size, a.shape[1], *r.shape[1:]), True
        a = a if a_mapped else jnp.broadcast_to(a, (axis_size, *a.shape))
        b = b if b_mapped else jnp.broadcast_to(b, (axis_size, *b.shape))
        return lax.map(lambda ab: _op(kind, *ab, aux, stride), (a, b)), True

    return op(a, b)


def _like(r, x):
    """`r` resharded to `x`'s sharding type where types carry shardings (Explicit axes)."""
    if _explicit_mesh(x) is None or jax.typeof(r).sharding == jax.typeof(x).sharding:
        return r
    return jax.sharding.reshard(r, jax.typeof(x).sharding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x, w, stride):
    return _op("fwd", x, w, None, stride)


def _conv_fwd(x, w, stride):
    return _conv(x, w, stride), (x, w)


def _conv_bwd(stride, res, g):
    x, w = res
    g = g.astype(x.dtype)
    dx = _op("bwd_data", g, w, tuple(x.shape[1:4]), stride)
    dw = _op("bwd_weights", x, g, w.shape[0], stride).astype(w.dtype)
    return _like(dx, x), _like(dw, w)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv3d(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """[B, X, Y, Z, C] * [k, k, k, C, F] → [B, X', Y', Z', F] with oneDNN: SAME padding as lax
    (X' = ceil(X / stride)), equal strides, float32 or bfloat16 (output dtype = input dtype)."""
    ok, why, _ = _status()
    if not ok:
        raise RuntimeError(f"the oneDNN convolution is unavailable: {why}")
    if x.ndim != 5 or kernel.ndim != 5 or len(set(kernel.shape[:3])) != 1:
        raise ValueError(
            f"expected x [B,X,Y,Z,C] and kernel [k,k,k,C,F], got {x.shape}, {kernel.shape}"
        )
    if x.shape[4] != kernel.shape[3]:
        raise ValueError(f"channels of x {x.shape} and kernel {kernel.shape} differ")
    if not supports(x, kernel):
        raise ValueError(
            f"the oneDNN convolution takes float32 or bfloat16 operands of one dtype that this "
            f"CPU supports, got {x.dtype} and {kernel.dtype}"
        )
    return _conv(x, kernel, int(stride))
