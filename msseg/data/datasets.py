"""Find the cases of a dataset SPEC: an MSD-style dataset.json, nnU-Net-style folders, or `mni152`.

A SPEC resolves to a `Dataset`: its root, label protocol and cases, each case with an id,
an image path, a label path (or None for unlabelled test images), a split
(train / val / test) and the table that turns its raw label values into protocol ids.
Where the dataset gives no validation split, training cases go to `val` by a hash of their
case id, so the split is stable when cases are added or reordered.

What a dataset labels (dataset.json): with ``"protocol": NAME`` and a ``"labels"`` mapping,
the mapping declares the dataset's own raw values by protocol names -- any leaf, tree node
or named set, matched ignoring case and treating spaces, ``_`` and ``-`` alike -- so a
dataset may label coarser than the protocol's leaves::

    {"protocol": "mni-tissue", "labels": {"0": "Background", "1": "CSF", "2": "GM", "3": "WM"}}

``null`` (or ``"ignore"`` / ``"unknown"``, where the protocol has no such name) marks a
value that is not taught (IGNORE). MSD ``{"value": "name"}`` and nnU-Net v2
``{"name": value}`` orientations both work. Without a mapping the protocol's own raw codes
apply; without a protocol the mapping itself defines a flat protocol.

Several SPECs joined by commas resolve to one `Dataset` (same protocol, unique case ids).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path

from msseg import labels as labels_lib
from msseg import names
from msseg.errors import InputError

Codes = tuple[tuple[int, int], ...]  # sorted (raw value, protocol id or IGNORE) pairs

# the embedded sets (msseg.data.mni152.EMBEDDED): skull-stripped, and inside synthetic heads
EMBEDDED = ("mni152", "mni152-heads")
IGNORE_NAMES = ("ignore", "unknown")  # label names meaning IGNORE unless the protocol has them


@dataclasses.dataclass(frozen=True)
class Case:
    """One scan. ``codes``: the dataset's raw value -> id table (None: the protocol's codes)."""

    case_id: str
    image: str
    label: str | None
    split: str  # "train" | "val" | "test"
    codes: Codes | None = None
    dataset: str = ""  # name of the dataset the case comes from


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Cases and their protocol; several SPECs: names and roots joined by commas."""

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


def declared_ids(protocol: labels_lib.Protocol, codes: Codes | None) -> tuple[int, ...]:
    """The ids a dataset's labels can hold (sorted, IGNORE left out); all ids without codes."""
    if codes is None:
        return tuple(range(protocol.num_ids))
    return tuple(sorted({i for _, i in codes} - {labels_lib.IGNORE}))


def split_spec(spec: str | os.PathLike) -> list[str]:
    """The SPECs in `spec`: comma-separated, unless the whole string is an existing path."""
    text = os.fspath(spec)
    if "," not in text or Path(text).expanduser().exists():
        return [text]
    specs = [p.strip() for p in text.split(",") if p.strip()]
    if not specs:
        raise InputError(text, "no dataset SPEC given")
    return specs


def resolve(
    spec: str | os.PathLike,
    *,
    protocol: str | None = None,
    val_fraction: float = 0.2,
    cache: str | os.PathLike | None = None,
) -> Dataset:
    """The dataset named by SPEC (a folder, `mni152` / `mni152-heads` for the embedded sets, or
    several of these joined by commas).

    Several SPECs make one `Dataset`: each keeps its own splits and label table; they must
    share one protocol, and a case id found in two of them is an error (no renaming).
    protocol: a protocol name from msseg.labels, overriding what the datasets declare.
    cache: where the embedded set is built (default: $MSSEG_CACHE or ~/.cache/msseg).
    """
    specs = split_spec(spec)
    if len(specs) == 1:
        return _resolve_one(specs[0], protocol, val_fraction, cache)
    return _combine([_resolve_one(s, protocol, val_fraction, cache) for s in specs])


def _combine(parts: list[Dataset]) -> Dataset:
    first, owner = parts[0], {}
    for ds in parts:
        if ds.protocol.to_json() != first.protocol.to_json():
            raise InputError(
                ds.root,
                f"label protocol {ds.protocol.name!r} differs from protocol "
                f"{first.protocol.name!r} of dataset {first.root}; datasets trained together "
                "must share one protocol",
            )
        for case in ds.cases:
            if case.case_id in owner:
                raise InputError(
                    ds.root,
                    f"case id {case.case_id!r} is also in dataset {owner[case.case_id]}; "
                    "case ids must be unique across datasets (rename the files)",
                )
            owner[case.case_id] = ds.root
    return Dataset(
        ",".join(ds.name for ds in parts),
        ",".join(ds.root for ds in parts),
        first.protocol,
        tuple(c for ds in parts for c in ds.cases),
    )


def _resolve_one(
    spec: str | os.PathLike, protocol: str | None, val_fraction: float, cache
) -> Dataset:
    if str(spec) in EMBEDDED:
        from msseg.data import mni152  # keeps scipy warping code off other paths

        root = mni152.build(mni152.EMBEDDED[str(spec)], cache=cache)
        return _from_dataset_json(root, root / "dataset.json", protocol, val_fraction)
    root = Path(spec).expanduser()
    if not root.exists():
        raise InputError(root, f"dataset folder not found (expected a folder or one of {EMBEDDED})")
    if not root.is_dir():
        raise InputError(root, f"a dataset SPEC must be a folder or one of {EMBEDDED}")
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


