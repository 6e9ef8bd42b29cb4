"""Choosing the chunk size by measurement, and remembering the choice on disk.

The cost model (``jaxqfl.engine.chunking``) trusts the cache sizes the system
reports, which a VM can invent; a chunk that is wrong by 4x makes a round
slower than a per-client loop. So the engine times the real round program at a
few candidate chunk sizes seeded by the model and keeps the fastest:

    candidates c_1 (the model's seed), c_2, ... (nearest first, within the memory bound)
    t_i = measure(c_i)               seconds of one round at chunk c_i, after compilation
    picked = argmin_i t_i            over the candidates timed before the budget ran out

This module is the pure part: :func:`tune` (the search, with an injectable
``measure`` and clock) and :class:`TuningCache` (the on-disk memory of picks).
How a candidate is timed on the devices lives in ``jaxqfl.engine.layout_search``.

Budget: a candidate is timed only while ``elapsed + longest measurement so
far <= budget_seconds``; the seed is always timed. So with candidates that cost
about the same to time, the search ends within its budget. Timing a candidate
costs a compilation (1.5-4 s for the bench workloads on a 2-core CPU), so the
search also assumes the round time is unimodal in the chunk size: walking out
from the seed on one side (larger or smaller chunks), once a candidate is slower
than the one before it, the farther ones on that side are not timed
(``prune=True``; typically 3 compilations instead of 6). Candidates timed one
after another see different loads from other processes, so the two fastest
are then re-timed side by side (``confirm``: interleaved rounds, no new
compilation) and the faster of that duel is picked.

The cache is one JSON file, ``<cache dir>/autotune.json``, where the cache dir
is ``$JAXQFL_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxqfl``, else
``~/.cache/jaxqfl``; ``JAXQFL_CACHE_DIR=off`` disables it. Entries are keyed
by a SHA-256 of everything that decides the answer (:func:`cache_key`) and
record the conditions they were measured under, which later runs re-check
(``jaxqfl.engine.tuning_conditions``: an entry is re-tuned when a run's round
time disagrees with it or it was timed under heavy load); the
file is rewritten atomically (a temporary file renamed over it), and a file
that cannot be read or parsed is ignored with a warning (and replaced at the
next write).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import tempfile
import time
import warnings
from typing import Any, Callable, NamedTuple, Protocol, Sequence

from jaxqfl.cache_dir import CACHE_DIR_ENV, OFF, default_cache_dir  # noqa: F401 (this module's names too)

CACHE_FILE = "autotune.json"
AUTOTUNE_ENV = "JAXQFL_AUTOTUNE"
BUDGET_ENV = "JAXQFL_AUTOTUNE_BUDGET"
DEFAULT_BUDGET_SECONDS = 15.0


class TuningRecord(NamedTuple):
    """What the search did: JSON-ready (``_asdict()``), written into ``summary.json``."""

    candidates: list[int]  # chunk sizes considered, in the order they were to be timed
    seconds: list[float | None]  # predicted round seconds per candidate; None: not timed
    skipped: dict[str, str]  # str(chunk) -> why it was not timed ("memory", "budget", "slower neighbour")
    picked: int  # the chunk size used
    seed: int  # the cost model's choice
    cache_hit: bool
    tuning_seconds: float  # wall time of the search (0 on a cache hit, besides the key)
    budget_seconds: float
    key: str  # the cache key (hex digest), "" when no cache
    # on a CPU host split into several XLA devices, the device-count search (jaxqfl.engine.device_split):
    # {"candidates": [D, ...], "seconds": [predicted round s per D], "picked": D, "cache_hit": bool}
    device_split: dict | None = None
    # why a cache hit was not trusted and the search ran again (jaxqfl.engine.tuning_conditions), else None
    retuned: str | None = None

    def summary_line(self) -> str:
        """One line for ``--verbose`` output."""
        timed = ", ".join(
            f"{c}: {s * 1e3:.1f} ms" for c, s in zip(self.candidates, self.seconds) if s is not None
        )
        how = "cache hit" if self.cache_hit else f"tuned in {self.tuning_seconds:.1f} s"
        if self.retuned:
            how += f", re-tuned: {self.retuned}"
        extra = f"; not timed: {', '.join(f'{c} ({why})' for c, why in self.skipped.items())}" if self.skipped else ""
        split = ""
        if self.device_split is not None:
            d = self.device_split
            split = " on {} device(s) ({}{})".format(d["picked"], ", ".join(
                f"{n}: {s * 1e3:.1f} ms" for n, s in zip(d["candidates"], d["seconds"]) if s is not None),
                ", cache hit" if d["cache_hit"] else "")
        return f"autotune: chunk {self.picked}{split} (model's seed {self.seed}; {how}) [{timed}]{extra}"


class MeasureFn(Protocol):
    """``measure(chunk) -> seconds``: predicted seconds of one round at ``chunk`` clients per vmap."""

    def __call__(self, chunk: int) -> float: ...


def tune(
    candidates: Sequence[int],
    measure: MeasureFn,
    memory_ok: Callable[[int], bool],
    budget_seconds: float,
    *,
    timer: Callable[[], float] = time.perf_counter,
    prune: bool = True,
    confirm: Callable[[list[int]], dict[int, float]] | None = None,
    finalists: int = 2,
) -> TuningRecord:
    """Time ``candidates`` in order and return the fastest that fits memory.

    Args:
      candidates: chunk sizes, the cost model's seed first, then nearest first.
      measure: ``measure(chunk) -> seconds`` (predicted round time; compilation excluded).
      memory_ok: ``memory_ok(chunk) -> bool``; a candidate for which it is False is never timed nor picked.
      budget_seconds: wall-time budget of the whole search (``timer`` seconds, compilation included).
      timer: the clock (injectable for tests).
      prune: skip the candidates beyond a slower one on the same side of the seed (module docstring).
      confirm: ``confirm(chunks) -> {chunk: seconds}`` re-times the ``finalists`` fastest candidates
        side by side (interleaved, so all see the same load); the pick is the fastest of that
        duel. The duel's times replace the search's in the record.

    Returns:
      A ``TuningRecord`` (``cache_hit=False``, ``key=""``). When no candidate fits
      memory, the smallest candidate is picked untimed.
    """
    if not candidates:
        raise ValueError("tune needs at least one candidate chunk size")
    if not (budget_seconds >= 0 and math.isfinite(budget_seconds)):
        raise ValueError(f"budget_seconds must be a finite number >= 0, got {budget_seconds!r}")
    candidates = [int(c) for c in candidates]
    start = timer()
    seconds: dict[int, float] = {}
    skipped: dict[str, str] = {}
    longest = 0.0
    for c in candidates:
        if not memory_ok(c):
            skipped[str(c)] = "memory"
            continue
        if seconds and (timer() - start) + longest > budget_seconds:
            skipped[str(c)] = "budget"
            continue
        if prune and _beyond_a_slower_one(c, candidates[0], seconds):
            skipped[str(c)] = "slower neighbour"
            continue
        t0 = timer()
        t = float(measure(c))
        longest = max(longest, timer() - t0)
        if not (t >= 0 and math.isfinite(t)):
            raise ValueError(f"measure({c}) returned {t!r}, not a finite number of seconds")
        seconds[c] = t
    if confirm is not None and len(seconds) > 1:
        best = sorted(seconds, key=lambda c: (seconds[c], c))[:finalists]
        seconds.update({c: float(t) for c, t in confirm(best).items() if c in best})
        picked = min(best, key=lambda c: (seconds[c], c))
    else:
        picked = min(seconds, key=lambda c: (seconds[c], c)) if seconds else min(candidates)
    return TuningRecord(
        candidates=candidates,
        seconds=[seconds.get(c) for c in candidates],
        skipped=skipped,
        picked=picked,
        seed=candidates[0],
        cache_hit=False,
        tuning_seconds=timer() - start,
        budget_seconds=float(budget_seconds),
        key="",
    )


def _beyond_a_slower_one(c: int, seed: int, seconds: dict[int, float]) -> bool:
    """Whether, walking from ``seed`` towards ``c`` over the timed candidates, some step got slower."""
    if seed not in seconds or c == seed:
        return False
    side = [m for m in seconds if (m - seed) * (c - seed) > 0 and abs(m - seed) < abs(c - seed)]
    path = [seed, *sorted(side, key=lambda m: abs(m - seed))]
    return any(seconds[b] > seconds[a] for a, b in zip(path, path[1:]))


def autotune_default() -> bool:
    """Tuning is on unless ``$JAXQFL_AUTOTUNE`` is one of 0/off/false/no."""
    return os.environ.get(AUTOTUNE_ENV, "on").strip().lower() not in OFF


def default_budget() -> float:
    """``$JAXQFL_AUTOTUNE_BUDGET`` seconds when set (a finite number >= 0), else ``DEFAULT_BUDGET_SECONDS``."""
    text = os.environ.get(BUDGET_ENV, "").strip()
    if not text:
        return DEFAULT_BUDGET_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"${BUDGET_ENV} must be a finite number of seconds >= 0, got {text!r}")
    return value


def cache_key(fields: dict[str, Any]) -> str:
    """SHA-256 hex digest of ``fields`` as canonical JSON (sorted keys)."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class TuningCache:
    """Picked chunk sizes on disk: ``{key: {"chunk": int, "record": {...}, "fields": {...}}}`` in one JSON file."""

    def __init__(self, directory: str | os.PathLike | None):
        self.path = None if directory is None else pathlib.Path(directory) / CACHE_FILE

    def _read(self) -> dict:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict):
                raise ValueError("top level is not an object")
            return data
        except (OSError, ValueError) as e:
            warnings.warn(f"ignoring the unreadable autotune cache {self.path}: {e}", stacklevel=3)
            return {}

    def get(self, key: str) -> dict | None:
        """The entry of ``key`` (with an integer ``chunk`` >= 1), or None."""
        entry = self._read().get(key)
        if not isinstance(entry, dict) or not isinstance(entry.get("chunk"), int) or entry["chunk"] < 1:
            return None
        return entry

    def put(self, key: str, entry: dict) -> None:
        """Add ``entry`` under ``key``: read, update, write to a temporary file, rename over (atomic)."""
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = self._read()
            data[key] = entry
            fd, tmp = tempfile.mkstemp(prefix=".autotune-", suffix=".json", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(data, f, indent=1, sort_keys=True, allow_nan=False)
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as e:
            warnings.warn(f"could not write the autotune cache {self.path}: {e}", stacklevel=2)
