"""The one exception type for bad user input: its message names the file and the problem."""

from __future__ import annotations

import os


class InputError(ValueError):
    """A user-supplied file or dataset is unusable.

    The message always starts with the offending path, so a batch job's log says which
    file to fix, e.g. ``InputError("/data/sub-01_T1w.nii.gz: image contains 12 NaN voxels")``.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{self.path}: {problem}")

    def __reduce__(self):  # survives pickling, e.g. out of a worker process
        return (type(self), (self.path, self.problem))