def _labelling(
    meta: dict, override: str | None, where: Path
) -> tuple[labels_lib.Protocol, Codes | None]:
    """The protocol and the dataset's raw value -> id table (None: the protocol's codes).

    A mapping naming something outside an overriding protocol (--protocol differing from
    the dataset's own) is set aside: the protocol's raw codes apply, as before mappings.
    """
    declared = meta.get("protocol")
    name = override or declared
    raw = meta.get("labels")
    if name:
        try:
            protocol = labels_lib.get_protocol(name)
        except ValueError as e:
            raise InputError(where, str(e)) from e
        if raw is None:
            return protocol, None
        try:
            return protocol, _codes(_label_mapping(raw, where), protocol, where)
        except InputError:
            if override and override != declared:
                return protocol, None
            raise
    if not isinstance(raw, dict) or not raw:
        raise InputError(
            where, "no label protocol: give --protocol, or 'protocol' or 'labels' in dataset.json"
        )
    table = {k: str(v) for k, v in _label_mapping(raw, where).items()}
    return labels_lib.flat_protocol(str(meta.get("name", where.parent.name)), table), None


def _label_mapping(raw, where: Path) -> dict[int, str | None]:
    """raw value -> name from MSD ``{"0": "background"}`` or nnU-Net v2 ``{"background": 0}``."""
    if not isinstance(raw, dict) or not raw:
        raise InputError(where, f"cannot read the 'labels' mapping (not a mapping): {raw!r}")
    try:
        if all(str(k).lstrip("-").isdigit() for k in raw):
            return {int(k): v for k, v in raw.items()}
        pairs = [(int(v), k) for k, v in raw.items()]
    except (TypeError, ValueError) as e:
        raise InputError(where, f"cannot read the 'labels' mapping ({e})") from e
    table = dict(pairs)
    if len(table) < len(pairs):
        raise InputError(where, "the 'labels' mapping gives one value two names")
    return table


def _norm(name: str) -> str:
    return re.sub(r"[\s_-]+", "-", name.strip().lower())


def _codes(table: dict[int, str | None], protocol: labels_lib.Protocol, where: Path) -> Codes:
    """Map each raw value's name to a protocol id (leaf, node or named set) or IGNORE."""
    ids = {_norm(n): i for i, n in enumerate(protocol.id_names())}
    ids |= {n: labels_lib.IGNORE for n in IGNORE_NAMES if n not in ids}
    out, unknown = [], []
    for value, name in sorted(table.items()):
        key = None if name is None else _norm(name) if isinstance(name, str) else ""
        if key is None:
            out.append((value, labels_lib.IGNORE))
        elif key in ids:
            out.append((value, ids[key]))
        else:
            unknown.append(name)
    if unknown:
        raise InputError(
            where,
            f"'labels' names not in protocol {protocol.name!r}: {unknown}; known names: "
            f"{', '.join(protocol.id_names())} (or null for unlabelled)",
        )
    return tuple(out)


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


def _from_dataset_json(root: Path, meta_path: Path, override, val_fraction) -> Dataset:
    meta = _read_json(meta_path)
    cases, seen = [], set()
    has_val = bool(meta.get("validation"))
    for key, split in (("training", "train"), ("validation", "val"), ("test", "test")):
        for entry in meta.get(key) or []:
            image, label = _entry_paths(root, entry, meta_path)
            if split != "test" and label is None:
                raise InputError(meta_path, f"training entry without a label: {entry!r}")
            cid = names.stem(image)
            if cid in seen:
                raise InputError(meta_path, f"duplicate case id {cid!r}")
            seen.add(cid)
            own = hash_split(cid, val_fraction) if split == "train" and not has_val else split
            cases.append(Case(cid, image, label, own))
    _check_files(cases)
    name = str(meta.get("name", root.name))
    protocol, codes = _labelling(meta, override, meta_path)
    cases = [dataclasses.replace(c, codes=codes, dataset=name) for c in cases]
    return Dataset(name, str(root), protocol, tuple(cases))


def _nifti_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if names.is_volume(p))


def _from_nnunet_folders(root: Path, meta: dict, override, val_fraction) -> Dataset:
    cases = []
    for img_dir, lab_dir, labelled in (
        ("imagesTr", "labelsTr", True),
        ("imagesTs", "labelsTs", False),
    ):
        labels = {names.stem(p): p for p in _nifti_files(root / lab_dir)}
        for image in _nifti_files(root / img_dir):
            cid = names.stem(image, channel=True)
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
    name = str(meta.get("name", root.name))
    protocol, codes = _labelling(meta, override, where)
    cases = [dataclasses.replace(c, codes=codes, dataset=name) for c in cases]
    return Dataset(name, str(root), protocol, tuple(cases))


def _check_files(cases: list[Case]) -> None:
    for case in cases:
        for path in (case.image, case.label):
            if path is not None and not Path(path).is_file():
                raise InputError(path, f"file of case {case.case_id!r} not found")
