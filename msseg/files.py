"""File utilities with no dependency beyond the standard library: checksums, atomic writes (the
one helper every writer of msseg uses), JSON records read back into frozen dataclasses, and the
output-folder checks every tool runs before any work."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from msseg import names
from msseg.errors import InputError

PathLike = str | os.PathLike


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path`` (hidden, same suffix:
    `names.temporary`), then rename it over ``path``: a crash leaves the old file or none,
    never half a file."""
    tmp = str(names.temporary(os.path.abspath(path)))
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: PathLike, text: str) -> None:
    """`text` into `path` atomically (`atomic_write`)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: PathLike, obj: Any, indent: int | None = 1) -> None:
    """`obj` as JSON (with a final newline) into `path` atomically."""
    write_text(path, json.dumps(obj, indent=indent) + "\n")


T = TypeVar("T")


def from_json(cls: type[T], record: Mapping[str, Any]) -> T:
    """The frozen dataclass `cls` of a JSON record (its `dataclasses.asdict`): lists become the
    tuples the dataclass holds. An unknown key is a TypeError naming it."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(record) - fields)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {', '.join(map(repr, unknown))}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()})


def check_output_dir(output: PathLike) -> None:
    """Raises InputError naming `output` unless it is a writable folder or can be created as
    one (its nearest existing ancestor is a writable folder). Creates nothing."""
    out = Path(output)
    probe = out.absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe == out.absolute():
        if not probe.is_dir():
            raise InputError(out, "cannot create the output folder: a file of that name exists")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise InputError(out, "cannot write to the output folder: permission denied")
    elif not probe.is_dir():
        raise InputError(out, f"cannot create the output folder: {probe} is not a folder")
    elif not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(out, f"cannot create the output folder: {probe} is not writable")


def check_output_file(path: PathLike) -> None:
    """Raises InputError naming `path` unless a file can be written there: not a folder, and
    its folder exists or can be created (`check_output_dir`). Creates nothing."""
    if os.path.isdir(path):
        raise InputError(path, "is a folder: give a file name")
    check_output_dir(os.path.dirname(os.path.abspath(path)))


def make_output_dir(output: PathLike) -> Path:
    """`output` as a folder, created with its parents if needed; InputError naming it if it
    cannot be created or written to (`check_output_dir`)."""
    out = Path(output)
    check_output_dir(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(out, f"cannot create the output folder: {e.strerror or e}") from None
    return out
