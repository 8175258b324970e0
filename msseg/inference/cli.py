"""The sampling flags of tools/sample.py and tools/evaluate.py, defined once: the sampler
settings (each defaults to the model's own), the windowing, the route and progress, and the
model they open."""

from __future__ import annotations

import os
import sys

from absl import flags

from msseg.diffusion import sampler_config as sc
from msseg.inference import model as model_lib
from msseg.inference import postprocess, predict
from msseg.inference import progress as progress_lib

SAMPLER_FLAGS = ("sampler", "steps", "ensemble", "eta", "fusion", "step_fusion")


def define_sampling_flags() -> None:
    """Defines --sampler, --steps, --ensemble, --eta, --fusion, --step_fusion (None: the
    model's default), --seed, --overlap, --batch, --devices, --space, --window, --tta,
    --postprocess, --strip_model, --route and --progress."""
    flags.DEFINE_enum("sampler", None, list(sc.SAMPLERS), "Sampler (default: the model's).")
    flags.DEFINE_integer("steps", None, "DDIM steps (default: the model's).")
    flags.DEFINE_integer("ensemble", None, "Samples fused per volume (default: the model's).")
    flags.DEFINE_float("eta", None, "DDIM eta in [0, 1], 0 = deterministic given the noise.")
    flags.DEFINE_enum("fusion", None, list(sc.FUSIONS), "Ensemble fusion (default: the model's).")
    flags.DEFINE_enum(
        "step_fusion",
        None,
        list(sc.STEP_FUSIONS),
        "DDIM step fusion: the chain's per-step estimates averaged (default: the model's).",
    )
    flags.DEFINE_integer("seed", 0, "Random seed (same seed, same segmentation).")
    flags.DEFINE_float("overlap", 0.5, "Sliding-window overlap in [0, 1).")
    flags.DEFINE_integer("batch", 1, "Windows per device per compiled call.")
    flags.DEFINE_integer(
        "devices",
        0,
        "Local devices the windows are sharded over (a data mesh axis): 0 = every local GPU "
        "or TPU, one device on a CPU; N = the first N (also N fake CPU devices).",
    )
    flags.DEFINE_integer(
        "space",
        1,
        "Local devices each window is split over along its first axis (a `space` mesh axis, "
        "the mesh --devices x --space; local route, XLA convolutions): windows larger than "
        "one device holds, e.g. --window=whole for a whole 1 mm head.",
    )
    flags.DEFINE_string(
        "window",
        None,
        "Window size in voxels at the model's spacing, X,Y,Z (multiples of 2^(depths-1); X "
        "of 2^(depths-1) x --space), or 'whole' (the whole volume in one window); default: "
        "the model's training patch.",
    )
    flags.DEFINE_enum(
        "tta",
        predict.TTA.NONE.value,
        list(predict.TTAS),
        "Test-time augmentation: flip also segments the left/right mirror image and averages "
        "its probabilities in (left and right labels swapped back); twice the windows.",
    )
    flags.DEFINE_enum(
        "postprocess",
        postprocess.Postprocess.NONE.value,
        list(postprocess.POSTPROCESSES),
        "What is done to the decided labels: largest keeps only the brain's largest "
        "connected piece (every label > 0), dropping what a model labels in the face, neck "
        "or skull base of a full-head scan.",
    )
    flags.DEFINE_string(
        "strip_model",
        None,
        "A full-head model directory that strips each scan first: its brain (labels > 0, the "
        "largest piece opened by --strip_open_mm, holes filled) is kept, every other voxel "
        "set to 0, then --model segments it (SynthStrip-then-segment); its own sampler "
        "settings; windows add up.",
    )
    flags.DEFINE_string(
        "strip_bound_model",
        None,
        "With --strip_model: a second full-head model, typically a coarse one that sees the "
        "whole head in one window (configs/quickstart_heads_4mm.py); --strip_model's brain is "
        "kept only within 2 mm of this model's brain (opened likewise), which removes what "
        "the first takes for brain in the neck; its windows add up too.",
    )
    flags.DEFINE_float(
        "strip_open_mm",
        postprocess.OPEN_MM,
        "With --strip_model: the opening radius (mm) of its brain: eroded by it, the largest "
        "piece kept, grown back inside the brain, which cuts thin bridges to false brain in "
        "the skull base or neck; 0 = no opening.",
    )
    flags.DEFINE_enum(
        "route",
        model_lib.Route.AUTO.value,
        list(model_lib.ROUTES),
        "exported artifact, or the model rebuilt with this machine's fastest convolution "
        "(local, needs flax); auto: local where msseg's model code imports.",
    )
    flags.DEFINE_enum(
        "progress",
        progress_lib.Mode.AUTO.value,
        list(progress_lib.MODES),
        "Windows done inside each file, with an ETA, on stderr at most every 10 s: auto = only "
        "when stderr is a terminal. The per-file log line (with the ETA of the files left) is "
        "written either way.",
    )


def open_model(values: flags.FlagValues) -> tuple[model_lib.LoadedModel, sc.SamplerConfig]:
    """`model_lib.open_model` of --model with the sampler flags given (the rest: the model's).
    With --space > 1 the local route with XLA's convolution, which GSPMD splits along space
    (--route=auto picks it; --route=exported is refused by the Segmenter)."""
    overrides = {name: values[name].value for name in SAMPLER_FLAGS}
    overrides["kind"] = overrides.pop("sampler")
    return model_lib.open_model(values.model, *_route(values), **overrides)


def _route(values: flags.FlagValues) -> tuple[str, str]:
    """(route, convolution) for the models a run opens: --route, and with --space > 1 XLA's
    convolution on the local route (auto picks it)."""
    route, conv_impl = values.route, "auto"
    if values.space > 1:
        conv_impl = "xla"
        if route == model_lib.Route.AUTO.value:
            route = model_lib.Route.LOCAL.value
    return route, conv_impl


def open_strip_models(
    values: flags.FlagValues,
) -> tuple[model_lib.LoadedModel | None, model_lib.LoadedModel | None]:
    """--strip_model and --strip_bound_model opened on --model's route (None for a flag not
    given)."""
    route, conv_impl = _route(values)
    return tuple(
        model_lib.load_model(path, route=route, conv_impl=conv_impl) if path else None
        for path in (values.strip_model, values.strip_bound_model)
    )


def window(values: flags.FlagValues) -> tuple[int, int, int] | str | None:
    """--window as `predict.Options.window` (ValueError on a malformed value)."""
    text = values.window
    if text is None or text.strip() == predict.WHOLE:
        return None if text is None else predict.WHOLE
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--window must be X,Y,Z voxels or 'whole', got {text!r}") from None
    return sizes * 3 if len(sizes) == 1 else sizes


def show_progress(values: flags.FlagValues) -> bool:
    """Whether --progress asks for progress lines (auto: stderr is a terminal)."""
    return progress_lib.enabled(values.progress, sys.stderr)


def use_compilation_cache(folder: str) -> None:
    """jax's persistent compilation cache in `folder` ('' = off): a rerun skips compiling."""
    if folder:
        import jax

        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(folder))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
