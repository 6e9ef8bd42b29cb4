"""Metrics sinks: TensorBoard event files and CSV hold what metrics.jsonl holds; bad sinks refused first.

The TensorBoard files are read back independently of the writer: TFRecord
framing (length, its masked CRC32C, payload, its CRC) parsed by hand, each
payload an ``Event`` protocol buffer.
"""
import csv
import json
import math
import struct

import pytest

from jaxqfl import sinks
from jaxqfl.cli.main import main

pytest.importorskip("tensorboardX")

RECORDS = [
    {"round": 2, "test_loss": 1.25, "test_accuracy": 0.5, "train_loss": 1.5, "uplink_bits_total": 640,
     "round_seconds": [0.1, 0.2], "server_mean_norm_per_round": [1.0, 2.0], "secure_aggregation": "secagg+"},
    {"round": 4, "test_loss": float("nan"), "test_accuracy": 0.75, "train_loss": 1.0, "uplink_bits_total": 1280,
     "test_client_accuracy_mean": 0.7, "round_seconds": [0.1, 0.1]},
]


def read_events(folder):
    """``{tag: [(step, value)]}`` from every event file under ``folder``."""
    from tensorboardX.proto import event_pb2

    out = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            payload = data[at + 12:at + 12 + length]
            at += 12 + length + 4
            event = event_pb2.Event.FromString(payload)
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_tensorboard_and_csv_hold_the_jsonl_scalars(tmp_path):
    sink = sinks.open_sinks(tmp_path, ("tensorboard", "csv"))
    for r in RECORDS:
        sink.write(r)
    sink.close()
    lines = sinks.read_jsonl(tmp_path / "metrics.jsonl")
    assert lines[1]["test_loss"] is None and lines[0]["round_seconds"] == [0.1, 0.2]  # strict JSON, every field
    events = read_events(tmp_path / "tensorboard")
    expected = {}
    for r in lines:
        for k, v in r.items():
            if k != "round" and isinstance(v, (int, float)) and v is not None:
                expected.setdefault(k, []).append((r["round"], float(v)))
    assert set(events) == set(expected)  # no lists, no text, no non-finite values
    for k, pairs in expected.items():
        assert [s for s, _ in events[k]] == [s for s, _ in pairs]
        for (_, got), (_, want) in zip(events[k], pairs):
            assert got == pytest.approx(want, rel=1e-7)  # stored as float32
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[0] == "round" and "test_client_accuracy_mean" in rows[0]  # a later field: a new column
    assert rows[0]["test_client_accuracy_mean"] == "" and rows[1]["test_loss"] == ""  # missing and not finite
    for row, r in zip(rows, lines):
        for k, v in row.items():
            if v != "":
                assert float(v) == r[k]  # repr: exact round trip of the float
    assert "round_seconds" not in rows[0]


def test_a_sink_starts_afresh(tmp_path):
    for n in (2, 1):
        sink = sinks.open_sinks(tmp_path, ("tensorboard", "csv"))
        for r in RECORDS[:n]:
            sink.write(r)
        sink.close()
    assert len(sinks.read_jsonl(tmp_path / "metrics.jsonl")) == 1
    assert read_events(tmp_path / "tensorboard")["test_accuracy"] == [(2, 0.5)]
    with open(tmp_path / "metrics.csv") as f:
        assert len(list(csv.DictReader(f))) == 1


def test_the_tensorboard_sink_removes_earlier_event_files_and_nothing_else(tmp_path):
    """It removed the whole folder it was given (a user's tensorboard_sink(folder) lost every file in it)."""
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "sub").mkdir()
    for _ in range(2):
        sink = sinks.tensorboard_sink(tmp_path)
        sink.write(RECORDS[0])
        sink.close()
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "sub").is_dir()
    assert len(list(tmp_path.glob(sinks.EVENT_FILES))) == 1
    assert read_events(tmp_path)["test_accuracy"] == [(RECORDS[0]["round"], RECORDS[0]["test_accuracy"])]


def test_jax_and_numpy_values_are_written_as_numbers_and_complex_ones_refused(tmp_path):
    """A jax scalar was a TypeError in the JSON sinks and silently left out of csv and tensorboard."""
    import jax.numpy as jnp
    import ml_dtypes
    import numpy as np

    record = {"round": jnp.int32(3), "test_loss": jnp.float32(0.5), "x": np.array([1, np.nan], ml_dtypes.bfloat16),
              "ok": jnp.bool_(True)}
    assert json.loads(sinks.strict_dumps(record)) == {"round": 3, "test_loss": 0.5, "x": [1.0, None], "ok": True}
    assert sinks.scalars(record) == {"round": 3.0, "test_loss": 0.5}
    sink = sinks.open_sinks(tmp_path, "csv")  # one name as a string: it was read as 'c', 's', 'v'
    sink.write(record)
    sink.close()
    with open(tmp_path / "metrics.csv") as f:
        assert list(csv.DictReader(f)) == [{"round": "3.0", "test_loss": "0.5"}]
    for value in (1 + 2j, np.complex64(1j)):
        with pytest.raises(TypeError, match="complex value"):
            sinks.strict_dumps({"z": value})


def test_cli_writes_the_sinks_and_refuses_an_unknown_one(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["run", "--num-clients", "12", "--cohort-size", "4", "--rounds", "4", "--eval-every", "2",
                 "--local-steps", "1", "--devices", "2", "--chunk-size", "2", "--no-progress",
                 "--log", "tensorboard,csv", "--out", str(out)]) == 0
    lines = sinks.read_jsonl(out / "metrics.jsonl")
    events = read_events(out / "tensorboard")
    assert [s for s, _ in events["test_accuracy"]] == [2, 4]
    assert [v for _, v in events["test_accuracy"]] == pytest.approx([r["test_accuracy"] for r in lines])
    with open(out / "metrics.csv") as f:
        assert [float(r["train_loss"]) for r in csv.DictReader(f)] == [r["train_loss"] for r in lines]
    assert not any(line.startswith("log ") for line in (out / "config.toml").read_text().splitlines())

    from cli_refusals import assert_refused_before_any_work

    assert_refused_before_any_work(tmp_path / "bad", capsys, monkeypatch, ["--log", "jsonl,wandb"],
                                   "unknown metrics sink 'wandb'; allowed: jsonl, tensorboard, csv")
