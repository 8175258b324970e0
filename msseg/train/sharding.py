"""The device mesh (`data` x `space`), shardings, and `shard_batch` for process-local data.

`data` splits the batch; `space` splits the first spatial axis of every volume (GSPMD spatial
partitioning: XLA inserts the halo exchanges of the convolutions), for volumes too large for
one device. Parameters and optimiser state are replicated. No pmap anywhere.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_SPEC = P("data", "space")


def make_mesh(data: int = -1, space: int = 1, devices=None) -> Mesh:
    """A ("data", "space") mesh over `devices` (default: all, across processes).

    data=-1 takes every device that `space` leaves; a smaller data x space uses the first
    devices only (e.g. a batch of 2 on a host with 8).
    """
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    if space < 1 or n % space:
        raise ValueError(f"mesh_space={space} must divide the {n} devices")
    if data == -1:
        data = n // space
    if data < 1 or data * space > n:
        raise ValueError(f"mesh {data} x {space} needs more than the {n} devices")
    devices = devices[: data * space]
    grid = np.asarray(devices, dtype=object).reshape(data, space)
    return Mesh(grid, ("data", "space"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """[B, X, ...] arrays: batch over `data`, X over `space`."""
    return NamedSharding(mesh, BATCH_SPEC)


def check_batch(local_batch: int, mesh: Mesh) -> None:
    """Each process's batch must split evenly over its share of the data axis."""
    data = mesh.shape["data"]
    per_process = max(data // jax.process_count(), 1)
    if local_batch % per_process:
        raise ValueError(
            f"data.pipeline.batch_size={local_batch} (per process) must divide by the "
            f"{per_process} data-parallel devices of this process"
        )


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Process-local batch arrays → global arrays sharded by `batch_sharding` (the global
    batch is the concatenation of every process's local batch, in process order)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def put_replicated(tree, mesh: Mesh):
    """Identical host values on every process → arrays replicated over the mesh."""
    sharding = replicated(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
    )
