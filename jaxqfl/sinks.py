"""Where a run's evaluation records go: JSON lines (always), TensorBoard event files, CSV.

A record is the dict ``engine.run`` hands to ``on_eval`` (``round``, ``test_*``,
``train_loss``, bit totals, seconds, ``server_*``, ...). Each sink takes the
records of a run in order:

* ``jsonl``: ``metrics.jsonl``, one strict JSON object per record (non-finite
  numbers as null), every field (lists included); what ``jaxqfl plot`` and
  ``--resume`` read.
* ``tensorboard``: event files in ``tensorboard/`` (written with tensorboardX, no
  TensorFlow): every finite numeric field as a scalar named like the record's
  key (``test_accuracy``, ``train_loss``, ...), at step ``round``. Lists (the
  per-round series) and text are left out.
* ``csv``: ``metrics.csv``, one row per record, one column per numeric field
  (the union over the records, sorted, ``round`` first; empty where a record
  lacks a field or its value is not finite). The file is rewritten whole after
  each record (a new field adds a column), by a temporary file renamed over it.

A sink starts its files afresh: a resumed run replays the restored records
first, so every sink ends as the uninterrupted run's would.
"""
from __future__ import annotations

import csv
import json
import math
import numbers
import os
import pathlib
from typing import Callable, NamedTuple

import numpy as np

SINKS = ("jsonl", "tensorboard", "csv")
FILES = {"jsonl": "metrics.jsonl", "tensorboard": "tensorboard", "csv": "metrics.csv"}
EVENT_FILES = "events.out.tfevents.*"  # what tensorboardX's SummaryWriter writes


class Sink(NamedTuple):
    """``write(record)`` after each evaluation, ``close()`` at the end of the run."""

    write: Callable[[dict], None]
    close: Callable[[], None]


def check_kinds(kinds) -> tuple[str, ...]:
    """The sink names, checked (unknown names and a missing tensorboardX refused with the fix); one name may be
    given as a string."""
    kinds = tuple(dict.fromkeys((kinds,) if isinstance(kinds, str) else kinds))
    unknown = [k for k in kinds if k not in SINKS]
    if unknown:
        raise ValueError(f"unknown metrics sink {', '.join(map(repr, unknown))}; allowed: {', '.join(SINKS)}")
    if "tensorboard" in kinds:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            raise ValueError("the tensorboard sink needs tensorboardX: pip install 'jaxqfl[tensorboard]'") from None
    return kinds


def scalars(record: dict) -> dict[str, float]:
    """The record's finite numeric fields (booleans and lists left out)."""
    out = {}
    for k, v in record.items():
        v = finite_or_none(v)  # a JAX or NumPy scalar as a Python number
        if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[k] = float(v)
    return out


def finite_or_none(obj):
    """``obj`` with every non-finite float replaced by None, NumPy and JAX scalars and arrays made plain Python
    (bfloat16 and other float formats as floats); a complex value is refused (JSON has no form for it)."""
    if isinstance(obj, dict):
        return {str(k): finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    array_like = (not isinstance(obj, (bool, int, float, complex, str)) and hasattr(obj, "dtype")
                  and hasattr(obj, "shape"))
    a = np.asarray(obj) if array_like else None  # np.ndarray, a NumPy scalar, a jax.Array
    if isinstance(obj, complex) or (a is not None and a.dtype.kind == "c"):
        raise TypeError(f"a complex value ({obj!r}) has no JSON form; record its real and imaginary parts")
    if a is not None:
        if a.dtype.kind not in "biu":
            a = a.astype(np.float64)  # float16, bfloat16, float8 formats: their float values
        return finite_or_none(a.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


def strict_dumps(obj, **kwargs) -> str:
    """``json.dumps`` that never writes NaN or Infinity: those become ``null``."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)


def jsonl_sink(path) -> Sink:
    """``metrics.jsonl``: every record as one strict JSON line, flushed at once."""
    f = open(path, "w")

    def write(record):
        f.write(strict_dumps(record) + "\n")
        f.flush()

    return Sink(write, f.close)


def csv_sink(path) -> Sink:
    """``metrics.csv``: one row per record, one column per numeric field seen so far (module docstring)."""
    path = pathlib.Path(path)
    rows: list[dict] = []

    def write(record):
        rows.append(scalars(record))
        columns = sorted({k for r in rows for k in r}, key=lambda k: (k != "round", k))
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, restval="")
            w.writeheader()
            w.writerows({k: repr(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows)
        os.replace(tmp, path)

    return Sink(write, lambda: None)


def tensorboard_sink(folder) -> Sink:
    """Event files in ``folder`` (earlier event files removed, nothing else): each numeric field a scalar at step
    ``round``."""
    from tensorboardX import SummaryWriter

    folder = pathlib.Path(folder)
    if folder.is_dir():  # an earlier run's events would be read as this run's; the user's own files stay
        for old in folder.glob(EVENT_FILES):
            if old.is_file():
                old.unlink()
    writer = SummaryWriter(logdir=str(folder), flush_secs=5)

    def write(record):
        step = int(record.get("round", 0))
        for k, v in scalars(record).items():
            if k != "round":
                writer.add_scalar(k, v, global_step=step)
        writer.flush()

    return Sink(write, writer.close)


def open_sinks(folder, kinds=("jsonl",)) -> Sink:
    """One sink writing every record to each of ``kinds`` (``jsonl`` always) in ``folder``."""
    folder = pathlib.Path(folder)
    kinds = check_kinds(("jsonl",) + check_kinds(kinds))
    makers = {"jsonl": jsonl_sink, "csv": csv_sink, "tensorboard": tensorboard_sink}
    opened = [makers[k](folder / FILES[k]) for k in kinds]

    def write(record):
        for s in opened:
            s.write(record)

    def close():
        for s in opened:
            s.close()

    return Sink(write, close)


def read_jsonl(path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (the inverse of the jsonl sink)."""
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]
