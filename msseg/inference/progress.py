"""Progress of long work with an ETA: per file (`eta`) and inside a file (`Ticker`).

sample.py and evaluate.py log one line per file (absl, always), ending in the ETA of the
files left over the time the files done so far took. With progress on (`--progress=on`, or
`auto` on a terminal: `enabled`) a file's windows are reported too, at most every `EVERY`
seconds, so a long chain (a DDPM-1000 case of half an hour) shows it is alive:

    sample: [3/40] case: 12/64 windows, 1m05s, eta 4m42s

Standard library only; the clock is injectable for tests.
"""

from __future__ import annotations

import enum
import sys
import time
from collections.abc import Callable
from typing import TextIO


class Mode(enum.StrEnum):
    """`--progress`: on only on a terminal, always, never."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


MODES = tuple(m.value for m in Mode)
EVERY = 10.0
"""Seconds between two progress lines of one file, at least."""


def enabled(mode: str, stream: TextIO | None = None) -> bool:
    """Whether progress lines are printed to `stream` (default stderr) in `mode`: "auto" is on
    only when the stream is a terminal."""
    mode = Mode(mode)
    if mode != Mode.AUTO:
        return mode == Mode.ON
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def duration(seconds: float) -> str:
    """ "42s", "5m10s", "2h05m": a duration at the precision an ETA deserves."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta(elapsed: float, done: int, total: int) -> str:
    """ ", eta 5m10s": the time `total - done` more items take at the mean pace of the `done`
    ones (`elapsed` seconds); "" before the first is done or once all are."""
    if done <= 0 or done >= total:
        return ""
    return f", eta {duration(elapsed / done * (total - done))}"


class Ticker:
    """Prints `<prefix>: <done>/<total> <unit>, <elapsed>, eta <left>` to `stream` (default
    stderr) when `update(done)` is called at least `every` seconds (default `EVERY`) after the
    ticker started or last printed; nothing, and no clock read, when not `on`. `update` fits
    `Segmenter.segment_volume`'s `progress` callback (`update(done, total)` sets the total)."""

    def __init__(
        self,
        prefix: str,
        total: int = 0,
        *,
        unit: str = "windows",
        on: bool = True,
        every: float | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] | None = None,
    ):
        self.prefix, self.total, self.unit, self.on = prefix, total, unit, on
        self.every = EVERY if every is None else every
        self.stream = stream
        self.clock = time.monotonic if clock is None else clock
        self.start = self.last = self.clock() if on else 0.0

    def update(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        if not self.on:
            return
        now = self.clock()
        if now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.start
        line = (
            f"{self.prefix}: {done}/{self.total} {self.unit}, {duration(elapsed)}"
            f"{eta(elapsed, done, self.total)}"
        )
        stream = sys.stderr if self.stream is None else self.stream
        print(line, file=stream, flush=True)
