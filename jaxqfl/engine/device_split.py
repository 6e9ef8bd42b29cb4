"""On a CPU host: one XLA device per core, or one device using every core? Measured, like the chunk.

``jaxqfl`` splits a CPU host into one XLA device per core before JAX starts
(``--xla_force_host_platform_device_count``; the split cannot change once JAX
runs). Inside that process a mesh of ONE of those devices still uses every
core, through XLA's intra-op thread pool (on the 2-core EPYC of
``benchmarks/RESULTS.md``: a 2048^2 float32 matmul on device 0 of a 2-device
process runs at 192 GFLOP/s, against 207 in a 1-device process and 104 pinned
to one core). So the split is a choice of mesh, made when the round is built:

    candidates  D in (all devices, 1)
    layout_all  = the chunk tuner's pick on all devices             (jaxqfl.engine.layout_search)
    layout_1    = the cost model's chunk on one device               (a probe: one compilation)
    t_D         = predicted round seconds of layout_D as timed by its search; when the
                  two are within 1.25x, re-timed side by side (interleaved rounds, same load)
    picked      = argmin_D t_D; when the probe wins, one device's chunk is searched too

Why it matters: with D devices each core trains its share of the cohort with
its own chunks (parallel over clients, single-threaded ops); with one device
the whole cohort's chunks run one after another, each op spread over the cores
(parallel inside the ops). Many small clients favour the split; a few clients
with large layers can favour one device.

The search runs only when it can matter: a CPU backend with several devices,
one process, and no device count fixed by the caller (``num_devices=None``;
``--devices`` on the command line). On the 2-core EPYC every bench workload
ran faster on both devices (``benchmarks/RESULTS.md``), so the one-device
side gets a probe, not a search, unless it wins. Each D's chunk search is cached on its
own; the split decision is cached under a key derived from the all-device
search's key, so a second run of the same shape times nothing. The split entry
records its conditions too and is decided again when
``jaxqfl.engine.tuning_conditions`` no longer trusts it. Results do not
depend on the pick: a round's result is invariant to the device count (tested
in ``tests/test_engine.py`` and ``tests/test_autotune.py``).
"""
from __future__ import annotations

import time

import jax

from jaxqfl.engine import autotune, tuning_conditions
from jaxqfl.engine.mesh import client_mesh


CLEAR_MARGIN = 1.25  # the searches' own timings decide when the runner-up is this much slower; else a duel


def _searched_seconds(record) -> float | None:
    """The predicted round seconds of a search's pick, as the search timed it (None: not timed)."""
    return dict(zip(record.candidates, record.seconds)).get(record.picked)


def split_candidates(num_devices: int | None) -> list[int]:
    """``[all devices, 1]`` when the split is worth tuning (module docstring), else ``[]``."""
    devices = jax.devices()
    if num_devices is not None or devices[0].platform != "cpu" or len(devices) == 1 or jax.process_count() > 1:
        return []
    return [len(devices), 1]


def tuned_mesh_and_layout(
    population, model, algorithm, aggregator, schedule, task, candidates: list[int], *, cohort_size: int,
    uplink=None, downlink=None, cache_dir="default", budget_seconds: float | None = None, rounds: int = 3,
):
    """``(mesh, layout, record)``: the fastest of the device counts ``candidates`` (module docstring).

    ``record`` is the picked mesh's ``TuningRecord`` with ``device_split`` filled in. The
    first candidate (all devices) gets the whole chunk search (``budget_seconds``,
    ``autotune.default_budget()`` when None); every other device count is first probed
    at its cost model's chunk alone (one compilation, not cached), and the picks are
    re-timed side by side (``rounds`` interleaved rounds each). Only a device count whose
    probe wins gets its own chunk search (the same budget), so on a host where the split
    wins, as measured on the bench workloads, tuning costs one compilation more than
    the chunk search alone. When the searches' own timings differ by more than
    ``CLEAR_MARGIN`` the re-timing is skipped (it costs ``rounds`` rounds of each pick:
    10 s for the CNN workload on 2 cores).
    """
    from jaxqfl.engine.layout_search import tuned_layout

    t_start = time.perf_counter()
    budget_seconds = autotune.default_budget() if budget_seconds is None else budget_seconds
    cache = autotune.TuningCache(autotune.default_cache_dir() if cache_dir == "default" else cache_dir)

    def search(D: int, budget: float, cached: bool):
        keep: dict = {}
        mesh = client_mesh(D)
        layout, record = tuned_layout(population, model, algorithm, aggregator, schedule, task, mesh,
                                      cohort_size=cohort_size, uplink=uplink, downlink=downlink,
                                      cache_dir=cache_dir if cached else None, keep=keep, budget_seconds=budget)
        return mesh, layout, record, keep

    load = tuning_conditions.machine_load()
    first = search(candidates[0], budget_seconds, True)
    key = autotune.cache_key({"device_split_of": first[2].key, "candidates": candidates}) if first[2].key else ""
    hit = cache.get(key) if key else None
    retuned = None if hit is None else tuning_conditions.stale_reason(hit, load)
    if hit is not None and hit.get("devices") in candidates and retuned is None:
        D = hit["devices"]
        mesh, layout, record, _ = first if D == candidates[0] else search(D, budget_seconds, True)
        if layout.chunk == hit["chunk"]:  # else the per-mesh cache moved on: decide again
            old = hit.get("device_split", {})
            split = {"candidates": candidates, "seconds": old.get("seconds", [None] * len(candidates)),
                     "picked": D, "cache_hit": True, "tuning_seconds": time.perf_counter() - t_start, "key": key}
            return mesh, layout, record._replace(device_split=split)
    picks = {candidates[0]: first}
    for D in candidates[1:]:  # a probe: the cost model's chunk only
        picks[D] = search(D, 0.0, False)
    best = {D: _searched_seconds(p[2]) for D, p in picks.items()}
    known = {D: t for D, t in best.items() if t is not None}
    clear = len(known) == len(picks) and sorted(known.values())[1] > CLEAR_MARGIN * min(known.values())
    if not clear:  # close (or a pick from the cache, untimed here): re-time the picks side by side
        timed = {D: (p[3]["timed_round"](), p[3]["scale"]) for D, p in picks.items() if "timed_round" in p[3]}
        seconds = {D: [] for D in timed}
        for _ in range(rounds):  # interleaved: every pick sees the same load
            for D, (timed_round, scale) in timed.items():
                seconds[D].append(timed_round() * scale)
        best = {D: min(t) for D, t in seconds.items()}
    D = min(best, key=lambda d: (best[d], -d)) if best else candidates[0]
    if D != candidates[0]:  # a probe won: search its chunk too (cached)
        picks[D] = search(D, budget_seconds, True)
    mesh, layout, record, _ = picks[D]
    split = {"candidates": candidates, "seconds": [best.get(d) for d in candidates], "picked": D,
             "cache_hit": False, "tuning_seconds": time.perf_counter() - t_start, "key": key, "retuned": retuned}
    if key:
        cache.put(key, {"chunk": layout.chunk, "devices": D, "device_split": split,
                        "conditions": tuning_conditions.conditions(best.get(D), load),
                        "written": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return mesh, layout, record._replace(device_split=split)
