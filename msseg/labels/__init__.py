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

Modules: ``protocol`` (the Protocol type and IGNORE), ``levels`` (tree levels as index
tables), ``lut`` (colour table files) and ``builtin`` (the built-in protocols).
"""

from msseg.labels.builtin import PROTOCOLS, flat_protocol, get_protocol
from msseg.labels.levels import LevelTables
from msseg.labels.protocol import IGNORE, Protocol

__all__ = ["IGNORE", "PROTOCOLS", "LevelTables", "Protocol", "flat_protocol", "get_protocol"]
