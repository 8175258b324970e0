"""The repository root, and paths and command lines as the suite publishes them: relative to
the root, from which every binary runs."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def repo_relative(text: str) -> str:
    """`text` with every path under the repo made relative to it."""
    return text.replace(str(ROOT) + os.sep, "")


def shown(cmd: list[str]) -> str:
    """A command as logged and published: `python`, and paths under the repo relative to it
    (every binary runs from the repo root, so the line runs as shown from a clone)."""
    return shlex.join(["python", *(repo_relative(a) for a in cmd[1:])])
