"""Load a model directory and give the segmenter its chain functions, exported or rebuilt.

Routes:
- "exported": the jax.export artifacts (portable XLA; jax and numpy are enough).
- "local": the flax model rebuilt from the same params and config with the fastest
  convolution of this machine (`conv_impl="auto"`: oneDNN on CPU) — needs msseg's model code.
- "auto": "local" when the flax model code imports, else "exported".
Both give `msseg.diffusion.segment.ChainFn`s running `samplers.sample_chain`, so they
produce the same segmentation up to floating-point differences of the convolutions.

Every fact about a model comes from its metadata.json (`msseg.train.setup.model_facts` wrote
them): the directory's config.json is a record of the training run, never read here.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from msseg import files
from msseg import labels as labels_lib
from msseg.data.prepare import PreprocessConfig
from msseg.diffusion import schedule as sch
from msseg.diffusion import segment as seg
from msseg.diffusion.sampler_config import STEP_SAMPLERS
from msseg.errors import InputError
from msseg.export import format as fmt


class Route(enum.StrEnum):
    """How a model directory's chain functions run."""

    AUTO = "auto"  # local when msseg's model code imports, else exported
    EXPORTED = "exported"  # the jax.export artifacts
    LOCAL = "local"  # the flax model rebuilt with this machine's fastest convolution


ROUTES = tuple(r.value for r in Route)


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model directory, ready to segment.

    `chain(params)` gives the `ChainFn` (diffusion models) and `logits(params)` the
    deterministic segmenter `(image, depth) -> logits` (deterministic models): params
    enter jitted code as arguments, never as baked-in constants. `entry_depths` are the
    depths it can be entered at; `patch` the window size at depth 0.
    """

    path: Path
    metadata: dict[str, Any]
    protocol: labels_lib.Protocol
    preprocess: PreprocessConfig
    patch: tuple[int, int, int]
    num_classes: int
    num_depths: int
    entry_depths: tuple[int, ...]
    schedule: sch.Schedule | None
    sampler_defaults: dict[str, Any]
    route: Route
    params: Any
    chain: Callable[[Any], seg.ChainFn] | None
    logits: Callable[[Any], Callable[[jax.Array, int], jax.Array]] | None

    @property
    def diffusion(self) -> bool:
        return self.schedule is not None

    @property
    def signal_scale(self) -> float:
        """The scale of the mask in the chain (1 for deterministic models)."""
        d = self.metadata.get("diffusion")
        return float(d["signal_scale"]) if d else 1.0


def _platform() -> str:
    backend = jax.default_backend()
    return {"gpu": "cuda"}.get(backend, backend)


def _exported(root: Path, meta: dict) -> tuple:
    functions = {}
    for depth, name in meta["functions"].items():
        try:
            exp = jax.export.deserialize(bytearray((root / name).read_bytes()))
        except Exception as e:  # a damaged artifact: say which file
            raise InputError(root / name, f"cannot deserialize the exported sampler: {e}") from e
        if _platform() not in exp.platforms:
            raise InputError(
                root / name,
                f"exported for {', '.join(exp.platforms)}, this backend is {_platform()}",
            )
        functions[int(depth)] = exp
    if meta["kind"] != fmt.ModelKind.DIFFUSION:

        def logits(params):
            return lambda image, depth: functions[depth].call(params, image)

        return None, logits

    def chain(params):
        def run(image, x_t, key, ts, ts_next, eta, ancestral, depth: int):
            return functions[depth].call(
                params,
                image,
                x_t,
                jax.random.key_data(key),
                jnp.asarray(ts, jnp.int32),
                jnp.asarray(ts_next, jnp.int32),
                jnp.asarray(eta, jnp.float32),
                jnp.asarray(ancestral, jnp.bool_),
            )

        return run

    return chain, None


def _unet(meta: dict, conv_impl: str):
    """The flax model of the metadata's `model` section (imports flax)."""
    from msseg.models.unet import MultiscaleUNet, UNetConfig

    m = {**meta["model"], "conv_impl": conv_impl, "remat": False}
    return MultiscaleUNet(files.from_json(UNetConfig, m))


