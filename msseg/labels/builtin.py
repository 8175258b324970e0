"""The built-in label protocols, the tree-literal builder behind them, and ``get_protocol``.

Protocols are written below as small nested literals: a leaf is ``(name, code, rgb)``, an
internal node is ``(name, code, rgb | None, children)`` (``None``: the mean colour of its
leaves); leaf order is the depth-first order of the tree unless a protocol gives it.
Left/right mirroring is derived from names: a leaf ``Left-X`` mirrors ``Right-X``; nodes
and named sets mirror to the id whose leaves are the mirrored leaves.
"""

from __future__ import annotations

import colorsys
import dataclasses
import re
from collections.abc import Mapping, Sequence

import numpy as np

from msseg.labels.protocol import _RGB, IGNORE, Protocol


def _mirror_leaves(names: Sequence[str]) -> tuple[int, ...]:
    """Pair ``Left...``/``Right...`` names (any case) whose counterpart exists; others: self."""
    index = {n: i for i, n in enumerate(names)}
    out = []
    for i, n in enumerate(names):
        m = re.match(r"(left|right)(.*)", n, re.IGNORECASE)
        j = i
        if m:
            side, rest = m.groups()
            other = "right" if side.lower() == "left" else "left"
            other = (
                other.upper() if side.isupper() else other.title() if side[0].isupper() else other
            )
            j = index.get(other + rest, i)
        out.append(j)
    return tuple(out)


def _build(
    name: str,
    tree: tuple,
    sets: tuple = (),
    aliases: Mapping[int, str | None] | None = None,
    leaf_order: Sequence[str] | None = None,
) -> Protocol:
    """Build a Protocol from a nested tree literal (see the module docstring).

    ``sets`` holds ``(name, code, rgb | None, leaf names)``; ``aliases`` maps a raw code to
    the name it means, or None for IGNORE; ``leaf_order`` overrides the depth-first order.
    """
    leaves, nodes = [], []  # (name, code, rgb, parent name)

    def walk(item: tuple, parent: str | None) -> None:
        if len(item) == 3:
            leaves.append((*item, parent))
            return
        nodes.append((*item[:3], parent))
        for child in item[3]:
            walk(child, item[0])

    for item in tree:
        walk(item, None)
    if leaf_order is not None:
        by_name = {leaf[0]: leaf for leaf in leaves}
        if sorted(by_name) != sorted(leaf_order):
            raise ValueError(f"protocol {name!r}: leaf_order does not list the leaves")
        leaves = [by_name[n] for n in leaf_order]
    entries = leaves + nodes + [(n, c, rgb, None) for n, c, rgb, _ in sets]
    index = {e[0]: i for i, e in enumerate(entries)}
    protocol = Protocol(
        name=name,
        leaves=tuple(e[0] for e in leaves),
        nodes=tuple(e[0] for e in nodes),
        sets=tuple(s[0] for s in sets),
        parents=tuple(-1 if e[3] is None else index[e[3]] for e in leaves + nodes),
        set_members=tuple(tuple(sorted(index[m] for m in s[3])) for s in sets),
        codes=tuple(e[1] for e in entries),
        rgb=tuple(e[2] or (0, 0, 0) for e in entries),
        leaf_mirror=_mirror_leaves([e[0] for e in leaves]),
        aliases=tuple(
            sorted((raw, IGNORE if t is None else index[t]) for raw, t in (aliases or {}).items())
        ),
    )
    # Ids without a colour get the mean colour of their leaves.
    rows, leaf_rgb = protocol.membership(), np.array(protocol.rgb[: len(leaves)], float)
    rgb = tuple(
        e[2] or tuple(int(v) for v in np.rint(leaf_rgb[rows[i]].mean(0)))
        for i, e in enumerate(entries)
    )
    return dataclasses.replace(protocol, rgb=rgb)


def flat_protocol(name: str, labels: Mapping[int | str, str]) -> Protocol:
    """A one-level tree from an MSD ``dataset.json`` "labels" mapping (raw value -> name).

    Leaves are sorted by raw value; value 0 must be present (background, leaf 0). Keys may
    be strings, as in JSON. No nodes or named sets; Left*/Right* names still mirror.
    """
    items = sorted((int(k), str(v)) for k, v in labels.items())
    if not items or items[0][0] != 0:
        raise ValueError(f"labels for {name!r} need value 0 (background) and no negative values")
    palette = [
        tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1, 0.7, 0.95))
        for i in range(len(items))
    ]
    tree = tuple(
        (n, raw, (0, 0, 0) if raw == 0 else palette[i]) for i, (raw, n) in enumerate(items)
    )
    return _build(name, tree)


# ---------------------------------------------------------------------------------------
# mni-tissue: the embedded MNI152 set (msseg.data.mni152.tissue_labels). Ids equal raw codes.

# fmt: off
_MNI_TREE = (
    ("Background", 0, (0, 0, 0)),
    ("Brain", 7, None, (
        ("CSF", 8, None, (("Left-CSF", 1, (70, 130, 180)), ("Right-CSF", 4, (110, 170, 220)))),
        ("GM", 9, None, (("Left-GM", 2, (205, 62, 78)), ("Right-GM", 5, (230, 120, 60)))),
        ("WM", 10, None, (("Left-WM", 3, (245, 245, 245)), ("Right-WM", 6, (215, 215, 180)))),
    )),
)
# fmt: on

