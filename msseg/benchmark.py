"""Model workload benchmarks: FLOPs, compile time, s per denoiser evaluation and train step.

A workload fixes the U-Net and the input; `measure` jit-compiles the forward pass (one
denoiser evaluation) and an AdamW train step on the diffusion loss, reads their FLOPs from
XLA's cost analysis, times them over repeats (median, after a warm-up run) and reports the
achieved GFLOP/s. W1 is the project's reference workload (experiments/2026-11-26_w1_unet,
experiments/2026-11-26_w1_onednn).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from msseg.diffusion import losses
from msseg.diffusion import schedule as sch
from msseg.models import conv
from msseg.models.unet import MultiscaleUNet, UNetConfig


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    model: UNetConfig
    patch: tuple[int, int, int] = (64, 64, 64)
    batch: int = 1


WORKLOADS = {
    "w1": Workload(
        "w1",
        UNetConfig(
            num_classes=7, image_channels=1, channels=(32, 64, 128), num_res_blocks=2, norm_groups=8
        ),
    ),
    "tiny": Workload(
        "tiny",
        UNetConfig(num_classes=3, channels=(8, 16), num_res_blocks=1, norm_groups=4),
        patch=(16, 16, 16),
    ),
}


def _timed(fn, *args, repeats: int) -> list[float]:
    jax.block_until_ready(fn(*args))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return times


def measure(
    w: Workload, *, repeats: int = 3, dtype: str | None = None, conv_impl: str | None = None
) -> dict:
    """Compile and time one denoiser evaluation and one AdamW train step of workload `w`."""
    cfg = w.model
    if dtype == "mixed":  # bf16 convolutions, float32 everything else
        cfg = dataclasses.replace(cfg, dtype="float32", conv_dtype="bfloat16")
    elif dtype:
        cfg = dataclasses.replace(cfg, dtype=dtype)
    cfg = dataclasses.replace(cfg, conv_impl=conv_impl) if conv_impl else cfg
    model = MultiscaleUNet(cfg)
    s = sch.make_schedule("cosine", 1000)
    key = jax.random.key(0)
    shape = (w.batch, *w.patch)
    image = jax.random.normal(key, (*shape, cfg.image_channels))
    labels = jax.random.randint(key, shape, 0, cfg.num_classes)
    y = jax.nn.one_hot(labels, cfg.num_classes)
    x = jnp.concatenate([2 * y - 1, image], axis=-1) if cfg.diffusion else image
    t = jnp.full((w.batch,), 500, jnp.int32) if cfg.diffusion else None

    start = time.perf_counter()
    params = jax.jit(model.init)(key, x, t)
    init_s = time.perf_counter() - start
    opt = optax.adamw(1e-4)
    opt_state = opt.init(params)
    loss_cfg = losses.LossConfig()

    def passes(model):
        def forward(params, x, t):
            return model.apply(params, x, t)[0]

        def train_step(params, opt_state, key):
            grad_fn = jax.value_and_grad(
                lambda p: losses.model_loss(model, p, image, y, key, s, loss_cfg)[0]
            )
            loss, grads = grad_fn(params)
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        return {"forward": forward, "train_step": train_step}

    timed = passes(model)
    # XLA does not count the FLOPs of custom calls (the oneDNN convolutions): count them on the
    # same computation lowered with XLA's own convolution.
    counted = passes(MultiscaleUNet(dataclasses.replace(cfg, conv_impl="xla")))

    out = {
        "workload": w.name,
        "dtype": "mixed" if cfg.conv_dtype == "bfloat16" and cfg.dtype == "float32" else cfg.dtype,
        "conv_impl": conv.resolve(cfg.conv_impl),
        "input": [*shape, cfg.in_channels],
        "channels": list(cfg.channels),
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "init_s": round(init_s, 2),
        "params": int(sum(np.prod(p.shape) for p in jax.tree.leaves(params))),
    }
    for name, args in (("forward", (params, x, t)), ("train_step", (params, opt_state, key))):
        start = time.perf_counter()
        compiled = jax.jit(timed[name]).lower(*args).compile()
        compile_s = time.perf_counter() - start
        cost = jax.jit(counted[name]).lower(*args).cost_analysis() or {}
        flops = float(cost.get("flops", float("nan")))
        times = _timed(compiled, *args, repeats=repeats)
        median = float(np.median(times))
        out[name] = {
            "compile_s": round(compile_s, 2),
            "gflop": round(flops / 1e9, 2),
            "seconds": [round(v, 4) for v in times],
            "median_s": round(median, 4),
            "gflop_per_s": round(flops / 1e9 / median, 2),
        }
    return out


def format_table(rows: list[dict]) -> str:
    """One line per workload x pass: GFLOP, compile s, median s, GFLOP/s."""
    lines = [
        f"{'workload':10s} {'dtype':9s} {'conv':9s} {'pass':11s} {'GFLOP':>9s} {'compile s':>10s} "
        f"{'median s':>9s} {'GFLOP/s':>8s}"
    ]
    for r in rows:
        for name in ("forward", "train_step"):
            m = r[name]
            lines.append(
                f"{r['workload']:10s} {r['dtype']:9s} {r['conv_impl']:9s} {name:11s} "
                f"{m['gflop']:9.1f} {m['compile_s']:10.1f} {m['median_s']:9.3f} "
                f"{m['gflop_per_s']:8.1f}"
            )
    return "\n".join(lines)
