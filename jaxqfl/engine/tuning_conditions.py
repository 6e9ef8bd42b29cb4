"""When a cached chunk pick is still trusted: the conditions it was measured under, re-checked by later runs.

A pick timed while other processes loaded the cores can be wrong, and a cache
that keeps it forever keeps it wrong. So every cache entry of
``jaxqfl.engine.layout_search`` and ``jaxqfl.engine.device_split`` records

    round_seconds    S_t, the pick's predicted seconds per round, as timed
    load_per_core    L_t, the 1-minute load average over the usable cores, when the search began

and is re-checked for free by the runs that use it, from their own block times.
A CPU-bound process sharing its cores with L runnable processes per core runs
about ``max(1, L)`` times slower (processor sharing), so a run that observes a
median of S_o seconds per round at load L_o expects

    S_e = S_t * max(1, L_o) / max(1, L_t) * b          (b: the entry's baseline ratio, 1 until set)

and the rules are (:func:`compare`, :func:`stale_reason`):

* disagreement: ``S_o / S_e`` outside ``[1/RECHECK_FACTOR, RECHECK_FACTOR]`` (2x)
  marks the entry stale: the next run re-tunes (a cache miss) and replaces it;
* agreement after a fresh search sets the baseline ``b = S_o / (S_t max(1, L_o) / max(1, L_t))``,
  the steady gap between the timed program and the run's rounds (host work, data
  movement), so later runs are compared with what this shape really costs;
* an entry timed under heavy load is re-tuned as soon as a run starts where the
  load slows a process down RECHECK_FACTOR times less: ``max(1, L_t) >= 2 max(1, L_now)``;
* an entry without recorded conditions (written before they existed) is re-tuned once.

A run judges only from its steady blocks: the first block (first execution,
allocation) is left out, and at least ``MIN_BLOCKS`` others are needed; fewer
give no verdict. The check reads numbers the run measured anyway: it times
nothing. Everything here is pure given the load and the times (injectable).
"""
from __future__ import annotations

import math
import os
import statistics
import time
from typing import NamedTuple

RECHECK_FACTOR = 2.0
MIN_BLOCKS = 2


