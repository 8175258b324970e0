"""The Protocol type: a label tree plus named sets, raw codes, colours and aliases.

The id space is described in ``msseg.labels``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from msseg.errors import InputError
from msseg.labels import lut as lut_files
from msseg.labels.levels import LevelTables, _level_tables

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

    def write_freesurfer_lut(self, path: str | os.PathLike) -> None:
        """Write a FreeSurferColorLUT.txt-style table: ``raw Name R G B A`` per id (A = 0)."""
        lut_files.write_freesurfer_lut(self, path)

    def write_itksnap_labels(self, path: str | os.PathLike) -> None:
        """Write an ITK-SNAP label description file; IDX is the raw code of each id."""
        lut_files.write_itksnap_labels(self, path)


def _lists(x: Any) -> Any:
    return [_lists(v) for v in x] if isinstance(x, tuple | list) else x


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, tuple | list) else x
