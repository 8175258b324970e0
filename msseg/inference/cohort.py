"""Segment a list of files into one output folder, on one process or split across the
processes of a jax.distributed run (`msseg.cluster`): tools/sample.py's loop.

- Every process checks the settings, the output folder and its volumes.csv before any file
  is read; process 0 first merges the row files an interrupted multi-process run left.
- Each process segments its share of the sorted inputs (`cluster.share`: every file exactly
  once across the processes) and writes its own cases' files. With one process the rows go
  straight into `volumes.csv`; with several, each process writes its rows to its own
  `volumes.process<i>.csv`, and once every process is done process 0 merges them into
  `volumes.csv` and removes them: no two processes ever write one file.
- With `overwrite=False`, a case whose outputs are complete (every file these settings write
  for it, and its row in volumes.csv) is skipped: a rerun after an interruption redoes only
  what is missing. It does not check that the files came from the same settings.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import sys
import time
from pathlib import Path

import jax
from absl import logging

from msseg import cluster, files, names
from msseg.errors import InputError
from msseg.inference import model as model_lib
from msseg.inference import predict
from msseg.inference import progress as progress_lib

PART_PREFIX = "volumes.process"  # volumes.process<i>.csv: one process's rows of a run


@dataclasses.dataclass(frozen=True)
class Done:
    name: str
    seconds: float
    windows: int


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one process did: its share of the inputs, the cases it segmented, the files that
    failed (path, message) and the cases it skipped as complete."""

    share: list[Path]
    done: list[Done]
    failures: list[tuple[Path, str]]
    skipped: list[Path]


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def merge_volumes(path: Path, rows: list[dict], to: Path | None = None) -> None:
    """`path` (volumes.csv) with `rows` replacing the rows of their cases and the rows of
    earlier runs for cases not redone now kept, written to `to` (default: `path`)."""
    redone = {r["case"] for r in rows}
    old = [r for r in _rows(path) if r.get("case") not in redone]
    predict.write_volumes(path if to is None else to, old + rows)


def part_path(out: Path, process: int) -> Path:
    """Process `process`'s row file in a multi-process run."""
    return out / f"{PART_PREFIX}{process}.csv"


def parts(out: Path) -> list[Path]:
    """The per-process row files in `out`, of this run or of an interrupted earlier one."""
    found = [p for p in out.glob(f"{PART_PREFIX}*.csv") if p.stem[len(PART_PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.stem[len(PART_PREFIX) :]))


def merge_parts(out: Path) -> None:
    """Merges every per-process row file into out/volumes.csv (their rows replace older rows
    of the same cases), then removes them. Written atomically: a crash leaves volumes.csv
    old or new and the row files in place, merged again by the next run."""
    found = parts(out)
    if not found:
        return
    rows = [r for p in found for r in _rows(p)]
    if rows:
        merge_volumes(out / "volumes.csv", rows)
    for p in found:
        p.unlink()


def expected_outputs(
    out: Path, name: str, opts: predict.Options, variance: bool, protocol
) -> list[Path]:
    """The files `predict.stage_outputs` writes for case `name` with these settings
    (`variance`: the segmenter's ensemble writes a variance file)."""
    paths = [
        names.segmentation(out, name),
        names.uncertainty(out, name),
        out / f"{name}_qc.png",
    ]
    if variance:
        paths.append(names.variance(out, name))
    if opts.level == "all":
        paths += [names.level(out, name, lev) for lev in range(len(protocol.levels()))]
    return paths


def complete(
    out: Path, path: Path, opts: predict.Options, variance: bool, protocol, rows: set[str]
) -> bool:
    """Whether input `path`'s outputs (`expected_outputs`) are all in `out` and its row is in
    `rows` (the cases of volumes.csv)."""
    name = names.stem(path)
    expected = expected_outputs(out, name, opts, variance, protocol)
    return name in rows and all(p.is_file() for p in expected)


def run(
    model: model_lib.LoadedModel,
    inputs: list[Path],
    output: str | os.PathLike,
    opts: predict.Options,
    *,
    progress: bool = False,
    overwrite: bool = True,
) -> Outcome:
    """Segments this process's share of `inputs` into `output`.

    Before any file is read: the settings (`predict.Segmenter`), the output folder (created
    if needed, `files.make_output_dir`) and the volumes.csv and row files there
    (`predict.check_volumes`); a problem is an InputError/ValueError. Then per file: its
    outputs and the updated rows (and, with this process's first file done, the colour tables
    `predict.stage_label_tables`) are staged and committed together (`predict.Staging`); a
    failing file is logged, its earlier outputs and row stay as they were, and the batch goes
    on. `overwrite=False` skips the complete cases (`complete`). Each file's log line ends in
    the ETA of the files left (`progress.eta`); `progress`: also print the windows done inside
    each file to stderr, at most every 10 s (`progress.Ticker`).
    """
    segmenter = predict.Segmenter(model, opts)  # checks the settings before anything is written
    protocol = model.protocol
    out = files.make_output_dir(output)
    table = out / "volumes.csv"
    predict.check_volumes(table, protocol)  # replaced atomically: read whole, old or new
    error = None
    if cluster.is_main():  # an interrupted multi-process run's rows, checked and merged
        try:
            for path in parts(out):
                predict.check_volumes(path, protocol)
            merge_parts(out)
        except (InputError, OSError) as e:  # reported after the barrier, on every process
            error = e
    if not cluster.all_ok(error is None):
        if error is not None:
            raise error
        raise InputError(out, "process 0 refused its row files (see its log)")
    share = cluster.share(inputs)
    rows_file = table if jax.process_count() == 1 else part_path(out, jax.process_index())
    skipped = []
    if not overwrite:
        have = {r.get("case") for r in _rows(table)}
        skipped = [p for p in share if complete(out, p, opts, segmenter.ensemble, protocol, have)]
        if skipped:
            logging.info(
                "sample: %d of %d file(s) already segmented in %s, skipped (--overwrite redoes "
                "them)",
                len(skipped),
                len(share),
                out,
            )
    todo = [p for p in share if p not in skipped]
    done, failures, rows = [], [], []
    n, start, tables = len(todo), time.perf_counter(), False
    key = jax.random.key(opts.seed)
    for i, path in enumerate(todo, 1):
        ticker = progress_lib.Ticker(
            f"sample: [{i}/{n}] {names.stem(path)}", on=progress, stream=sys.stderr
        )
        try:
            with predict.Staging() as stage:
                result = segmenter.segment_file(path, key, ticker.update)
                predict.stage_outputs(stage, out, result, protocol, opts.level)
                row = predict.volumes_row(result, protocol)
                merge_volumes(rows_file, [*rows, row], to=stage.path(rows_file))
                if not tables:
                    predict.stage_label_tables(stage, out, protocol)
                stage.commit()
        except Exception as e:  # noqa: BLE001 — one bad file must not stop the batch
            failures.append((path, f"{type(e).__name__}: {e}"))
            eta = progress_lib.eta(time.perf_counter() - start, i, n)
            logging.error("sample: [%d/%d] %s failed: %s%s", i, n, path, e, eta)
            continue
        tables = True
        rows.append(row)
        done.append(Done(result.name, result.seconds, result.windows))
        logging.info(
            "sample: [%d/%d] %s: %d windows, %.1f s%s",
            i,
            n,
            result.name,
            result.windows,
            result.seconds,
            progress_lib.eta(time.perf_counter() - start, i, n),
        )
        del result
    if jax.process_count() > 1:
        cluster.barrier("msseg: sample cases written")
        if cluster.is_main():
            merge_parts(out)
    return Outcome(share, done, failures, skipped)
