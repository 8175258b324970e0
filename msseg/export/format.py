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
- `labels.json` (the label protocol) and `config.json` (the training run's config, a record
  of how the model was made: inference does not read it).
- `labels_lut.txt` and `labels_itksnap.txt`: the protocol's colour tables (FreeSurfer LUT,
  ITK-SNAP label descriptions), for viewers; checksummed like every file, but optional:
  directories exported before them load all the same (`verify` does not require them).
- `metadata.json`: the format marker (`"format": "msseg-model"`, `"format_version"`),
  versions of jax/jaxlib/flax/msseg, step, validation metrics, the model's facts (`kind`,
  the U-Net's settings, patch, entry depths, preprocessing, diffusion settings, sampler
  defaults: `msseg.train.setup.model_facts`), the sha256 of every other file, and
  `metadata_sha256`, the sha256 of metadata.json's own content without that key. Everything
  inference needs to know about a model comes from here.

The directory is tamper-evident as a whole: `verify` checks metadata.json's own checksum and
every listed file's, so an edited spacing or class count is refused, not silently used.
Only msseg's files are msseg's: `write_directory` replaces a directory only when its
metadata.json carries the marker, and carries over every file it does not list (a NOTES.md
a user added survives a re-export).

Nothing here imports flax, optax, orbax or grain.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from msseg import names
from msseg.errors import InputError
from msseg.files import check_output_dir, sha256_file

FORMAT = "msseg-model"
FORMAT_VERSION = 3


class ModelKind(enum.StrEnum):
    """metadata.json's "kind": what the exported functions compute."""

    DIFFUSION = "diffusion"  # the sampling chain of a denoiser
    DETERMINISTIC = "deterministic"  # the logits of a direct segmenter


METADATA = "metadata.json"
CONFIG = "config.json"
LABELS = "labels.json"
PARAMS = "params.npz"
LABELS_LUT = names.LABELS_LUT  # the colour tables: listed in `files`, not required
LABELS_ITKSNAP = names.LABELS_ITKSNAP


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


def metadata_digest(meta: Mapping[str, Any]) -> str:
    """sha256 of metadata `meta` without its own `metadata_sha256` (canonical JSON)."""
    body = {k: v for k, v in meta.items() if k != "metadata_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _read_metadata(root: Path) -> dict[str, Any]:
    meta_path = root / METADATA
    if not meta_path.is_file():
        raise InputError(root, f"not a model directory (no {METADATA}); make one with export.py")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(meta_path, f"unreadable metadata: {e}") from e
    if not isinstance(meta, dict):
        raise InputError(meta_path, "unreadable metadata: not a JSON object")
    return meta


def _legacy(meta: Mapping[str, Any]) -> bool:
    """A model directory of format 1 (msseg before the marker and the metadata checksum)."""
    return (
        meta.get("format") == 1
        and isinstance(meta.get("files"), dict)
        and isinstance(meta.get("functions"), dict)
        and "msseg" in (meta.get("versions") or {})
    )


def is_model_directory(path: str | os.PathLike) -> bool:
    """Whether `path` holds a metadata.json that msseg wrote (the marker, or format 1)."""
    try:
        meta = _read_metadata(Path(path))
    except InputError:
        return False
    return meta.get("format") == FORMAT or _legacy(meta)


def verify(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Reads metadata.json and checks the marker, the format version, metadata.json's own
    checksum and every listed file's sha256."""
    root = Path(model_dir)
    meta = _read_metadata(root)
    meta_path = root / METADATA
    if _legacy(meta):
        raise InputError(
            root,
            "a model of format 1 (older msseg, its metadata is not checksummed): re-export it "
            "from its training workdir with tools/export.py",
        )
    if meta.get("format") != FORMAT:
        raise InputError(meta_path, f"not an msseg model's metadata (no format {FORMAT!r})")
    version = meta.get("format_version")
    if isinstance(version, int) and 1 < version < FORMAT_VERSION:
        raise InputError(
            root,
            f"a model of format {version} (older msseg): re-export it from its training "
            "workdir with tools/export.py",
        )
    if version != FORMAT_VERSION:
        raise InputError(
            meta_path,
            f"model format version {version!r}, this msseg reads version {FORMAT_VERSION}",
        )
    if meta.get("metadata_sha256") != metadata_digest(meta):
        raise InputError(
            meta_path,
            "checksum mismatch: metadata.json was edited or damaged (it holds the spacing, "
            "patch and classes inference relies on); re-export the model",
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


def _foreign_entries(out: Path) -> list[Path]:
    """What an existing `out` holds besides msseg's files: [] for a missing or empty folder;
    the entries its metadata.json does not list for a model directory; InputError for
    anything else (never replaced)."""
    if not out.exists():
        return []
    if not out.is_dir():
        raise InputError(out, "exists and is not a folder: refusing to replace it")
    entries = sorted(out.iterdir())
    if not entries:
        return []
    if not is_model_directory(out):
        raise InputError(
            out,
            "exists and is not an msseg model directory (no metadata.json written by msseg): "
            "refusing to replace it; choose another --output",
        )
    meta = _read_metadata(out)
    ours = {METADATA, *(meta.get("files") or {})}
    return [p for p in entries if p.name not in ours]


def check_replaceable(output: str | os.PathLike) -> None:
    """Raises InputError unless `write_directory` may write `output`: a folder that can be
    created, an empty folder or an msseg model directory (checked before any export work)."""
    check_output_dir(output)
    _foreign_entries(Path(output).absolute())


def write_directory(output: str | os.PathLike, write_files) -> Path:
    """Writes a model directory atomically: `write_files(tmp_dir) -> metadata dict` fills a
    temporary sibling folder, the sha256 of every file and of the metadata itself go into
    metadata.json, then the folder replaces `output` (an existing model there survives any
    failure before that).

    `output` may be missing, an empty folder or an msseg model directory; anything else is
    refused. Entries of an existing model directory that its metadata does not list (files
    a user added) are copied into the new one, outside the checksums."""
    out = Path(output).absolute()
    check_output_dir(out)
    foreign = _foreign_entries(out)  # refuses what is not ours (see check_replaceable)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = names.temporary(out)
    tmp.mkdir()
    old = None
    try:
        meta = dict(write_files(tmp))
        meta.update(format=FORMAT, format_version=FORMAT_VERSION)
        meta["files"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        meta["metadata_sha256"] = metadata_digest(meta)
        (tmp / METADATA).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        for entry in foreign:
            target = tmp / entry.name
            if target.exists():
                raise InputError(
                    entry, "is not one of the model's files but the new export writes that name"
                )
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, target, symlinks=True)
            else:
                shutil.copy2(entry, target, follow_symlinks=False)
        if out.exists():
            old = names.temporary(out)
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
