"""msseg.train.tensorboard: events files TensorBoard reads, written without TensorFlow.

The reader here is the test's own (a bitwise CRC32C, its own protobuf decoding), so the
writer's table-driven CRC and hand-made encoding are checked against an independent one.
"""

import json
import math
import struct

import numpy as np
import pytest

from msseg.train import tensorboard as tb
from msseg.train.metrics import MetricsLog, read_metrics

# -- an independent reader -------------------------------------------------------------------


def bitwise_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32


def records(buf: bytes) -> list[bytes]:
    """Every record's data; AssertionError on a bad CRC, a cut record or trailing bytes."""
    out, pos = [], 0
    while pos < len(buf):
        assert pos + 12 <= len(buf), "cut-off header"
        header = buf[pos : pos + 8]
        (n,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", buf[pos + 8 : pos + 12])[0] == masked(bitwise_crc32c(header))
        data = buf[pos + 12 : pos + 12 + n]
        assert len(data) == n and pos + 16 + n <= len(buf), "cut-off record"
        crc = struct.unpack("<I", buf[pos + 12 + n : pos + 16 + n])[0]
        assert crc == masked(bitwise_crc32c(data)), f"data CRC of the record at byte {pos}"
        out.append(data)
        pos += 16 + n
    return out


def fields(msg: bytes) -> list[tuple[int, int, object]]:
    """(field number, wire type, value) of a protobuf message: ints, or bytes for wire 2."""
    out, pos = [], 0

    def varint():
        nonlocal pos
        value = shift = 0
        while True:
            b = msg[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value

    while pos < len(msg):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        elif wire == 1:
            value, pos = msg[pos : pos + 8], pos + 8
        elif wire == 5:
            value, pos = msg[pos : pos + 4], pos + 4
        elif wire == 2:
            n = varint()
            value, pos = msg[pos : pos + n], pos + n
        else:
            raise AssertionError(f"wire type {wire}")
        out.append((field, wire, value))
    assert pos == len(msg)
    return out


def decode_event(data: bytes) -> dict:
    event = {"step": 0, "scalars": []}
    for field, wire, value in fields(data):
        if field == 1:
            assert wire == 1
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif field == 2:
            assert wire == 0
            event["step"] = value
        elif field == 3:
            event["file_version"] = value.decode()
        elif field == 5:
            for f, _, v in fields(value):  # Summary.value
                assert f == 1
                val = dict((vf, (vw, vv)) for vf, vw, vv in fields(v))
                assert val[2][0] == 5  # simple_value: float (fixed32)
                tag, number = val[1][1].decode(), struct.unpack("<f", val[2][1])[0]
                event["scalars"].append((tag, number))
        elif field == 7:
            event["session_log"] = dict((f, v) for f, _, v in fields(value))
        else:
            raise AssertionError(f"unexpected Event field {field}")
    return event


def read_events(path) -> list[dict]:
    return [decode_event(r) for r in records(path.read_bytes())]


def scalars(events: list[dict]) -> dict[str, list[tuple[int, float]]]:
    out = {}
    for e in events:
        for tag, value in e["scalars"]:
            out.setdefault(tag, []).append((e["step"], value))
    return out


def read_folder(folder) -> dict[str, list[tuple[int, float]]]:
    return scalars([e for p in tb.event_files(folder) for e in read_events(p)])


def f32(x: float) -> float:
    return float(np.float32(x))


# -- tests -----------------------------------------------------------------------------------


def test_crc32c_known_vectors():
    assert tb.crc32c(b"123456789") == 0xE3069283
    assert tb.crc32c(b"") == 0
    assert tb.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros
    assert tb.crc32c(b"\xff" * 32) == 0x62A8AB43  # and of ones
    rng = np.random.default_rng(0)
    for n in (1, 7, 100):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert tb.crc32c(data) == bitwise_crc32c(data)
    assert tb.masked_crc32c(b"123456789") == masked(0xE3069283)


def test_scalars_read_back_with_their_steps_and_float32_values(tmp_path):
    w = tb.EventWriter(tmp_path / "tb")
    assert not (tmp_path / "tb").exists()  # nothing until the first write
    written = {
        1: {"train/loss": 0.123456789, "train/lr": 2e-4, "train/big": 1e300},
        2: {"train/loss": -1.5, "val/dice": float("nan"), "train/step_1e9": 1e9},
        300: {"train/loss": 7.0, "val/dice": 0.875},
    }
    for step, values in written.items():
        w.write(step, values, wall_time=1000.0 + step)
    w.write(301, {})  # nothing to log: no record
    (path,) = tb.event_files(tmp_path / "tb")
    assert path.name.startswith("events.out.tfevents.") and path == w.path
    events = read_events(path)
    assert events[0]["file_version"] == "brain.Event:2" and events[0]["step"] == 0
    assert events[1]["session_log"] == {1: 1} and events[1]["step"] == 1  # START at step 1
    assert [e["step"] for e in events[2:]] == [1, 2, 300]
    assert [e["wall_time"] for e in events[2:]] == [1001.0, 1002.0, 1300.0]
    got = scalars(events)
    expected = {}
    for step, values in written.items():
        for tag, v in values.items():
            expected.setdefault(tag, []).append((step, math.inf if v > 4e38 else f32(v)))
    assert set(got) == set(expected)
    for tag in expected:
        assert [s for s, _ in got[tag]] == [s for s, _ in expected[tag]]
        np.testing.assert_array_equal([v for _, v in got[tag]], [v for _, v in expected[tag]])


def test_the_reader_catches_a_changed_byte(tmp_path):
    w = tb.EventWriter(tmp_path)
    w.write(5, {"train/loss": 0.25})
    buf = bytearray(w.path.read_bytes())
    assert read_events(w.path)[-1]["scalars"] == [("train/loss", 0.25)]
    value_at = bytes(buf).rindex(struct.pack("<f", 0.25))
    for where in (value_at, value_at - 5, len(buf) - 1):  # the value, the tag, the data CRC
        bad = bytearray(buf)
        bad[where] ^= 0x01
        with pytest.raises(AssertionError, match="data CRC"):
            records(bytes(bad))
        # and the writer's own reader stops before the changed record
        assert len(list(tb.iter_records(bytes(bad)))) == len(records(bytes(buf))) - 1
    bad = bytearray(buf)
    bad[0] ^= 0x01  # the first record's length
    with pytest.raises(AssertionError):
        records(bytes(bad))


def test_tags_of_the_metrics_keys():
    tags = {
        "loss": "train/loss",
        "ce/depth1": "train/ce/depth1",
        "lr": "train/lr",
        "steps_per_s": "train/steps_per_s",
        "val/depth0/leaves": "val/depth0/leaves",
        "val/depth1/level0": "val/depth1/level0",
        "val_dice": "val/dice",
    }
    assert {k: tb.scalar_tag(k) for k in tags} == tags


def test_metrics_log_writes_the_same_scalars_as_metrics_jsonl(tmp_path):
    log = MetricsLog(tmp_path, total_steps=4, start_step=0, tensorboard=True)
    train_rows = {
        s: {"loss": 1.0 / s, "ce/depth0": 0.5 / s, "lr": 1e-4 * s, "finite_count": np.int32(s)}
        for s in (1, 2, 3, 4)
    }
    for s, row in train_rows.items():
        log.write(s, row)
        if s % 2 == 0:
            log.write(s, {"val/depth0/leaves": 0.1 * s, "val_dice": 0.1 * s})
    got = read_folder(tmp_path / "tensorboard")
    expected = {}
    for row in read_metrics(tmp_path / "metrics.jsonl"):
        for k, v in row.items():
            if k not in ("step", "wall_s"):
                expected.setdefault(tb.scalar_tag(k), []).append((row["step"], f32(v)))
    assert got == expected
    assert got["train/loss"] == [(s, f32(1.0 / s)) for s in (1, 2, 3, 4)]
    assert got["val/dice"] == [(2, f32(0.2)), (4, f32(0.4))]
    assert set(got) == {
        "train/loss",
        "train/ce/depth0",
        "train/lr",
        "train/finite_count",
        "val/depth0/leaves",
        "val/dice",
    }


def test_a_resume_cuts_the_events_past_its_checkpoint_as_it_cuts_metrics_jsonl(tmp_path):
    log = MetricsLog(tmp_path, total_steps=6, start_step=0, tensorboard=True)
    for s in (1, 2, 3, 4):
        log.write(s, {"loss": float(s)})
    log.write(2, {"val_dice": 0.5})
    (first,) = tb.event_files(tmp_path / "tensorboard")
    with first.open("ab") as f:  # a record a kill cut off
        f.write(tb.frame(tb.scalars_event(0.0, 5, {"train/loss": 5.0}))[:-3])

    log = MetricsLog(tmp_path, total_steps=6, start_step=2, tensorboard=True)  # resumed at 2
    records(first.read_bytes())  # rewritten whole: every CRC checks out, no cut-off tail
    assert read_folder(tmp_path / "tensorboard") == {
        "train/loss": [(1, 1.0), (2, 2.0)],
        "val/dice": [(2, 0.5)],
    }
    assert not [p for p in (tmp_path / "tensorboard").iterdir() if p != first]  # no temp file
    for s in (3, 4, 5):
        log.write(s, {"loss": 10.0 * s})
    files = tb.event_files(tmp_path / "tensorboard")
    assert len(files) == 2 and files[0] == first  # the resumed run's file sorts after
    second = read_events(files[1])
    assert second[1]["session_log"] == {1: 1} and second[1]["step"] == 3  # TensorBoard's purge
    got = read_folder(tmp_path / "tensorboard")
    assert got["train/loss"] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0), (5, 50.0)]
    steps = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert steps == [s for s, _ in got["train/loss"]]  # the same steps as metrics.jsonl

    # resumed again further back: the second file loses its steps past 3, the first keeps 1..2
    MetricsLog(tmp_path, total_steps=6, start_step=3, tensorboard=False)
    assert read_folder(tmp_path / "tensorboard")["train/loss"] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    # a fresh run in the same workdir (no checkpoint to resume from) starts anew
    MetricsLog(tmp_path, total_steps=6, start_step=0, tensorboard=True)
    assert tb.event_files(tmp_path / "tensorboard") == []