_MNI_TISSUE = _build(
    "mni-tissue",
    _MNI_TREE,
    sets=(
        ("Left-Hemisphere", 11, None, ("Left-CSF", "Left-GM", "Left-WM")),
        ("Right-Hemisphere", 12, None, ("Right-CSF", "Right-GM", "Right-WM")),
    ),
    leaf_order=(
        "Background",
        "Left-CSF",
        "Left-GM",
        "Left-WM",
        "Right-CSF",
        "Right-GM",
        "Right-WM",
    ),
)

# ---------------------------------------------------------------------------------------
# aseg: FreeSurfer's aseg values, the 33-class SynthSeg/FastSurfer set. Leaves keep
# FreeSurfer's raw codes, names (FreeSurfer 7: 10/49 "Left-/Right-Thalamus") and LUT
# colours. Internal nodes and named sets get msseg-specific raw codes 30000..30021 (unused
# by FreeSurferColorLUT.txt), so partial labels can be written into label maps as well.
#
# Aliases: raw codes found in real aseg.mgz files that are not classes here:
#   31 Left-choroid-plexus, 63 Right-choroid-plexus -> Left/Right-Lateral-Ventricle
#       (merged into the ventricle, as SynthSeg does)
#   77 WM-hypointensities, 251..255 CC_Posterior..CC_Anterior -> Cerebral-White-Matter
#       node (a partial label: white matter of either side)
#   30 Left-vessel, 62 Right-vessel, 72 5th-Ventricle, 80 non-WM-hypointensities,
#   85 Optic-Chiasm -> IGNORE (not taught)


def _pair(
    name: str, code: int, left: int, right: int, rgb: _RGB, rgb_r: _RGB | None = None
) -> tuple:
    """A bilateral structure: node ``name`` with leaves ``Left-name`` and ``Right-name``."""
    return (name, code, None, ((f"Left-{name}", left, rgb), (f"Right-{name}", right, rgb_r or rgb)))


# fmt: off
_ASEG_TREE = (
    ("Unknown", 0, (0, 0, 0)),
    ("Brain", 30000, None, (
        ("Cerebrum", 30001, None, (
            _pair("Cerebral-White-Matter", 30002, 2, 41, (245, 245, 245)),
            _pair("Cerebral-Cortex", 30003, 3, 42, (205, 62, 78)),
            ("Deep-Grey-Matter", 30004, None, (
                _pair("Thalamus", 30005, 10, 49, (0, 118, 14)),
                _pair("Caudate", 30006, 11, 50, (122, 186, 220)),
                _pair("Putamen", 30007, 12, 51, (236, 13, 176)),
                _pair("Pallidum", 30008, 13, 52, (12, 48, 255), (13, 48, 255)),
                _pair("Accumbens-area", 30009, 26, 58, (255, 165, 0)),
                _pair("VentralDC", 30010, 28, 60, (165, 42, 42)),
            )),
            ("Limbic", 30011, None, (
                _pair("Hippocampus", 30012, 17, 53, (220, 216, 20)),
                _pair("Amygdala", 30013, 18, 54, (103, 255, 255)),
            )),
        )),
        ("Ventricles-CSF", 30014, None, (
            _pair("Lateral-Ventricle", 30015, 4, 43, (120, 18, 134)),
            _pair("Inf-Lat-Vent", 30016, 5, 44, (196, 58, 250)),
            ("3rd-Ventricle", 14, (204, 182, 142)),
            ("4th-Ventricle", 15, (42, 204, 164)),
            ("CSF", 24, (60, 60, 60)),
        )),
        ("Cerebellum", 30017, None, (
            _pair("Cerebellum-White-Matter", 30018, 7, 46, (220, 248, 164)),
            _pair("Cerebellum-Cortex", 30019, 8, 47, (230, 148, 34)),
        )),
        ("Brain-Stem", 16, (119, 159, 176)),
    )),
)
# fmt: on


def _leaf_names(items: tuple) -> list[str]:
    return [n for it in items for n in ([it[0]] if len(it) == 3 else _leaf_names(it[3]))]


_ASEG_LEAVES = _leaf_names(_ASEG_TREE)
_ASEG = _build(
    "aseg",
    _ASEG_TREE,
    sets=tuple(
        (f"{side}-Hemisphere", code, None, [n for n in _ASEG_LEAVES if n.startswith(f"{side}-")])
        for side, code in (("Left", 30020), ("Right", 30021))
    ),
    aliases={
        31: "Left-Lateral-Ventricle",
        63: "Right-Lateral-Ventricle",
        77: "Cerebral-White-Matter",
        **{cc: "Cerebral-White-Matter" for cc in range(251, 256)},
        **{raw: None for raw in (30, 62, 72, 80, 85)},
    },
)

_PROTOCOLS: dict[str, Protocol] = {"mni-tissue": _MNI_TISSUE, "aseg": _ASEG}
PROTOCOLS: tuple[str, ...] = tuple(_PROTOCOLS)


def get_protocol(name: str) -> Protocol:
    """The built-in protocol ``name`` (one of ``PROTOCOLS``)."""
    if name not in _PROTOCOLS:
        raise ValueError(f"unknown label protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return _PROTOCOLS[name]
