"""Sampling throughput of a model: compile time, s per denoiser evaluation, volumes/min, voxels/s.

`measure` segments a synthetic volume of `size`³ voxels (at the model's spacing, so the
windows and the work are those of a real scan of that size) with one sampler setting:
the first call compiles (compile_s = first - median of the rest), then `repeats` timed
runs. Denoiser evaluations = windows x ensemble x the sampler's evaluations per chain.
Peak memory is the process's peak RSS on CPU, the device's peak bytes on GPU.
"""

from __future__ import annotations

import resource
import time

import jax
import numpy as np

from msseg.diffusion.sampler_config import STEP_SAMPLERS
from msseg.inference import model as model_lib
from msseg.inference import predict


def peak_memory_mb() -> float:
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


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
) -> dict:
    """One sampler setting on a `size`³ volume → a dict of figures."""
    cfg = model_lib.sampler_config(model, kind=sampler, steps=steps, ensemble=ensemble)
    seg = predict.Segmenter(model, predict.Options(cfg, seed, overlap, batch))
    image = np.random.default_rng(seed).normal(size=(size,) * 3).astype(np.float32)
    key = jax.random.key(seed)
    start = time.perf_counter()
    _, _, windows = seg.segment_array(image, key)
    first = time.perf_counter() - start
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        seg.segment_array(image, jax.random.fold_in(key, i + 1))
        times.append(time.perf_counter() - start)
    median = float(np.median(times)) if times else first
    per_chain = cfg.denoiser_evaluations(model.schedule.num_timesteps) if model.diffusion else 1
    evals = windows * ensemble * per_chain
    return {
        "route": model.route,
        "sampler": sampler,
        "steps": steps if sampler in STEP_SAMPLERS else None,
        "ensemble": ensemble,
        "size": size,
        "windows": windows,
        "denoiser_evals": evals,
        "compile_s": round(max(first - median, 0.0), 2),
        "seconds": [round(t, 3) for t in times],
        "median_s": round(median, 4),
        "s_per_eval": round(median / evals, 4),
        "volumes_per_min": round(60 / median, 3),
        "voxels_per_s": round(size**3 / median, 1),
        "peak_mb": round(peak_memory_mb(), 1),
    }


def format_table(rows: list[dict], baseline: list[dict] | None = None) -> str:
    head = [
        "route",
        "sampler",
        "steps",
        "ens",
        "size",
        "evals",
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
        cells = [
            r["route"],
            r["sampler"],
            r["steps"] or "-",
            r["ensemble"],
            r["size"],
            r["denoiser_evals"],
            r["compile_s"],
            r["median_s"],
            r["s_per_eval"],
            r["volumes_per_min"],
            round(r["voxels_per_s"] / 1e6, 3),
            r["peak_mb"],
        ]
        if baseline:
            cells.append(round(baseline[i]["median_s"] / r["median_s"], 2))
        lines.append("  ".join(f"{c!s:>9}" for c in cells))
    return "\n".join(lines)
