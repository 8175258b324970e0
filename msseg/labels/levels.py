"""Tree levels as index tables: each leaf's id at every level, for top-down decoding."""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from msseg.labels.protocol import Protocol


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