def machine_load() -> float | None:
    """The 1-minute load average per usable core, or None where the OS has none."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return load / max(cores, 1)


def slowdown(load_per_core: float | None) -> float:
    """``max(1, L)``: how much slower a CPU-bound process runs at L runnable processes per core (1 if unknown)."""
    return 1.0 if load_per_core is None else max(1.0, float(load_per_core))


def conditions(round_seconds: float | None, load_per_core: float | None) -> dict:
    """The JSON record of a search's conditions, stored in its cache entry."""
    return {"round_seconds": round_seconds, "load_per_core": load_per_core,
            "tuned_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def stale_reason(entry: dict, load_now: float | None) -> str | None:
    """Why a cache hit must be re-tuned now (module docstring), or None to reuse it."""
    if entry.get("stale"):
        return str(entry["stale"])
    cond = entry.get("conditions")
    if not isinstance(cond, dict):
        return "the entry records no tuning conditions"
    load_then = cond.get("load_per_core")
    if load_then is not None and load_now is not None and slowdown(load_now) * RECHECK_FACTOR <= slowdown(load_then):
        return f"timed under load {load_then:.2f} per core, now {load_now:.2f}"
    return None


class Verdict(NamedTuple):
    """A run's check of a cache entry: ``agrees`` None when the run had too few blocks to judge."""

    agrees: bool | None
    observed_seconds: float | None
    expected_seconds: float | None
    reason: str


def steady_round_seconds(block_seconds: list[float], block_rounds: list[int]) -> float | None:
    """Median seconds per round over the blocks after the first; None with fewer than MIN_BLOCKS of them."""
    per_round = [s / r for s, r in zip(block_seconds[1:], block_rounds[1:]) if r > 0]
    return statistics.median(per_round) if len(per_round) >= MIN_BLOCKS else None


def blocks_of_records(records: list[dict], start_round: int = 0, start_seconds: float = 0.0):
    """``(block seconds, block rounds)`` between consecutive evaluation records (cumulative ``seconds``, ``round``)."""
    seconds, rounds = [], []
    r0, s0 = start_round, start_seconds
    for rec in records:
        seconds.append(rec["seconds"] - s0)
        rounds.append(rec["round"] - r0)
        r0, s0 = rec["round"], rec["seconds"]
    return seconds, rounds


def compare(entry: dict, observed_seconds: float | None, load_now: float | None) -> Verdict:
    """The run's observed seconds per round against the entry's recorded ones, load-corrected (module docstring)."""
    cond = entry.get("conditions") if isinstance(entry.get("conditions"), dict) else {}
    recorded = cond.get("round_seconds")
    if observed_seconds is None:
        return Verdict(None, None, None, f"fewer than {MIN_BLOCKS} steady blocks: no verdict")
    if not recorded or not math.isfinite(recorded):
        return Verdict(None, observed_seconds, None, "no recorded round time: no verdict")
    expected = recorded * slowdown(load_now) / slowdown(cond.get("load_per_core")) * cond.get("baseline", 1.0)
    ratio = observed_seconds / expected
    agrees = 1.0 / RECHECK_FACTOR <= ratio <= RECHECK_FACTOR
    how = "agrees with" if agrees else "disagrees with"
    return Verdict(agrees, observed_seconds, expected,
                   f"observed {observed_seconds * 1e3:.3g} ms per round {how} the {expected * 1e3:.3g} ms expected "
                   f"from the cached measurement ({ratio:.2f}x; re-tuned beyond {RECHECK_FACTOR:g}x)")


def recheck(cache, keys: list[str], observed_seconds: float | None, load_now: float | None, *,
            fresh: bool) -> Verdict | None:
    """Compare a run with the cache entries ``keys`` (a chunk search's, a device split's) and record the verdict.

    Disagreement marks every entry stale (re-tuned by the next run). Agreement after a
    ``fresh`` search (tuned in this process) sets the entries' baseline; after a cache hit
    it only records the observation. Returns the first entry's verdict (None: no entry).
    """
    first = None
    for key in keys:
        entry = cache.get(key) if key else None
        if entry is None:
            continue
        verdict = compare(entry, observed_seconds, load_now)
        first = first or verdict
        if verdict.agrees is None:
            continue
        cond = dict(entry.get("conditions") or {})
        if not verdict.agrees:
            entry = {**entry, "stale": verdict.reason}
        elif fresh and cond.get("round_seconds"):
            base = cond["round_seconds"] * slowdown(load_now) / slowdown(cond.get("load_per_core"))
            cond["baseline"] = verdict.observed_seconds / base
        entry = {**entry, "conditions": cond, "last_observed": {
            "round_seconds": verdict.observed_seconds, "load_per_core": load_now, "agrees": verdict.agrees}}
        cache.put(key, entry)
    return first


def recheck_run(tuning: dict | None, records: list[dict], *, start_round: int = 0, start_seconds: float = 0.0,
                cache_dir="default", load_now: float | None = None) -> Verdict | None:
    """After a run: re-check the cache entries its chunk (and device split) came from, from its records.

    ``tuning``: the simulation's ``tuning`` dict (a ``TuningRecord``); ``records``: the run's
    evaluation records (``engine.run``); ``load_now`` defaults to :func:`machine_load`.
    """
    from jaxqfl.engine import autotune

    if not tuning or not tuning.get("key"):
        return None
    cache = autotune.TuningCache(autotune.default_cache_dir() if cache_dir == "default" else cache_dir)
    split = tuning.get("device_split") or {}
    observed = steady_round_seconds(*blocks_of_records(records, start_round, start_seconds))
    load_now = machine_load() if load_now is None else load_now
    return recheck(cache, [tuning["key"], split.get("key", "")], observed, load_now,
                   fresh=not tuning.get("cache_hit", False))