def test_tensorboard_off_or_not_main_writes_no_events(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    MetricsLog(tmp_path / "a", 3, tensorboard=False).write(1, {"loss": 1.0})
    assert (tmp_path / "a" / "metrics.jsonl").is_file()
    assert not (tmp_path / "a" / "tensorboard").exists()
    from msseg.train import metrics

    monkeypatch.setattr(metrics, "is_main", lambda: False)
    (tmp_path / "b").mkdir()
    MetricsLog(tmp_path / "b", 3, tensorboard=True).write(1, {"loss": 1.0})
    assert list((tmp_path / "b").iterdir()) == []


def test_the_config_key_reaches_train_config():
    import runpy
    from pathlib import Path

    from msseg import files
    from msseg.train.state import TrainConfig

    base = runpy.run_path(str(Path(__file__).parents[1] / "configs" / "base.py"))
    train = base["get_config"]().train
    assert train.tensorboard is True
    train.tensorboard = False
    assert files.from_json(TrainConfig, train.to_dict()).tensorboard is False
    with pytest.raises(ValueError, match="train.tensorboard"):
        TrainConfig(tensorboard="no")


def test_protobuf_parses_the_events_as_event_protos(tmp_path):
    """The encoding against the protobuf library itself (the schema of event.proto and
    summary.proto, built at run time: no generated classes) where it is installed."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="tb_event_test.proto", package="tbtest")
    fdp.syntax = "proto3"
    F = descriptor_pb2.FieldDescriptorProto
    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED

    def message(name, *fs):
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fs:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name

    message("Value", ("tag", 1, F.TYPE_STRING, opt, ""), ("simple_value", 2, F.TYPE_FLOAT, opt, ""))
    message("Summary", ("value", 1, F.TYPE_MESSAGE, rep, ".tbtest.Value"))
    message("SessionLog", ("status", 1, F.TYPE_INT32, opt, ""))
    message(
        "Event",
        ("wall_time", 1, F.TYPE_DOUBLE, opt, ""),
        ("step", 2, F.TYPE_INT64, opt, ""),
        ("file_version", 3, F.TYPE_STRING, opt, ""),
        ("summary", 5, F.TYPE_MESSAGE, opt, ".tbtest.Summary"),
        ("session_log", 7, F.TYPE_MESSAGE, opt, ".tbtest.SessionLog"),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    Event = message_factory.GetMessageClass(pool.FindMessageTypeByName("tbtest.Event"))

    w = tb.EventWriter(tmp_path, start_step=41)
    w.write(42, {"train/loss": 0.5, "val/depth0/leaves": 0.75}, wall_time=123.25)
    head, start, ev = (Event.FromString(r) for r in records(w.path.read_bytes()))
    assert head.file_version == "brain.Event:2"
    assert start.step == 42 and start.session_log.status == 1
    assert ev.step == 42 and ev.wall_time == 123.25
    assert [(v.tag, v.simple_value) for v in ev.summary.value] == [
        ("train/loss", 0.5),
        ("val/depth0/leaves", 0.75),
    ]
    big = Event(step=2**40 + 3)  # a multi-byte varint step both ways
    assert decode_event(tb.scalars_event(0.0, 2**40 + 3, {}))["step"] == big.step
    assert Event.FromString(tb.scalars_event(0.0, 2**40 + 3, {})).step == big.step


def test_tensorboards_own_reader_loads_the_file(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLog(tmp_path, total_steps=3, start_step=0, tensorboard=True)
    for s in (1, 2, 3):
        log.write(s, {"loss": 1.0 / s})
    log.write(3, {"val_dice": 0.5})
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"train/loss", "val/dice"}
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [
        (s, f32(1.0 / s)) for s in (1, 2, 3)
    ]


@pytest.mark.slow
def test_a_training_run_logs_to_tensorboard(exported):
    """The run the export tests share (no training of its own): its events hold the rows of
    its metrics.jsonl."""
    workdir = exported[0]
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    got = read_folder(workdir / "tensorboard")
    assert [s for s, _ in got["train/loss"]] == [r["step"] for r in rows if "loss" in r]
    assert [v for _, v in got["train/loss"]] == [f32(r["loss"]) for r in rows if "loss" in r]
    val = [r for r in rows if "val_dice" in r]
    assert val and got["val/dice"] == [(r["step"], f32(r["val_dice"])) for r in val]
    assert {"train/lr", "train/grad_norm", "train/steps_per_s", "val/depth0/leaves"} <= set(got)
