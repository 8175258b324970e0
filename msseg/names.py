"""File names and suffixes, in one place: the volume suffixes msseg reads and writes, the name of
an input without its suffix, the files tools/sample.py writes per input, and the temporary names
of files being written. Standard library only.

Per input `<name>.nii[.gz|.mgz]` the sampler writes `<name>_seg.nii.gz` (the segmentation),
`<name>_seg_level<l>.nii.gz` (tree level l, with `--level=all`), `<name>_uncertainty.nii.gz` and,
with an ensemble, `<name>_variance.nii.gz`; once per output folder (and in a model directory) the
label colour tables `labels_lut.txt` (FreeSurfer) and `labels_itksnap.txt` (ITK-SNAP).
An evaluation pairs a reference `<name>` with a prediction `<name>_seg` or `<name>`, and an image
`<name>` or `<name>_0000` (nnU-Net's channel naming).
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

READ_SUFFIXES = (".nii.gz", ".nii", ".mgz")  # volumes msseg reads (nibabel converts .mgz)
WRITE_SUFFIXES = (".nii.gz", ".nii")  # volumes msseg writes (NIfTI-1)
OUTPUT_SUFFIX = ".nii.gz"  # what the sampler writes

SEG = "_seg"
UNCERTAINTY = "_uncertainty"
VARIANCE = "_variance"
_OUTPUT = re.compile(r"_(seg|seg_level\d+|uncertainty|variance)$")
LABELS_LUT = "labels_lut.txt"  # the protocol's FreeSurfer colour LUT (freeview)
LABELS_ITKSNAP = "labels_itksnap.txt"  # its ITK-SNAP label description file
_CHANNEL = re.compile(r"_\d{4}$")


def suffix(name: str | os.PathLike) -> str:
    """The volume suffix of a file name (one of READ_SUFFIXES), or "" if it has none."""
    base = Path(name).name
    return next((s for s in READ_SUFFIXES if base.endswith(s)), "")


def is_volume(path: str | os.PathLike) -> bool:
    """A file name msseg reads as a volume: a known suffix, not hidden (a temporary file)."""
    base = Path(path).name
    return bool(suffix(base)) and not base.startswith(".")


def stem(path: str | os.PathLike, *, channel: bool = False) -> str:
    """The file name without its volume suffix; channel=True also strips an nnU-Net `_0000`."""
    base = Path(path).name
    s = suffix(base)
    name = base[: -len(s)] if s else base
    return _CHANNEL.sub("", name) if channel else name


def is_output(name: str) -> bool:
    """A stem the sampler writes (`_seg`, `_seg_level<l>`, `_uncertainty`, `_variance`): not an
    input."""
    return bool(_OUTPUT.search(name))


def is_sidecar(name: str) -> bool:
    """A stem of the sampler's outputs other than the segmentation an evaluation scores."""
    return is_output(name) and not name.endswith(SEG)


def segmentation(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / f"{name}{SEG}{OUTPUT_SUFFIX}"


def level(out_dir: Path, name: str, level: int) -> Path:
    """Where `--level=all` writes tree level `level` of input `name`."""
    return Path(out_dir) / f"{name}{SEG}_level{level}{OUTPUT_SUFFIX}"


def uncertainty(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / f"{name}{UNCERTAINTY}{OUTPUT_SUFFIX}"


def variance(out_dir: Path, name: str) -> Path:
    """Where an ensemble's per-voxel sample variance of input `name` goes."""
    return Path(out_dir) / f"{name}{VARIANCE}{OUTPUT_SUFFIX}"


def label_tables(folder: Path) -> tuple[Path, Path]:
    """The FreeSurfer colour LUT and the ITK-SNAP label description file in `folder`."""
    return Path(folder) / LABELS_LUT, Path(folder) / LABELS_ITKSNAP


def prediction_stems(name: str) -> list[str]:
    """The stems a prediction of reference `name` may have, in order of preference."""
    return [f"{name}{SEG}", name]


def image_stems(name: str) -> list[str]:
    """The stems the image of reference `name` may have."""
    return [name, f"{name}_0000"]


def temporary(target: str | os.PathLike) -> Path:
    """A hidden, unique name next to `target` with the same suffix (`.<stem>.<hex>.tmp<suffix>`),
    so writers that read the format from the suffix (nibabel, matplotlib) accept it and folder
    scans skip it."""
    target = Path(target)
    s = suffix(target.name) or target.suffix
    base = target.name[: -len(s)] if s else target.name
    return target.with_name(f".{base}.{uuid.uuid4().hex}.tmp{s}")
