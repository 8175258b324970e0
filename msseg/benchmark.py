"""Model workload benchmarks: FLOPs, compile time, s per denoiser evaluation and train step.

A workload fixes the U-Net and the input; `measure` jit-compiles the forward pass (one
denoiser evaluation) and an AdamW train step on the diffusion loss, reads their FLOPs from
XLA's cost analysis, reads the compiled program's memory per device (XLA's memory analysis:
arguments, outputs, temporaries), times them over repeats (median, after a warm-up run; none
with repeats=0: compile and analyse only, for programs too large to run here) and reports the
achieved GFLOP/s. W1 is the project's reference workload (experiments/2026-11-26_w1_unet,
experiments/2026-11-26_w1_onednn); `config_workload` makes one of a training config (its
network, loss, patch and batch, or any patch and batch: a whole volume for sampling).
"""

from __future__ import annotations

import dataclasses
import runpy
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from msseg.diffusion import losses
from msseg.diffusion import schedule as sch
from msseg.inference.throughput import memory_mb
from msseg.models import conv
from msseg.models.unet import MultiscaleUNet, UNetConfig


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    model: UNetConfig
    patch: tuple[int, int, int] = (64, 64, 64)
    batch: int = 1
    loss: losses.LossConfig | None = None  # None: LossConfig()
    schedule: str = "cosine"


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


def cpu_model() -> str:
    """The processor's model name (/proc/cpuinfo), "" where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def config_workload(
    path: str, *, patch: tuple[int, ...] | None = None, batch: int | None = None
) -> Workload:
    """The workload of the training config at `path`: its network, loss and schedule, its
    training patch and per-process batch unless `patch` / `batch` are given."""
    from msseg.labels import get_protocol
    from msseg.train import setup as setup_lib

    config = runpy.run_path(path)["get_config"]()
    s = setup_lib.setup_for(config, get_protocol(config.data.protocol or "mni-tissue"))
    name = path.rsplit("/", 1)[-1].removesuffix(".py")
    return Workload(
        name,
        s.model.cfg,
        patch=tuple(patch or s.pipeline.patch_size),
        batch=batch or s.pipeline.batch_size,
        loss=s.loss,
        schedule=s.schedule_kind,
    )


def _finite(v: float, digits: int = 2) -> float | None:
    """`v` rounded, or None (JSON null) where it is not a number."""
    return round(v, digits) if np.isfinite(v) else None


def _timed(fn, *args, repeats: int) -> list[float]:
    jax.block_until_ready(fn(*args))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return times


def measure(
    w: Workload,
    *,
    repeats: int = 3,
    dtype: str | None = None,
    conv_impl: str | None = None,
    passes: tuple[str, ...] = ("forward", "train_step"),
) -> dict:
    """Compile and time one denoiser evaluation and one AdamW train step of workload `w`
    (those of `passes`); repeats=0 compiles and analyses without running."""
    cfg = w.model
    if dtype == "mixed":  # bf16 convolutions, float32 everything else
        cfg = dataclasses.replace(cfg, dtype="float32", conv_dtype="bfloat16")
    elif dtype:
        cfg = dataclasses.replace(cfg, dtype=dtype)
    cfg = dataclasses.replace(cfg, conv_impl=conv_impl) if conv_impl else cfg
    model = MultiscaleUNet(cfg)
    s = sch.make_schedule(w.schedule, 1000)
    key = jax.random.key(0)
    shape = (w.batch, *w.patch)
    image = jax.random.normal(key, (*shape, cfg.image_channels))
    labels = jax.random.randint(key, shape, 0, cfg.num_classes)
    y = jax.nn.one_hot(labels, cfg.num_classes)
    x = jnp.concatenate([2 * y - 1, image], axis=-1) if cfg.diffusion else image
    t = jnp.full((w.batch,), 500, jnp.int32) if cfg.diffusion else None

    start = time.perf_counter()
    init_model = MultiscaleUNet(dataclasses.replace(cfg, remat=False))
    params = jax.jit(init_model.init)(key, x, t)
    init_s = time.perf_counter() - start
    opt = optax.adamw(1e-4)
    opt_state = opt.init(params)
    loss_cfg = w.loss or losses.LossConfig()

    def make_passes(model):
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

    timed = make_passes(model)
    # XLA does not count the FLOPs of custom calls (the oneDNN convolutions): count them on the
    # same computation lowered with XLA's own convolution.
    counted = make_passes(MultiscaleUNet(dataclasses.replace(cfg, conv_impl="xla")))

    out = {
        "workload": w.name,
        "dtype": "mixed" if cfg.conv_dtype == "bfloat16" and cfg.dtype == "float32" else cfg.dtype,
        "conv_impl": conv.resolve(cfg.conv_impl),
        "input": [*shape, cfg.in_channels],
        "channels": list(cfg.channels),
        "skip": cfg.skip,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "init_s": round(init_s, 2),
        "params": int(sum(np.prod(p.shape) for p in jax.tree.leaves(params))),
    }
    all_args = {"forward": (params, x, t), "train_step": (params, opt_state, key)}
    for name in passes:
        args = all_args[name]
        start = time.perf_counter()
        compiled = jax.jit(timed[name]).lower(*args).compile()
        compile_s = time.perf_counter() - start
        cost = jax.jit(counted[name]).lower(*args).cost_analysis() or {}
        if "flops" not in cost and out["conv_impl"] == "xla":
            # some backends (GPU) count only after compiling; the timed program is XLA's own
            cost = compiled.cost_analysis() or {}
            cost = cost[0] if isinstance(cost, list | tuple) and cost else cost
        flops = float(cost.get("flops", float("nan"))) if isinstance(cost, dict) else float("nan")
        times = _timed(compiled, *args, repeats=repeats) if repeats else []
        median = float(np.median(times)) if times else float("nan")
        out[name] = {
            "compile_s": round(compile_s, 2),
            "gflop": _finite(flops / 1e9),
            "memory_mb": memory_mb(compiled),
            "seconds": [round(v, 4) for v in times],
            "median_s": _finite(median, 4),
            "gflop_per_s": _finite(flops / 1e9 / median),
        }
    return out


def format_table(rows: list[dict]) -> str:
    """One line per workload x pass: input, GFLOP, compile s, median s, GFLOP/s, MiB/device."""
    lines = [
        f"{'workload':10s} {'input':>18s} {'dtype':9s} {'conv':9s} {'pass':11s} {'GFLOP':>9s} "
        f"{'compile s':>10s} {'median s':>9s} {'GFLOP/s':>8s} {'MiB/dev':>9s}"
    ]
    for r in rows:
        shape = "x".join(str(v) for v in r["input"])
        for name in ("forward", "train_step"):
            if name not in r:
                continue
            m = r[name]
            mem = (m.get("memory_mb") or {}).get("total")

            def cell(v, width, digits):
                return f"{v:{width}.{digits}f}" if v is not None else f"{'-':>{width}s}"

            lines.append(
                f"{r['workload']:10s} {shape:>18s} {r['dtype']:9s} {r['conv_impl']:9s} "
                f"{name:11s} {cell(m['gflop'], 9, 1)} {m['compile_s']:10.1f} "
                f"{cell(m['median_s'], 9, 3)} {cell(m['gflop_per_s'], 8, 1)} {cell(mem, 9, 0)}"
            )
    return "\n".join(lines)