def _local(meta: dict, schedule, conv_impl: str) -> tuple:
    model = _unet(meta, conv_impl)
    if meta["kind"] != fmt.ModelKind.DIFFUSION:

        def logits(params):
            def run(image, depth: int):
                return model.apply(params, image, entry_depth=depth)[0].astype(jnp.float32)

            return run

        return None, logits
    d = meta["diffusion"]
    target = sch.Target(d["target"])
    scale = d["signal_scale"]
    return (
        lambda params: seg.model_chain(model, params, schedule, target, d["clip_x0"], scale),
        None,
    )


def _local_available() -> bool:
    try:
        import msseg.models.unet  # noqa: F401

        return True
    except ImportError:
        return False


def load_model(path: str | Path, route: str = "auto", conv_impl: str = "auto") -> LoadedModel:
    """Checks (checksums, format, jax version) and loads the model directory at `path`."""
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    route = Route(route)
    root = Path(path)
    meta = fmt.verify(root)
    if route == Route.AUTO:
        route = Route.LOCAL if _local_available() else Route.EXPORTED
    if route == Route.EXPORTED:
        try:
            fmt.check_jax_version(meta["versions"]["jax"], jax.__version__)
        except InputError as e:
            raise InputError(root, str(e)) from None
        prng = str(jax.random.key_impl(jax.random.key(0)))
        if meta.get("prng_impl") != prng:
            raise InputError(root, f"exported with PRNG {meta.get('prng_impl')}, jax uses {prng}")
    protocol = labels_lib.Protocol.from_json(json.loads((root / fmt.LABELS).read_text()))
    params = jax.tree.map(jnp.asarray, fmt.load_params(root / fmt.PARAMS))
    check_consistency(root, meta, protocol, params)
    return _loaded(root, meta, protocol, params, route, conv_impl)


def _loaded(root: Path, meta: dict, protocol, params, route: Route, conv_impl: str) -> LoadedModel:
    """The LoadedModel of a model's facts (metadata.json, or `model_facts` in memory)."""
    d = meta.get("diffusion")
    schedule = sch.make_schedule(d["schedule"], d["num_timesteps"]) if d else None
    if route == Route.EXPORTED:
        chain, logits = _exported(root, meta)
    else:
        chain, logits = _local(meta, schedule, conv_impl)
    return LoadedModel(
        path=root,
        metadata=meta,
        protocol=protocol,
        preprocess=files.from_json(PreprocessConfig, meta["preprocess"]),
        patch=tuple(int(p) for p in meta["patch_size"]),
        num_classes=int(meta["model"]["num_classes"]),
        num_depths=len(meta["model"]["channels"]),
        entry_depths=tuple(int(e) for e in meta["entry_depths"]),
        schedule=schedule,
        sampler_defaults=dict(meta["sampler"]),
        route=route,
        params=params,
        chain=chain,
        logits=logits,
    )


def check_consistency(root: Path, meta: dict, protocol: labels_lib.Protocol, params) -> None:
    """Raises InputError (naming the model directory) unless the facts inference relies on
    agree with each other and with the params' shapes: the class count, the protocol's
    leaves, every head's outputs, the first convolution's inputs (image channels, plus the
    mask's for diffusion models), a stem for every entry depth, the patch and the spacing."""
    problems = []
    try:
        m = meta["model"]
        k, depths = int(m["num_classes"]), len(m["channels"])
        image_channels = int(m["image_channels"])
        diffusion = meta["kind"] == fmt.ModelKind.DIFFUSION
        tree = params["params"]
        if protocol.num_leaves != k:
            problems.append(f"labels.json has {protocol.num_leaves} leaves, metadata {k} classes")
        for d in range(depths):
            head = tree.get(f"head{d}", {}).get("kernel")
            if head is None or head.shape[-1] != k:
                shape = None if head is None else tuple(head.shape)
                problems.append(f"head{d} kernel {shape} does not predict {k} classes")
        stem = tree.get("stem0", {}).get("kernel")
        want = image_channels + (k if diffusion else 0)
        if stem is None or stem.shape[-2] != want:
            shape = None if stem is None else tuple(stem.shape)
            problems.append(f"stem0 kernel {shape} does not take {want} input channels")
        for d in meta["entry_depths"]:
            if f"stem{int(d)}" not in tree:
                problems.append(f"no stem{int(d)} parameters for entry depth {d}")
        patch = [int(p) for p in meta["patch_size"]]
        if len(patch) != 3 or any(p < 1 or p % 2 ** (depths - 1) for p in patch):
            problems.append(f"patch {patch} is not a multiple of 2^{depths - 1} per axis")
        spacing = [float(v) for v in meta["preprocess"]["spacing"]]
        if len(spacing) != 3 or not all(np.isfinite(v) and v > 0 for v in spacing):
            problems.append(f"spacing {spacing} is not three positive numbers")
        if diffusion != bool(meta.get("diffusion")) or diffusion != bool(m["diffusion"]):
            problems.append(f"kind {meta['kind']!r} disagrees with the diffusion settings")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        problems.append(f"incomplete metadata or params ({type(e).__name__}: {e})")
    if problems:
        raise InputError(root, "inconsistent model directory: " + "; ".join(problems))


