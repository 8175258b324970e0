"""Export a training run (a checkpoint of its workdir) as a self-contained model directory.

The chain of every trained entry depth is exported with jax.export: portable XLA only (the
model is rebuilt with `conv_impl="xla"`, no custom calls), a symbolic batch and a symbolic
number of steps, lowered for cpu and cuda. Params travel as an input (params.npz), never as
constants. The protocol's colour tables (FreeSurfer LUT, ITK-SNAP labels) go with it. See
msseg.export.format for the directory layout.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from absl import logging

import msseg
from msseg.diffusion import segment as seg
from msseg.export import format as fmt
from msseg.labels import Protocol
from msseg.models.unet import MultiscaleUNet
from msseg.train import checkpoint, metrics
from msseg.train import setup as setup_lib

PLATFORMS = ("cpu", "cuda")


def _validation(workdir: Path, step: int) -> dict:
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return {}
    rows = [r for r in metrics.read_metrics(path) if r["step"] == step and "val_dice" in r]
    if not rows:
        return {}
    return {k: v for k, v in rows[-1].items() if k == "val_dice" or k.startswith("val/")}


def chain_function(model: MultiscaleUNet, setup: setup_lib.Setup, depth: int):
    """The exported function of the chain entered at `depth` (format.py has the signature)."""
    if not model.cfg.diffusion:

        def logits(params, image):
            return model.apply(params, image, entry_depth=depth)[0].astype(jnp.float32)

        return logits

    def run(params, image, x_t, key_data, ts, ts_next, eta, ancestral):
        bound = seg.model_chain(
            model,
            params,
            setup.schedule,
            setup.loss.target,
            setup.sampler.clip_x0,
            setup.loss.signal_scale,
        )
        key = jax.random.wrap_key_data(key_data)
        return bound(image, x_t, key, ts, ts_next, eta, ancestral, depth)

    return run


def input_specs(model: MultiscaleUNet, params, patch, depth: int) -> tuple:
    """ShapeDtypeStructs of the exported function's inputs (batch b and steps s symbolic)."""
    b, s = jax.export.symbolic_shape("b, s")
    size = tuple(p // 2**depth for p in patch)
    cfg = model.cfg
    p_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    image = jax.ShapeDtypeStruct((b, *size, cfg.image_channels), jnp.float32)
    if not cfg.diffusion:
        return (p_spec, image)
    key_data = jax.random.key_data(jax.random.key(0))
    return (
        p_spec,
        image,
        jax.ShapeDtypeStruct((b, *size, cfg.num_classes), jnp.float32),
        jax.ShapeDtypeStruct(key_data.shape, key_data.dtype),
        jax.ShapeDtypeStruct((s,), jnp.int32),
        jax.ShapeDtypeStruct((s,), jnp.int32),
        jax.ShapeDtypeStruct((), jnp.float32),
        jax.ShapeDtypeStruct((), jnp.bool_),
    )


def export_model(
    workdir: str | os.PathLike,
    output: str | os.PathLike,
    step: str = "latest",
    platforms: tuple[str, ...] = PLATFORMS,
) -> Path:
    """Workdir (its `step`: latest, best or a number) → model directory `output`; returns it."""
    fmt.check_replaceable(output)  # before any work: never replaces what msseg did not write
    run = setup_lib.load_run(workdir)
    setup, workdir = run.setup, run.workdir
    _, ema, n = checkpoint.restore_params(workdir, step)
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), ema)
    heads = params["params"]["head0"]["kernel"].shape[-1]
    if heads != setup.protocol.num_leaves:
        raise ValueError(
            f"{setup.cache}: protocol {setup.protocol.name!r} has {setup.protocol.num_leaves} "
            f"leaves but the checkpoint predicts {heads} classes (was the cache rebuilt?)"
        )
    cfg = dataclasses.replace(setup.model.cfg, conv_impl="xla", remat=False)
    model = MultiscaleUNet(cfg)
    patch = tuple(setup.pipeline.patch_size)
    depths = setup.entry_depths
    if 0 not in setup.train.entry_depths:
        logging.warning("export: the model never trained at entry depth 0; exported anyway")
    sampler = setup.sampler
    if sampler.kind == seg.SamplerKind.MULTISCALE and sampler.coarse_depth not in depths:
        logging.warning(
            "export: the default multiscale sampler needs entry depth %d, not trained",
            sampler.coarse_depth,
        )
    logging.info("export: %s step %d, entry depths %s, platforms %s", workdir, n, depths, platforms)

    def write(tmp: Path) -> dict:
        for d in depths:
            fn = jax.jit(chain_function(model, setup, d))
            exported = jax.export.export(fn, platforms=platforms)(
                *input_specs(model, params, patch, d)
            )
            (tmp / fmt.function_file(d)).write_bytes(exported.serialize())
        fmt.save_params(tmp / fmt.PARAMS, params)
        shutil.copyfile(workdir / "config.json", tmp / fmt.CONFIG)
        write_protocol(setup.protocol, tmp)
        return metadata(run, n, platforms)

    out = fmt.write_directory(output, write)
    logging.info("export: wrote %s", out)
    return out


def write_protocol(protocol: Protocol, folder: Path) -> None:
    """The protocol's files of a model directory: `labels.json` (what inference reads) and
    its colour tables for viewers, `labels_lut.txt` (FreeSurfer) and `labels_itksnap.txt`
    (ITK-SNAP), keyed by the raw codes sample.py writes."""
    (folder / fmt.LABELS).write_text(json.dumps(protocol.to_json(), indent=1) + "\n")
    protocol.write_freesurfer_lut(folder / fmt.LABELS_LUT)
    protocol.write_itksnap_labels(folder / fmt.LABELS_ITKSNAP)


def metadata(run: setup_lib.Run, step: int, platforms) -> dict:
    """metadata.json without the format marker and the checksums (format.write_directory
    adds them): provenance, and the model's facts (`setup.model_facts`)."""
    depths = run.setup.entry_depths
    return {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": {
            "msseg": msseg.__version__,
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "flax": flax.__version__,
        },
        "source": {"workdir": str(run.workdir), "step": step},
        "validation": _validation(run.workdir, step),
        "platforms": list(platforms),
        "prng_impl": str(jax.random.key_impl(jax.random.key(0))),
        "functions": {str(d): fmt.function_file(d) for d in depths},
        **run.facts(),
    }
