"""orbax checkpoints of the train state, the grain iterator position and the config, together.

Layout: `<workdir>/checkpoints/<step>/{state, data_iter, config}`. Saves are asynchronous;
orbax writes each into a temporary folder and renames it when complete, so a run killed
mid-save leaves the previous checkpoint restorable (the partial one is ignored and cleaned
up). The latest checkpoint is always kept (resume), plus the `keep_best` best by validation
Dice; checkpoints without a Dice are dropped once a newer one exists.
"""

from __future__ import annotations

import os
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as cm

METRIC = "val_dice"


class Checkpointer:
    def __init__(self, workdir: str | os.PathLike, keep_best: int = 1, async_save: bool = True):
        self.directory = Path(workdir).absolute() / "checkpoints"
        policy = cm.AnyPreservationPolicy(
            [
                cm.LatestN(n=1),
                cm.BestN(
                    get_metric_fn=lambda m: m[METRIC],
                    reverse=False,
                    n=max(keep_best, 0),
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            best_fn=lambda m: m[METRIC],
            best_mode="max",
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def save(self, step: int, state, data_iter, config: dict, metrics: dict | None = None):
        """Starts an (async) save of state + data position + config at `step`."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data_iter=grain.checkpoint.CheckpointSave(data_iter),
            config=ocp.args.JsonSave(config),
        )
        saved = self.manager.save(
            step, args=args, metrics={METRIC: float(metrics[METRIC])} if metrics else None
        )
        if saved:
            logging.info("checkpoint %d: saving to %s", step, self.directory / str(step))
        return saved

    def restore(self, step: int, abstract_state, data_iter):
        """The state at `step` onto `abstract_state`'s shardings; moves `data_iter` there."""
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data_iter=grain.checkpoint.CheckpointRestore(data_iter),
        )
        restored = self.manager.restore(step, args=args)
        return restored["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def checkpoint_path(source: str | os.PathLike, step: str = "latest") -> tuple[Path, int]:
    """A workdir (its latest/best/N checkpoint) or a `checkpoints/<step>` folder → (dir, step)."""
    path = Path(source).absolute()
    if (path / "state").is_dir() and path.name.isdigit():
        return path.parent, int(path.name)
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    steps = sorted(
        int(p.name) for p in path.glob("*") if p.name.isdigit() and (p / "state").is_dir()
    )
    if not steps:
        raise FileNotFoundError(f"{source}: no checkpoints here")
    if step == "latest":
        return path, steps[-1]
    if step == "best":
        manager = ocp.CheckpointManager(
            path,
            options=ocp.CheckpointManagerOptions(
                best_fn=lambda m: m[METRIC], best_mode="max", read_only=True
            ),
        )
        best = manager.best_step()
        manager.close()
        if best is None:
            raise FileNotFoundError(f"{source}: no checkpoint with a validation Dice")
        return path, best
    if int(step) not in steps:
        raise FileNotFoundError(f"{source}: no checkpoint at step {step} (have {steps})")
    return path, int(step)


def restore_params(source: str | os.PathLike, step: str = "latest") -> tuple[dict, dict, int]:
    """(params, ema_params, step) as host arrays from a checkpoint, without optimiser code."""
    directory, n = checkpoint_path(source, step)
    with ocp.CheckpointManager(
        directory,
        item_handlers={"state": ocp.StandardCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(read_only=True),
    ) as manager:
        raw = manager.restore(n, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    state = raw["state"]
    to_host = lambda t: jax.tree.map(lambda x: jax.device_get(x), t)
    return to_host(state["params"]), to_host(state["ema_params"]), n
