"""Find the cases of a dataset SPEC: an MSD-style dataset.json, nnU-Net-style folders, or `mni152`.

A SPEC resolves to a `Dataset`: its root, label protocol and cases, each case with an id,
an image path, a label path (or None for unlabelled test images) and a split
(train / val / test). Where the dataset gives no validation split, training cases go to
`val` by a hash of their case id, so the split is stable when cases are added or reordered.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path

from msseg import labels as labels_lib
from msseg.errors import InputError

NIFTI_SUFFIXES = (".nii.gz", ".nii", ".mgz")


@dataclasses.dataclass(frozen=True)
class Case:
    case_id: str
    image: str
    label: str | None
    split: str  # "train" | "val" | "test"


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    root: str
    protocol: labels_lib.Protocol
    cases: tuple[Case, ...]

    def split(self, name: str) -> tuple[Case, ...]:
        return tuple(c for c in self.cases if c.split == name)


def hash_split(case_id: str, val_fraction: float) -> str:
    """'val' for a stable pseudo-random `val_fraction` of case ids, else 'train'."""
    u = int(hashlib.sha256(case_id.encode()).hexdigest()[:12], 16) / 16**12
    return "val" if u < val_fraction else "train"


def resolve(
    spec: str | os.PathLike,
    *,
    protocol: str | None = None,
    val_fraction: float = 0.2,
    cache: str | os.PathLike | None = None,
) -> Dataset:
    """The dataset named by SPEC (a folder, or `mni152` for the embedded set).

    protocol: a protocol name from msseg.labels, overriding what the dataset declares.
    cache: where the embedded set is built (default: $MSSEG_CACHE or ~/.cache/msseg).
    """
    if str(spec) == "mni152":
        from msseg.data import mni152  # noqa: PLC0415 (keeps scipy warping code off other paths)

        root = mni152.build(cache=cache)
        return _from_dataset_json(root, root / "dataset.json", protocol, val_fraction)
    root = Path(spec).expanduser()
    if not root.exists():
        raise InputError(root, "dataset folder not found (expected a folder or 'mni152')")
    if not root.is_dir():
        raise InputError(root, "a dataset SPEC must be a folder or 'mni152'")
    meta_path = root / "dataset.json"
    meta = _read_json(meta_path) if meta_path.is_file() else {}
    if isinstance(meta.get("training"), list):
        return _from_dataset_json(root, meta_path, protocol, val_fraction)
    if (root / "imagesTr").is_dir():
        return _from_nnunet_folders(root, meta, protocol, val_fraction)
    raise InputError(
        root,
        "no dataset found: expected dataset.json with a 'training' list, or imagesTr/ + labelsTr/",
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(path, f"unreadable JSON ({e})") from e


def _protocol(meta: dict, override: str | None, where: Path) -> labels_lib.Protocol:
    name = override or meta.get("protocol")
    if name:
        try:
            return labels_lib.get_protocol(name)
        except ValueError as e:
            raise InputError(where, str(e)) from e
    raw = meta.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise InputError(
            where, "no label protocol: give --protocol, or 'protocol' or 'labels' in dataset.json"
        )
    try:  # MSD: {"0": "background"}; nnU-Net v2: {"background": 0}
        if all(str(k).lstrip("-").isdigit() for k in raw):
            table = {int(k): str(v) for k, v in raw.items()}
        else:
            table = {int(v): str(k) for k, v in raw.items()}
    except (TypeError, ValueError) as e:
        raise InputError(where, f"cannot read the 'labels' mapping ({e})") from e
    return labels_lib.flat_protocol(str(meta.get("name", where.parent.name)), table)


def _entry_paths(root: Path, entry, where: Path) -> tuple[str, str | None]:
    if isinstance(entry, str):
        image, label = entry, None
    elif isinstance(entry, dict) and "image" in entry:
        image, label = entry["image"], entry.get("label")
    else:
        raise InputError(
            where, f"a dataset entry must be a path or {{'image', 'label'}}: {entry!r}"
        )
    resolve_path = lambda p: str((root / p).resolve()) if p is not None else None
    return resolve_path(image), resolve_path(label)


def case_id_of(path: str | os.PathLike, *, channel: bool = False) -> str:
    """File name without its NIfTI suffix; channel=True also strips an nnU-Net `_0000`."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return re.sub(r"_\d{4}$", "", name) if channel else name


def _from_dataset_json(root: Path, meta_path: Path, override, val_fraction) -> Dataset:
    meta = _read_json(meta_path)
    cases, seen = [], set()
    has_val = bool(meta.get("validation"))
    for key, split in (("training", "train"), ("validation", "val"), ("test", "test")):
        for entry in meta.get(key) or []:
            image, label = _entry_paths(root, entry, meta_path)
            if split != "test" and label is None:
                raise InputError(meta_path, f"training entry without a label: {entry!r}")
            cid = case_id_of(image)
            if cid in seen:
                raise InputError(meta_path, f"duplicate case id {cid!r}")
            seen.add(cid)
            own = hash_split(cid, val_fraction) if split == "train" and not has_val else split
            cases.append(Case(cid, image, label, own))
    _check_files(cases)
    name = str(meta.get("name", root.name))
    return Dataset(name, str(root), _protocol(meta, override, meta_path), tuple(cases))


def _nifti_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.endswith(NIFTI_SUFFIXES))


def _from_nnunet_folders(root: Path, meta: dict, override, val_fraction) -> Dataset:
    cases = []
    for img_dir, lab_dir, labelled in (
        ("imagesTr", "labelsTr", True),
        ("imagesTs", "labelsTs", False),
    ):
        labels = {case_id_of(p): p for p in _nifti_files(root / lab_dir)}
        for image in _nifti_files(root / img_dir):
            cid = case_id_of(image, channel=True)
            channel = re.search(r"_(\d{4})\.", image.name)
            if channel and channel.group(1) != "0000":
                raise InputError(image, "msseg takes one T1 channel (_0000); found another channel")
            label = labels.get(cid)
            if labelled and label is None:
                raise InputError(image, f"no label file for case {cid!r} in {root / lab_dir}")
            split = hash_split(cid, val_fraction) if labelled else "test"
            cases.append(
                Case(cid, str(image.resolve()), str(label.resolve()) if label else None, split)
            )
    if not cases:
        raise InputError(root / "imagesTr", "no NIfTI images found")
    where = root / "dataset.json" if (root / "dataset.json").is_file() else root
    return Dataset(
        str(meta.get("name", root.name)),
        str(root),
        _protocol(meta, override, where),
        tuple(cases),
    )


def _check_files(cases: list[Case]) -> None:
    for case in cases:
        for path in (case.image, case.label):
            if path is not None and not Path(path).is_file():
                raise InputError(path, f"file of case {case.case_id!r} not found")
