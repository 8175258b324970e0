"""TensorBoard event files of the training scalars, written without TensorFlow or tensorboard.

An events file is a sequence of TFRecords (uint64 length, masked CRC32C of the length, the
data, masked CRC32C of the data; little-endian) whose data are `Event` protos, encoded here
by hand (tensorboard/compat/proto/event.proto, summary.proto):

    Event      { double wall_time = 1; int64 step = 2; oneof { string file_version = 3;
                 Summary summary = 5; SessionLog session_log = 7; } }
    Summary    { repeated Value value = 1; }
    Value      { string tag = 1; float simple_value = 2; }
    SessionLog { SessionStatus status = 1; }  // START = 1

Each run (a fresh one or a resumed one) writes its own file
`<workdir>/tensorboard/events.out.tfevents.<time>.<host>`, which TensorBoard merges with the
older ones of the folder. A resume drops from the older files the events past the step it
resumes at, as `truncate_metrics` does for metrics.jsonl, and starts its file with a
`SessionLog.START` at the first step it logs again, which makes a TensorBoard that already
loaded the old points purge them (a TensorBoard that loads the folder afresh never sees them).
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from absl import logging

SUBDIR = "tensorboard"  # <workdir>/tensorboard
PREFIX = "events.out.tfevents."
FILE_VERSION = "brain.Event:2"


def scalar_tag(key: str) -> str:
    """The TensorBoard tag of a metrics.jsonl key: validation keys (`val/...`, `val_dice`)
    under `val/`, every other key under `train/`: `loss` → `train/loss`, `ce/depth1` →
    `train/ce/depth1`, `val/depth0/leaves` stays, `val_dice` → `val/dice`."""
    if key.startswith("val/"):
        return key
    if key.startswith("val_"):
        return "val/" + key[4:]
    return "train/" + key


# -- CRC32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven ----------------------


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        c = byte
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# -- TFRecord framing --------------------------------------------------------------------------


def frame(data: bytes) -> bytes:
    """One TFRecord holding `data`."""
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


def iter_records(buf: bytes) -> Iterator[tuple[bytes, int]]:
    """(data, end offset) of each whole record of an events file's bytes, up to the first
    one that is cut off or fails a CRC (the tail a killed writer may leave)."""
    pos = 0
    while pos + 12 <= len(buf):
        length = buf[pos : pos + 8]
        (n,) = struct.unpack("<Q", length)
        (crc,) = struct.unpack("<I", buf[pos + 8 : pos + 12])
        end = pos + 12 + n + 4
        if crc != masked_crc32c(length) or end > len(buf):
            return
        data = buf[pos + 12 : pos + 12 + n]
        if struct.unpack("<I", buf[end - 4 : end])[0] != masked_crc32c(data):
            return
        yield data, end
        pos = end


# -- Event protos ------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64: a negative number is its two's complement
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _bytes_field(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, field: int, payload: bytes) -> bytes:
    out = _key(1, 1) + struct.pack("<d", wall_time)
    if step:  # proto3 leaves a zero out
        out += _key(2, 0) + _varint(step)
    return out + _bytes_field(field, payload)


def _float32(value: float) -> bytes:
    try:
        return struct.pack("<f", value)
    except OverflowError:  # finite but past float32: what a float32 cast gives
        return struct.pack("<f", math.copysign(math.inf, value))


def file_version_event(wall_time: float) -> bytes:
    return _event(wall_time, 0, 3, FILE_VERSION.encode())


def session_start_event(wall_time: float, step: int) -> bytes:
    return _event(wall_time, step, 7, _key(1, 0) + _varint(1))  # SessionLog{status: START}


def scalars_event(wall_time: float, step: int, scalars: Mapping[str, float]) -> bytes:
    values = b"".join(
        _bytes_field(1, _bytes_field(1, tag.encode()) + _key(2, 5) + _float32(float(v)))
        for tag, v in scalars.items()
    )
    return _event(wall_time, step, 5, values)


def _event_fields(data: bytes) -> tuple[int, set[int]]:
    """(step, field numbers present) of an encoded Event; ValueError if it does not parse."""
    pos, step, fields = 0, 0, set()
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        fields.add(field)
        if wire == 0:
            value, pos = _read_varint(data, pos)
            if field == 2:
                step = value - (1 << 64) if value >> 63 else value
        elif wire == 1:
            pos += 8
        elif wire == 2:
            n, pos = _read_varint(data, pos)
            pos += n
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {wire}")
    if pos != len(data):
        raise ValueError("truncated field")
    return step, fields


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("bad varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


# -- files -------------------------------------------------------------------------------------


def event_files(folder: str | os.PathLike) -> list[Path]:
    """The events files of a folder, oldest first (the order TensorBoard reads them in)."""
    folder = Path(folder)
    return sorted(p for p in folder.glob(PREFIX + "*") if p.is_file()) if folder.is_dir() else []


class EventWriter:
    """Appends scalar summaries to a new events file in `folder`, created (with its
    file_version record and a SessionLog.START at `start_step + 1`) on the first write. Each
    write appends one record and closes the file, so a crash loses nothing written before."""

    def __init__(self, folder: str | os.PathLike, start_step: int = 0):
        self.folder = Path(folder)
        self.start_step = int(start_step)
        self.path: Path | None = None

    def _create(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        base = f"{PREFIX}{int(now):010d}.{socket.gethostname()}"
        head = frame(file_version_event(now)) + frame(session_start_event(now, self.start_step + 1))
        for n in range(1000):  # a name of its own: a resume within the same second appends .n
            path = self.folder / (base if n == 0 else f"{base}.{n}")
            try:
                with path.open("xb") as f:
                    f.write(head)
                return path
            except FileExistsError:
                continue
        raise FileExistsError(f"{self.folder}: no free events file name for {base}")

    def write(self, step: int, scalars: Mapping[str, float], wall_time: float | None = None):
        if not scalars:
            return
        if self.path is None:
            self.path = self._create()
        now = time.time() if wall_time is None else wall_time
        record = frame(scalars_event(now, step, scalars))
        with self.path.open("ab") as f:
            f.write(record)


def truncate_events(folder: str | os.PathLike, last_step: int) -> int:
    """Drops the events past `last_step` from the events files of `folder` (and the tail of a
    file a kill cut off), rewriting each changed file atomically and removing one left without
    summaries; last_step 0 (a fresh run) removes every file with data. Returns how many
    records it dropped."""
    dropped_total = 0
    for path in event_files(folder):
        buf = path.read_bytes()
        kept, end, summaries, dropped = [], 0, 0, 0
        try:
            for data, stop in iter_records(buf):
                end = stop  # the end of the last whole record
                step, fields = _event_fields(data)
                if step <= last_step:
                    kept.append(data)
                    summaries += 5 in fields
                else:
                    dropped += 1
        except ValueError:
            logging.warning("%s: not an events file this writer can read; left as it is", path)
            continue
        if end < len(buf):
            dropped += 1  # the cut-off tail
        if not dropped:
            continue
        dropped_total += dropped
        if not summaries:
            path.unlink()
            continue
        tmp = path.with_name(f".truncate.{uuid.uuid4().hex}.tmp")  # no "tfevents": not read
        try:
            tmp.write_bytes(b"".join(frame(d) for d in kept))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    if dropped_total:
        logging.info(
            "%s: dropped %d event records past step %d (resumed there)",
            folder,
            dropped_total,
            last_step,
        )
    return dropped_total
