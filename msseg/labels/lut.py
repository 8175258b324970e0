"""Colour table files of a protocol: a FreeSurfer colour LUT and ITK-SNAP label descriptions."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from msseg.labels.protocol import _RGB, Protocol

_ITKSNAP_HEADER = (
    "################################################",
    "# ITK-SnAP Label Description File",
    "# File format: ",
    "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
    "# Fields: ",
    "#    IDX:   Zero-based index ",
    "#    -R-:   Red color component (0..255)",
    "#    -G-:   Green color component (0..255)",
    "#    -B-:   Blue color component (0..255)",
    "#    -A-:   Label transparency (0.00 .. 1.00)",
    "#    VIS:   Label visibility (0 or 1)",
    "#    IDX:   Label mesh visibility (0 or 1)",
    "#  LABEL:   Label description ",
    "################################################",
)


def _write(path: str | os.PathLike, lines: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def _rows(protocol: Protocol) -> list[tuple[int, str, _RGB]]:
    """(raw code, name without spaces, rgb) per id, sorted by raw code."""
    names = [re.sub(r"\s+", "-", n.strip()) for n in protocol.id_names()]
    return sorted(zip(protocol.codes, names, protocol.rgb, strict=True))


def write_freesurfer_lut(protocol: Protocol, path: str | os.PathLike) -> None:
    """Write a FreeSurferColorLUT.txt-style table: ``raw Name R G B A`` per id (A = 0)."""
    lines = [
        f"# msseg label protocol {protocol.name!r}: {protocol.num_leaves} leaves (model classes),",
        f"# {len(protocol.nodes)} tree nodes and {len(protocol.sets)} named sets.",
        "",
        f"#{'No.':<7} {'Label Name:':<40} {'R':>3} {'G':>3} {'B':>3} {'A':>3}",
        "",
    ]
    lines += [f"{c:<8d} {n:<40} {r:>3} {g:>3} {b:>3} {0:>3}" for c, n, (r, g, b) in _rows(protocol)]
    _write(path, lines)


def write_itksnap_labels(protocol: Protocol, path: str | os.PathLike) -> None:
    """Write an ITK-SNAP label description file; IDX is the raw code of each id."""
    lines = list(_ITKSNAP_HEADER)
    for c, n, (r, g, b) in _rows(protocol):
        on = int(c != 0)
        lines.append(f'{c:5d} {r:5d} {g:4d} {b:4d} {on:8d} {on:2d} {on:2d}    "{n}"')
    _write(path, lines)
