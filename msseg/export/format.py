"""The model directory format: file names, params as .npz, checksums, version checks.

A model directory holds

- `sampler.jaxexport`: the sampling chain of the model entered at depth 0, exported with
  jax.export (portable XLA only, symbolic batch, for cpu and cuda). Diffusion models:
  (params, image [b, X, Y, Z, C], x_t [b, X, Y, Z, K], key_data uint32[2], ts int32[s],
  ts_next int32[s], eta f32[], ancestral bool[]) → x0 [b, X, Y, Z, K] float32, i.e.
  `msseg.diffusion.samplers.sample_chain` of the denoiser, any number of steps, DDPM or
  DDIM; deterministic models: (params, image) → logits [b, X, Y, Z, K].
- `sampler_depth<d>.jaxexport`: the same entered at depth d (image at 2^-d resolution),
  for each other depth the model was trained to enter at (the multiscale sampler's
  coarse chains, low-resolution inputs).
- `params.npz`: the EMA parameters, keys = '/'-joined tree paths.
- `config.json` (the training run's config), `labels.json` (the label protocol),
  `metadata.json`: format version, versions of jax/jaxlib/flax/msseg, step, validation
  metrics, what sample.py needs (patch, spacing, preprocessing, schedule, sampler
  defaults) and the sha256 of every other file.

Nothing here imports flax, optax, orbax or grain.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from msseg.data.preprocess import sha256_file
from msseg.errors import InputError

FORMAT_VERSION = 1
METADATA = "metadata.json"
CONFIG = "config.json"
LABELS = "labels.json"
PARAMS = "params.npz"


def function_file(depth: int) -> str:
    """The artifact of the chain entered at `depth`."""
    return "sampler.jaxexport" if depth == 0 else f"sampler_depth{depth}.jaxexport"


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict of arrays → {'a/b/c': array}."""
    flat = {}
    for key, value in tree.items():
        if "/" in str(key):
            raise ValueError(f"parameter name {key!r} contains '/'")
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, path))
        else:
            flat[path] = np.asarray(value)
    return flat


def unflatten_params(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """{'a/b/c': array} → nested dict (the inverse of `flatten_params`)."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def save_params(path: str | os.PathLike, tree: Mapping[str, Any]) -> None:
    np.savez(path, **flatten_params(tree))


def load_params(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return unflatten_params({k: f[k] for k in f.files})
    except (OSError, ValueError, EOFError) as e:
        raise InputError(path, f"cannot read the params: {e}") from e


def _version(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def check_jax_version(exported_with: str, running: str) -> None:
    """A model exported with jax X loads with jax >= X of the same major version (jax.export
    keeps ~6 months of backward compatibility: re-export from the checkpoint after that)."""
    old, new = _version(exported_with), _version(running)
    if new < old:
        raise InputError(
            None,
            f"the model was exported with jax {exported_with}, this is jax {running}: "
            f"install jax>={exported_with} or re-export the model with this jax",
        )
    if new[0] != old[0]:
        raise InputError(
            None,
            f"the model was exported with jax {exported_with}, this is jax {running} (another "
            "major version): re-export it from its checkpoint with this jax",
        )


def verify(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Reads metadata.json and checks the format version and every file's sha256."""
    root = Path(model_dir)
    meta_path = root / METADATA
    if not meta_path.is_file():
        raise InputError(root, f"not a model directory (no {METADATA}); make one with export.py")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(meta_path, f"unreadable metadata: {e}") from e
    if meta.get("format") != FORMAT_VERSION:
        raise InputError(
            meta_path,
            f"model format {meta.get('format')!r}, this msseg reads format {FORMAT_VERSION}",
        )
    files = meta.get("files") or {}
    required = {PARAMS, CONFIG, LABELS, *meta.get("functions", {}).values()}
    if not meta.get("functions") or required - set(files):
        raise InputError(meta_path, f"incomplete metadata: files {sorted(required - set(files))}")
    for name, digest in files.items():
        path = root / name
        if not path.is_file():
            raise InputError(path, "missing from the model directory")
        if sha256_file(path) != digest:
            raise InputError(path, "checksum mismatch (the file was changed or truncated)")
    return meta


def write_directory(output: str | os.PathLike, write_files) -> Path:
    """Writes a model directory atomically: `write_files(tmp_dir) -> metadata dict` fills a
    temporary sibling folder, the sha256 of every file goes into metadata.json, then the
    folder replaces `output` (an existing model there survives any failure before that)."""
    out = Path(output).absolute()
    if out.exists() and not (
        out.is_dir() and (not any(out.iterdir()) or (out / METADATA).is_file())
    ):
        raise InputError(out, "exists and is not a model directory: refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    old = None
    try:
        meta = dict(write_files(tmp))
        meta["files"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / METADATA).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None and not out.exists():
            os.replace(old, out)  # put the previous model back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out
