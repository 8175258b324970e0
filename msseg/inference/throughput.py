"""Sampling throughput of a model: compile time, s per denoiser evaluation, volumes/min, voxels/s,
and the compiled chain's memory per device.

`measure` segments a synthetic volume of `size`³ voxels (at the model's spacing, so the
windows and the work are those of a real scan of that size) with one sampler setting on a
mesh of `devices` x `space` local devices (`predict.Options`): the first call compiles
(compile_s = first - median of the rest), then `repeats` timed runs. Denoiser evaluations =
windows x ensemble x the sampler's evaluations per chain. Peak memory is the process's peak
RSS on CPU, the device's peak bytes on GPU; `chain_memory_mb` is XLA's memory analysis of the
compiled call for one group of windows (per device: arguments, outputs, temporaries), also
without running it (`run=False`: what fits before trying).
"""

from __future__ import annotations

import resource
import time

import jax
import numpy as np

from msseg.diffusion.sampler_config import STEP_SAMPLERS
from msseg.inference import model as model_lib
from msseg.inference import predict
from msseg.inference import window as window_lib


def peak_memory_mb() -> float:
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def memory_mb(compiled) -> dict | None:
    """Per-device memory of a compiled program (XLA's memory analysis), in MiB; None where
    the backend does not report it."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - backends without the analysis raise various errors
        return None
    if m is None:
        return None
    parts = {
        k: getattr(m, f"{k}_size_in_bytes", 0) or 0
        for k in ("argument", "output", "temp", "alias", "generated_code")
    }
    out = {k: round(v / 2**20, 1) for k, v in parts.items()}
    # donated/aliased outputs share their argument's buffer: count them once
    out["total"] = round(
        (parts["argument"] + parts["output"] - parts["alias"] + parts["temp"]) / 2**20, 1
    )
    return out


def measure(
    model: model_lib.LoadedModel,
    *,
    sampler: str,
    steps: int,
    ensemble: int,
    size: int,
    repeats: int = 2,
    batch: int = 1,
    overlap: float = 0.5,
    seed: int = 0,
    devices: int = 1,
    space: int = 1,
    window: tuple[int, int, int] | str | None = None,
    run: bool = True,
) -> dict:
    """One sampler setting on a `size`³ volume → a dict of figures (`run=False`: the
    compiled chain's memory only, nothing timed)."""
    cfg = model_lib.sampler_config(model, kind=sampler, steps=steps, ensemble=ensemble)
    opts = predict.Options(cfg, seed, overlap, batch, devices=devices, space=space, window=window)
    seg = predict.Segmenter(model, opts)
    shape = (size,) * 3
    patch = seg.window_for(shape)
    image = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    key = jax.random.key(seed)
    start = time.perf_counter()
    if run:  # the first call compiles the call the timed runs make
        seg.segment_array(image, key)
        first = time.perf_counter() - start
    compiled = seg.lowered(shape).compile()  # its memory analysis (compiled once more)
    if not run:
        first = time.perf_counter() - start
    padded = tuple(max(s, p) for s, p in zip(shape, patch, strict=True))
    windows = len(window_lib.window_starts(padded, patch, overlap))
    per_chain = cfg.denoiser_evaluations(model.schedule.num_timesteps) if model.diffusion else 1
    evals = windows * ensemble * per_chain
    row = {
        "route": model.route,
        "sampler": sampler,
        "steps": steps if sampler in STEP_SAMPLERS else None,
        "ensemble": ensemble,
        "size": size,
        "window": list(patch),
        "devices": len(seg.devices),
        "space": space,
        "windows": windows,
        "denoiser_evals": evals,
        "compile_s": round(first, 2),
        "chain_memory_mb": memory_mb(compiled),
    }
    del compiled
    if not run:
        return row
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        seg.segment_array(image, jax.random.fold_in(key, i + 1))
        times.append(time.perf_counter() - start)
    median = float(np.median(times)) if times else first
    # the first call less one run: about the compile time
    row["compile_s"] = round(max(first - median, 0.0), 2)
    return {
        **row,
        "seconds": [round(t, 3) for t in times],
        "median_s": round(median, 4),
        "s_per_eval": round(median / evals, 4),
        "volumes_per_min": round(60 / median, 3),
        "voxels_per_s": round(size**3 / median, 1),
        "peak_mb": round(peak_memory_mb(), 1),
    }


def format_table(rows: list[dict], baseline: list[dict] | None = None) -> str:
    """One line per row: the setting, the mesh, the compiled chain's memory per device and,
    for rows that ran, the timings (and the speed-up over `baseline`'s row)."""
    head = [
        "route",
        "sampler",
        "steps",
        "ens",
        "size",
        "devices",
        "evals",
        "chain MB",
        "compile s",
        "median s",
        "s/eval",
        "vol/min",
        "Mvox/s",
        "peak MB",
    ]
    if baseline:
        head.append("speed-up")
    lines = ["  ".join(f"{h:>9}" for h in head)]
    for i, r in enumerate(rows):
        ran = "median_s" in r
        cells = [
            r["route"],
            r["sampler"],
            r["steps"] or "-",
            r["ensemble"],
            r["size"],
            f"{r['devices']}x{r['space']}",
            r["denoiser_evals"],
            (r["chain_memory_mb"] or {}).get("total", "-"),
            r["compile_s"],
            r["median_s"] if ran else "-",
            r["s_per_eval"] if ran else "-",
            r["volumes_per_min"] if ran else "-",
            round(r["voxels_per_s"] / 1e6, 3) if ran else "-",
            r["peak_mb"] if ran else "-",
        ]
        if baseline:
            ok = ran and "median_s" in baseline[i]
            cells.append(round(baseline[i]["median_s"] / r["median_s"], 2) if ok else "-")
        lines.append("  ".join(f"{c!s:>9}" for c in cells))
    return "\n".join(lines)
