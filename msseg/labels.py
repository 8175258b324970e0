"""Label protocols as trees: leaves are the model's classes; nodes and named sets are leaf unions.

Id space (the contract the data, loss, export and evaluation modules rely on), for a
protocol with K leaves, N internal tree nodes and S named sets:

- ``0 .. K-1``: leaves, the model's classes; leaf 0 is background (raw code 0).
- ``K .. K+N-1``: internal tree nodes, in depth-first pre-order.
- ``K+N .. K+N+S-1``: named sets, unions of leaves that are not tree nodes
  (e.g. the left hemisphere).
- ``IGNORE = 255``: unlabelled / unknown, not taught.

All ids are < 255, so id maps fit uint8. A voxel labelled with a node or named set is a
partial label: it says "one of these leaves". Every id also has a raw code (the value
written in label files), so a label map may carry partial labels as raw codes too.

Protocols are written below as small nested literals: a leaf is ``(name, code, rgb)``, an
internal node is ``(name, code, rgb | None, children)`` (``None``: the mean colour of its
leaves); leaf order is the depth-first order of the tree unless a protocol gives it.
Left/right mirroring is derived from names: a leaf ``Left-X`` mirrors ``Right-X``; nodes
and named sets mirror to the id whose leaves are the mirrored leaves.
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from msseg.errors import InputError

IGNORE: int = 255

_RGB = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A label tree plus named sets, raw codes, colours and aliases.

    Attributes:
      name: protocol name, e.g. ``"aseg"``.
      leaves: leaf names; index = leaf id (the model's class index).
      nodes: internal node names; node ``i`` has id ``K + i``.
      sets: named-set names; set ``j`` has id ``K + N + j``.
      parents: ``[K + N]`` parent id of each leaf and node; -1 for children of the root.
      set_members: per named set, its leaf ids (sorted).
      codes: ``[num_ids]`` raw code of each id (unique; leaf 0 has code 0).
      rgb: ``[num_ids]`` RGB colour of each id.
      leaf_mirror: ``[K]`` the left/right mirror of each leaf (itself for midline leaves).
      aliases: ``(raw, id)`` pairs: extra raw codes accepted by ``encode`` (id may be IGNORE).
    """

    name: str
    leaves: tuple[str, ...]
    nodes: tuple[str, ...]
    sets: tuple[str, ...]
    parents: tuple[int, ...]
    set_members: tuple[tuple[int, ...], ...]
    codes: tuple[int, ...]
    rgb: tuple[_RGB, ...]
    leaf_mirror: tuple[int, ...]
    aliases: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        k, n = self.num_leaves, len(self.nodes)
        where = f"protocol {self.name!r}"
        if k < 1 or self.num_ids >= IGNORE:
            raise ValueError(f"{where}: needs 1..254 ids, got {self.num_ids}")
        lengths = (len(self.parents), len(self.set_members), len(self.codes), len(self.rgb))
        if lengths != (k + n, len(self.sets), self.num_ids, self.num_ids):
            raise ValueError(f"{where}: field lengths {lengths} do not match the names")
        if len(self.leaf_mirror) != k:
            raise ValueError(f"{where}: leaf_mirror needs {k} entries")
        if len(set(self.id_names())) != self.num_ids:
            raise ValueError(f"{where}: names are not unique")
        if len(set(self.codes)) != self.num_ids or self.codes[0] != 0:
            raise ValueError(f"{where}: raw codes must be unique and leaf 0 must have code 0")
        if any(not -(2**31) <= c < 2**31 for c in self.codes):
            raise ValueError(f"{where}: raw codes must fit int32")
        if any(p != -1 and not k <= p < k + n for p in self.parents):
            raise ValueError(f"{where}: a parent is neither -1 nor an internal node")
        raws = [raw for raw, _ in self.aliases]
        if len(set(raws)) != len(raws) or set(raws) & set(self.codes):
            raise ValueError(f"{where}: alias codes must be unique and not raw codes")
        if any(not (0 <= i < self.num_ids or i == IGNORE) for _, i in self.aliases):
            raise ValueError(f"{where}: an alias targets an unknown id")
        if any(not 0 <= c <= 255 for rgb in self.rgb for c in rgb):
            raise ValueError(f"{where}: colours must be 0..255")
        mirror = self.leaf_mirror
        if any(not 0 <= j < k or mirror[j] != i for i, j in enumerate(mirror)):
            raise ValueError(f"{where}: leaf_mirror is not an involution on the leaves")
        self._depths()  # checks the tree is acyclic
        rows = self.membership()
        if not rows.any(axis=1).all() or len({r.tobytes() for r in rows}) != self.num_ids:
            raise ValueError(f"{where}: every id must name a distinct non-empty set of leaves")
        self.lr_swap()  # checks every node and named set has a mirror

    @property
    def num_leaves(self) -> int:
        """K, the number of model classes."""
        return len(self.leaves)

    @property
    def num_ids(self) -> int:
        """K + internal nodes + named sets."""
        return len(self.leaves) + len(self.nodes) + len(self.sets)

    def id_names(self) -> tuple[str, ...]:
        """Name per id: leaves, then nodes, then named sets."""
        return self.leaves + self.nodes + self.sets

    def id_of(self, name: str) -> int:
        """The id of a leaf, node or named set by name (KeyError if absent)."""
        names = self.id_names()
        if name not in names:
            raise KeyError(f"{name!r} is not in protocol {self.name!r}")
        return names.index(name)

    def _depths(self) -> list[int]:
        """Depth of each leaf and node below the root (children of the root: 0)."""
        depths = []
        for i in range(len(self.parents)):
            d, p = 0, self.parents[i]
            while p != -1:
                d, p = d + 1, self.parents[p]
                if d > len(self.parents):
                    raise ValueError(f"protocol {self.name!r}: the parent links form a cycle")
            depths.append(d)
        return depths

    def membership(self) -> np.ndarray:
        """``[num_ids, K]`` bool: the leaves under each id (leaf rows are one-hot)."""
        k = self.num_leaves
        rows = np.zeros((self.num_ids, k), bool)
        for leaf in range(k):
            i = leaf
            while i != -1:
                rows[i, leaf] = True
                i = self.parents[i]
        for j, members in enumerate(self.set_members):
            rows[k + len(self.nodes) + j, list(members)] = True
        return rows

    def levels(self) -> list[list[int]]:
        """Tree levels as partitions of the leaves, coarse to fine.

        Level d holds the ids at depth d (level 0: children of the root) plus the leaves
        shallower than d, carried down unchanged; the last level is all leaves. Ids are
        sorted within a level.
        """
        depths = self._depths()
        k = self.num_leaves
        deepest = max(depths[:k])
        return [
            [i for i, di in enumerate(depths) if di == d or (i < k and di < d)]
            for d in range(deepest + 1)
        ]

    def level_of_leaves(self) -> np.ndarray:
        """``[L, K]`` uint8: row l maps each leaf to its ancestor-or-self in ``levels()[l]``.

        ``level_of_leaves()[l][leaf_ids]`` turns a leaf map into the ids of level l.
        """
        return self.level_tables().level_ids()

    def level_tables(self) -> LevelTables:
        """The tree levels as index tables for top-down decoding (cached per protocol)."""
        return _level_tables(self)

    def relations(self) -> tuple[np.ndarray, np.ndarray]:
        """``(inside, outside)``: ``[num_ids, 256]`` bool tables indexed ``[label, voxel id]``.

        A voxel labelled with id v is *inside* label u when all of v's leaves belong to u, and
        *outside* when none does; otherwise (a partial label straddling u, or IGNORE and unused
        ids) it says nothing about u. Losses, validation and evaluation score u over the
        voxels inside or outside it.
        """
        rows = self.membership()  # [num_ids, K]
        leaves_of = np.zeros((256, self.num_leaves), bool)
        leaves_of[: self.num_ids] = rows
        known = leaves_of.any(1)
        inside = ~(leaves_of[None] & ~rows[:, None]).any(2) & known[None]
        outside = ~(leaves_of[None] & rows[:, None]).any(2) & known[None]
        return inside, outside

    def parent(self) -> np.ndarray:
        """``[num_ids]`` int: parent id in the tree; -1 for children of the root and named sets."""
        return np.array(self.parents + (-1,) * len(self.sets), np.int64)

    def lr_swap(self) -> np.ndarray:
        """``[256]`` uint8 lookup table on ids mirroring left and right.

        Left leaves/nodes/sets map to their right counterparts and back; midline ids,
        unused ids and IGNORE map to themselves. Use as ``lut[ids]`` after a L/R flip.
        """
        rows = self.membership()
        by_row = {r.tobytes(): i for i, r in enumerate(rows)}
        lut = np.arange(256, dtype=np.uint8)
        mirror = np.array(self.leaf_mirror)
        for i, r in enumerate(rows):
            j = by_row.get(r[mirror].tobytes())
            if j is None:
                raise ValueError(f"protocol {self.name!r}: {self.id_names()[i]!r} has no mirror")
            lut[i] = j
        return lut

    def raw_codes(self) -> np.ndarray:
        """``[num_ids]`` int64 raw code per id."""
        return np.array(self.codes, np.int64)

    def colours(self) -> np.ndarray:
        """``[num_ids, 3]`` uint8 RGB colour per id."""
        return np.array(self.rgb, np.uint8).reshape(self.num_ids, 3)

    def encode(
        self,
        raw: np.ndarray,
        path: str | os.PathLike | None = None,
        codes: Mapping[int, int] | None = None,
    ) -> np.ndarray:
        """Raw label values (any shape, ints or integral floats) -> uint8 ids, same shape.

        Aliases map to their target id (or IGNORE). ``codes`` (raw value -> id or IGNORE)
        replaces the protocol's own raw codes and aliases: a dataset that writes its own
        values (e.g. 1/2/3 for CSF/GM/WM without sides) declares them this way. Values outside
        the table raise ``InputError(path, ...)`` listing (up to 10 of) them.
        """
        raw = np.asarray(raw)
        if raw.dtype.kind == "f":
            if not np.array_equal(raw, np.round(raw)):  # also rejects NaN
                raise InputError(path, "label values are not integers")
            raw = raw.astype(np.int64)
        elif raw.dtype.kind not in "iub":
            raise InputError(path, f"label array has dtype {raw.dtype}, expected integers")
        if codes is None:
            table = dict(zip(self.codes, range(self.num_ids), strict=True)) | dict(self.aliases)
        else:
            table = {int(c): int(i) for c, i in codes.items()}
            bad = [i for i in table.values() if not (0 <= i < self.num_ids or i == IGNORE)]
            if bad:
                raise ValueError(f"codes map to ids not in protocol {self.name!r}: {bad[:10]}")
        keys = np.array(sorted(table), np.int64)
        ids = np.array([table[c] for c in keys.tolist()], np.uint8)
        pos = np.clip(np.searchsorted(keys, raw), 0, len(keys) - 1)
        found = keys[pos] == raw
        if not found.all():
            unknown = np.unique(raw[~found]).tolist()
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise InputError(
                path, f"label values not in protocol {self.name!r}: {unknown[:10]}{more}"
            )
        return ids[pos]

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """uint8 ids (any shape) -> int32 raw codes; IGNORE -> 0 (the background code)."""
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iub":
            raise ValueError(f"ids must be integers, got dtype {ids.dtype}")
        valid = ((ids >= 0) & (ids < self.num_ids)) | (ids == IGNORE)
        if not valid.all():
            bad = np.unique(ids[~valid]).tolist()[:10]
            raise ValueError(f"ids not in protocol {self.name!r}: {bad}")
        table = np.zeros(256, np.int32)
        table[: self.num_ids] = self.codes
        return table[ids.astype(np.int64)]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (lists and scalars) that ``from_json`` turns back into ``self``."""
        return {f.name: _lists(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Protocol:
        """Inverse of ``to_json`` (also accepts the dict after a json.dumps/loads trip)."""
        return cls(**{f.name: _tuples(d[f.name]) for f in dataclasses.fields(cls)})

    def _rows(self) -> list[tuple[int, str, _RGB]]:
        """(raw code, name without spaces, rgb) per id, sorted by raw code."""
        names = [re.sub(r"\s+", "-", n.strip()) for n in self.id_names()]
        return sorted(zip(self.codes, names, self.rgb, strict=True))

    def write_freesurfer_lut(self, path: str | os.PathLike) -> None:
        """Write a FreeSurferColorLUT.txt-style table: ``raw Name R G B A`` per id (A = 0)."""
        lines = [
            f"# msseg label protocol {self.name!r}: {self.num_leaves} leaves (model classes),",
            f"# {len(self.nodes)} tree nodes and {len(self.sets)} named sets.",
            "",
            f"#{'No.':<7} {'Label Name:':<40} {'R':>3} {'G':>3} {'B':>3} {'A':>3}",
            "",
        ]
        lines += [
            f"{c:<8d} {n:<40} {r:>3} {g:>3} {b:>3} {0:>3}" for c, n, (r, g, b) in self._rows()
        ]
        _write(path, lines)

    def write_itksnap_labels(self, path: str | os.PathLike) -> None:
        """Write an ITK-SNAP label description file; IDX is the raw code of each id."""
        lines = list(_ITKSNAP_HEADER)
        for c, n, (r, g, b) in self._rows():
            on = int(c != 0)
            lines.append(f'{c:5d} {r:5d} {g:4d} {b:4d} {on:8d} {on:2d} {on:2d}    "{n}"')
        _write(path, lines)


@dataclasses.dataclass(frozen=True, eq=False)
class LevelTables:
    """A protocol's tree levels (``Protocol.levels()``, coarse to fine) as index tables.

    Positions are indices into a level's sorted id list. Hashes by identity, so it can be a
    static argument of ``jax.jit`` (``Protocol.level_tables()`` returns one read-only object
    per protocol).

    Attributes:
      ids: per level l, ``[n_l]`` int32: its ids (``levels()[l]``).
      leaf_index: ``[L, K]`` int32: the position in level l of each leaf's ancestor-or-self.
      parent_index: per level l, ``[n_l]`` int32: the position in level l-1 of each id's
        ancestor-or-self (its parent, or itself for a carried-down leaf); zeros at level 0.
        The children of position j of level l-1 are the ids of level l with
        ``parent_index[l] == j``.
    """

    ids: tuple[np.ndarray, ...]
    leaf_index: np.ndarray
    parent_index: tuple[np.ndarray, ...]

    @property
    def num_levels(self) -> int:
        return len(self.ids)

    def level_ids(self) -> np.ndarray:
        """``[L, K]`` uint8: the id in level l of each leaf (``Protocol.level_of_leaves``)."""
        rows = [ids[index] for ids, index in zip(self.ids, self.leaf_index, strict=True)]
        return np.stack(rows).astype(np.uint8)

    def leaf_sums(self, level: int) -> np.ndarray:
        """``[K, n_l]`` float32 0/1: ``probs @ leaf_sums(l)`` gives level l's marginals."""
        return np.eye(len(self.ids[level]), dtype=np.float32)[self.leaf_index[level]]

    def labels(self, probs: np.ndarray) -> np.ndarray:
        """Leaf probabilities ``[..., K]`` → ``[...]`` int64 leaf ids, decided top-down (numpy).

        At each level, among the children of the position chosen at the level above, take
        the one with the largest marginal (sum of its leaves' probabilities); ties go to
        the lowest id. One level (a flat protocol): the argmax.
        """
        probs = np.asarray(probs)
        choice = None
        for level in range(self.num_levels):
            last = level == self.num_levels - 1
            m = probs if last else probs @ self.leaf_sums(level).astype(probs.dtype)
            if choice is not None:
                m = np.where(self.parent_index[level] == choice[..., None], m, -np.inf)
            choice = m.argmax(-1)
        return choice


def _level_tables_uncached(protocol: Protocol) -> LevelTables:
    levels = protocol.levels()
    rows = protocol.membership()
    k = protocol.num_leaves
    leaf_index = np.zeros((len(levels), k), np.int32)
    for level, ids in enumerate(levels):
        for pos, i in enumerate(ids):
            leaf_index[level, rows[i]] = pos
    parent_index = [np.zeros(len(levels[0]), np.int32)]
    for level in range(1, len(levels)):
        first_leaf = rows[levels[level]].argmax(1)  # any leaf of an id names its ancestor
        parent_index.append(leaf_index[level - 1, first_leaf].astype(np.int32))
    ids = [np.array(level, np.int32) for level in levels]
    for table in [*ids, leaf_index, *parent_index]:
        table.flags.writeable = False  # shared by every caller of the cache
    return LevelTables(tuple(ids), leaf_index, tuple(parent_index))


_level_tables = functools.cache(_level_tables_uncached)


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


def _lists(x: Any) -> Any:
    return [_lists(v) for v in x] if isinstance(x, tuple | list) else x


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, tuple | list) else x


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