def sampler_config(model: LoadedModel, **overrides) -> seg.SamplerConfig:
    """The model's default sampler settings with `overrides` (None values ignored)."""
    cfg = dict(model.sampler_defaults)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return seg.SamplerConfig(**cfg)


def check_depths(model: LoadedModel, cfg: seg.SamplerConfig, depth: int) -> None:
    """Raises InputError unless the model was trained to enter at every depth the sampler
    needs at entry depth `depth`."""
    c = cfg.coarse_depth if model.diffusion and cfg.kind == seg.SamplerKind.MULTISCALE else 0
    missing = [d for d in range(depth, depth + c + 1) if d not in model.entry_depths]
    if missing:
        what = f"the {cfg.kind} sampler" if model.diffusion else "the segmenter"
        raise InputError(
            model.path,
            f"{what} needs entry depths {missing}, this model was trained to enter at "
            f"{list(model.entry_depths)}",
        )


def segment_batch(model: LoadedModel, cfg: seg.SamplerConfig, depth: int = 0):
    """A jitted (params, images [B, X, Y, Z, C] at `depth`, key) → `seg.fuse` dict (probs
    [B, .., K], labels, entropy, variance), compiled once per batch shape."""
    check_depths(model, cfg, depth)
    if model.diffusion:

        def run(params, images, key):
            masks = seg.ensemble_masks(
                model.chain(params),
                images,
                key,
                model.schedule,
                cfg,
                model.num_classes,
                model.num_depths,
                depth,
                model.signal_scale,
            )
            return seg.fuse(masks, cfg.fusion, model.protocol.level_tables())

    else:

        def run(params, images, key):
            del key
            return seg.from_logits(
                model.logits(params)(images, depth), model.protocol.level_tables()
            )

    return jax.jit(run)


def in_memory(
    facts: dict[str, Any], protocol: labels_lib.Protocol, params, conv_impl: str = "auto"
) -> LoadedModel:
    """A model of a run's facts (`msseg.train.setup.model_facts`: what its metadata.json would
    hold), its protocol and `params`, on the local route (no model directory): what
    training-time validation and the benchmarks segment with."""
    return _loaded(Path("<in memory>"), facts, protocol, params, Route.LOCAL, conv_impl)


def open_model(
    path: str | Path, route: str = "auto", conv_impl: str = "auto", **sampler
) -> tuple[LoadedModel, seg.SamplerConfig]:
    """`load_model` plus its `sampler_config` with the given overrides (the tools' entry).

    An override the chosen sampler would ignore is refused (ValueError naming the flag):
    any sampler setting for a deterministic model, `steps` for samplers other than ddim
    (ddpm runs every timestep; multiscale and anchored have coarse_steps/refine_steps),
    `eta` for ddpm (always ancestral)."""
    model = load_model(path, route=route, conv_impl=conv_impl)
    cfg = sampler_config(model, **sampler)
    given = [k for k, v in sampler.items() if v is not None]
    if not model.diffusion and given:
        flags = ", ".join(f"--{'sampler' if k == 'kind' else k}" for k in given)
        raise ValueError(
            f"{model.path} is a deterministic model (no sampler): {flags} do not apply"
        )
    if "steps" in given and cfg.kind not in STEP_SAMPLERS:
        raise ValueError(
            f"--steps sets the ddim and dpmpp2m samplers' steps; the {cfg.kind} sampler does "
            "not use it" + (" (it runs every timestep)" if cfg.kind == seg.SamplerKind.DDPM else "")
        )
    if "eta" in given and cfg.kind == seg.SamplerKind.DDPM:
        raise ValueError("--eta applies to DDIM chains; the ddpm sampler is always ancestral")
    if "eta" in given and cfg.kind == seg.SamplerKind.DPMPP2M:
        raise ValueError("--eta applies to DDIM chains; the dpmpp2m solver is deterministic")
    return model, cfg
