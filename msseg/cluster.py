"""Processes of one run (jax.distributed) for the command-line tools: the flags tools/train.py,
sample.py and evaluate.py share, starting the distributed runtime, each process's share of a
list of inputs, and a barrier.

Multi-host: pass --coordinator_address=HOST:PORT --num_processes=N --process_id=I on every
host, or run under a cluster that jax.distributed detects by itself (SLURM, Open MPI, TPU
pods) with --distributed=on. Needs jax and absl only (the lean sampling install).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from absl import flags

T = TypeVar("T")


def define_flags() -> None:
    """Defines --distributed, --coordinator_address, --num_processes and --process_id."""
    flags.DEFINE_enum(
        "distributed",
        "auto",
        ["auto", "on", "off"],
        "jax.distributed: auto = when --coordinator_address is given; on = also from the "
        "cluster's environment (SLURM, Open MPI, TPU pods).",
    )
    flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0.")
    flags.DEFINE_integer("num_processes", None, "Number of processes.")
    flags.DEFINE_integer("process_id", None, "This process's index.")


def initialize(values: flags.FlagValues) -> None:
    """Starts jax.distributed as the flags of `define_flags` ask (not at all by default)."""
    if values.distributed == "off":
        return
    if values.coordinator_address or values.distributed == "on":
        import jax

        jax.distributed.initialize(
            coordinator_address=values.coordinator_address,
            num_processes=values.num_processes,
            process_id=values.process_id,
        )


def share(items: Sequence[T]) -> list[T]:
    """This process's share of `items` (the same sorted list on every process): every
    process_count-th item from its index, so each item goes to exactly one process and the
    shares differ in length by at most one."""
    import jax

    return list(items[jax.process_index() :: jax.process_count()])


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (nothing with one process)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def all_ok(ok: bool) -> bool:
    """Whether every process reports `ok`; a barrier for all of them. A process that
    failed passes False instead of raising before the barrier, so no process waits for one
    that is gone: each raises its own error, or learns that another process failed."""
    import jax

    if jax.process_count() == 1:
        return ok
    import numpy as np
    from jax.experimental import multihost_utils

    flags_ = multihost_utils.process_allgather(np.asarray([ok], np.int32))
    return bool(np.all(flags_))


def is_main() -> bool:
    """Whether this is process 0 (the one that writes shared files)."""
    import jax

    return jax.process_index() == 0
