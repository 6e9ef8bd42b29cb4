"""Timing candidate client layouts on the devices: the engine's side of autotuning.

``tuned_layout`` is what ``setup_round`` calls when ``chunk_size=None`` and
tuning is on. For each candidate chunk ``c`` (``chunking.candidate_chunks``,
seeded by the cost model, within ``chunking.max_chunk_for_memory``) it builds
the engine's own round program (``round_program``) for a layout of ``c``
clients per vmap and times it (``measure_layout``):

    per_device_c = padded clients per device at chunk c      (the real round's share)
    k_c          = ceil(min(per_device_c, MEASURE_CLIENTS_PER_DEVICE) / c) chunks are timed
    t_c          = min over a few rounds of the jitted one-round program, after compilation
    predicted_c  = t_c * per_device_c / (k_c c)              (= t_c when the whole share is timed)

The timed round runs on a *measurement population*: ``N`` clients that all
hold the rows of the population's largest client (same ``max_count``, so the
same batch and step shapes), replicated on the mesh, with a real initial state
of ``N`` client rows. The cost of a round depends on shapes only (up to where
the batch rows are read from: here always the same few rows, in cache), so this
times what the real round does, and works the same for ``build`` and
``build_streaming`` (whose population need not fit a device). The two fastest
candidates are then re-timed side by side (``duel``: interleaved rounds of the
programs already compiled) and the faster one is picked (``autotune.tune``).

The pick is cached on disk (``jaxqfl.engine.autotune.TuningCache``) under a key
made of: platform, device kind and count, process count, the CPU model and core
count (CPU), the parameter and client-optimizer-state shapes, feature shape,
batch, steps and largest client, cohort size, a SHA-256 of
the lowered round program of the seed layout (which captures the model, its
quantization policy, the codecs, the task and the algorithm without the engine
naming them), the caller's ``describe`` string, and the jax, jaxlib and jaxqfl
versions. The entry also records the conditions of the search (the pick's round
time, the load); a hit that ``jaxqfl.engine.tuning_conditions.stale_reason``
no longer trusts is searched again and replaced.
"""
from __future__ import annotations

import hashlib
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxqfl
from jaxqfl.engine import autotune, chunking, tuning_conditions
from jaxqfl.engine.conv_layout import contains_convolution
from jaxqfl.engine.evaluation import label_dtype
from jaxqfl.engine.layout import ClientLayout, client_layout, local_state_floats
from jaxqfl.engine.round import DeviceData, round_program
from jaxqfl.engine.state import initial_state
from jaxqfl.models.core import bound

MEASURE_CLIENTS_PER_DEVICE = 512  # a larger share is timed on its first chunks and scaled
MIN_MEASURE_SECONDS = 0.3  # keep timing a candidate's rounds until this much (or MAX_REPEATS) ...
MAX_REPEATS = 3
KEY_VERSION = 1


def lower_round(one_round, state, data):
    """``jit(measured_round)`` lowered for the shapes of ``(state, data)`` (state donated)."""

    def measured_round(state, data):
        return one_round(state, data)

    return jax.jit(measured_round, donate_argnums=(0,)).lower(state, data)


class TimedRound:
    """A compiled round program and its current state: ``timed_round()`` runs one round, returns its seconds."""

    def __init__(self, lowered, init_state, data):
        self.compiled, self.state, self.data = lowered.compile(), init_state, data

    def __call__(self) -> float:
        t0 = time.perf_counter()
        self.state = jax.block_until_ready(self.compiled(self.state, self.data))[0]
        return time.perf_counter() - t0


def measure_layout(lowered, init_state, data, *, min_seconds=MIN_MEASURE_SECONDS, max_repeats=MAX_REPEATS,
                   keep=None) -> float:
    """Seconds of one round of a lowered round program (``lower_round``): min over a few timed rounds.

    Compiles it, runs one warm-up round from ``init_state``, then times rounds
    (each up to ``block_until_ready``) until ``max_repeats`` rounds or
    ``min_seconds`` of rounds. The minimum is the least disturbed by other
    processes sharing the cores. ``keep`` (a list) receives the ``TimedRound``
    for re-timing.
    """
    timed_round = TimedRound(lowered, init_state, data)
    timed_round()  # warm-up
    times: list[float] = []
    while len(times) < max_repeats and sum(times) < min_seconds:
        times.append(timed_round())
    if keep is not None:
        keep.append(timed_round)
    return min(times)


def duel(timed_rounds: dict, rounds: int = MAX_REPEATS) -> dict:
    """``{name: min seconds}`` over ``rounds`` interleaved rounds of each ``TimedRound`` (same load for all)."""
    times = {name: [] for name in timed_rounds}
    for _ in range(rounds):
        for name, timed_round in timed_rounds.items():
            times[name].append(timed_round())
    return {name: min(t) for name, t in times.items()}


def _shapes(tree) -> list:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [[jax.tree_util.keystr(p), list(a.shape), str(a.dtype)] for p, a in leaves]


def tuned_layout(
    population, model, algorithm, aggregator, schedule, task, mesh, *, cohort_size: int, uplink=None,
    downlink=None, budget_seconds: float | None = None, cache_dir="default", describe: str = "",
    keep: dict | None = None,
) -> tuple[ClientLayout, autotune.TuningRecord]:
    """The fastest measured layout of the cohort, and the record of the search (module docstring).

    ``cache_dir="default"`` uses ``autotune.default_cache_dir()``; None disables the cache.
    ``budget_seconds=None``: ``autotune.default_budget()``. ``keep`` (a dict) receives
    ``"timed_round"``, a function returning a ``TimedRound`` of the picked layout (which
    compiles it on a cache hit), and ``"scale"``, the factor from its measured share to the
    real one: what ``jaxqfl.engine.device_split`` duels across meshes.
    """
    budget_seconds = autotune.default_budget() if budget_seconds is None else budget_seconds
    t_start = time.perf_counter()
    load, retuned = tuning_conditions.machine_load(), None
    devices = mesh.devices
    D = devices.size
    device = devices.flat[0]
    seed_layout = client_layout(population, model, algorithm, schedule, cohort_size, D, None, device)
    per_device0 = math.ceil(cohort_size / D)

    # the cost model's working set per client and the memory bound
    sample_x = jnp.zeros((1,) + population.feature_shape, jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), sample_x)
    optimizer_floats = local_state_floats(algorithm, params) - seed_layout.num_params
    batch, steps = schedule.batch(population.max_count), schedule.num_steps(population.max_count)
    features = int(np.prod(population.feature_shape))
    w = chunking.client_working_set(seed_layout.num_params, batch, features, optimizer_floats)
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    max_chunk = chunking.max_chunk_for_memory(
        w, device.platform, num_devices=D, device_memory=(stats or {}).get("bytes_limit")
    )
    candidates = chunking.candidate_chunks(per_device0, seed_layout.chunk, max_chunk)

    def layout_for(chunk: int, measured: bool) -> ClientLayout:
        per_device, num_chunks = chunking.padded_layout(cohort_size, D, chunk)
        chunk = per_device // num_chunks
        if measured:  # the first k chunks of the share
            num_chunks = math.ceil(min(per_device, MEASURE_CLIENTS_PER_DEVICE) / chunk)
            per_device = num_chunks * chunk
            return ClientLayout(D * per_device, D, chunk, num_chunks, per_device, seed_layout.num_params)
        return ClientLayout(cohort_size, D, chunk, num_chunks, per_device, seed_layout.num_params)

    # the measurement population: N clients holding the largest client's rows
    N = max(layout_for(c, True).padded_cohort for c in candidates)
    big = int(np.argmax(population.counts))
    rows = slice(int(population.offsets[big]), int(population.offsets[big]) + population.max_count)
    replicated = NamedSharding(mesh, P())
    data = DeviceData(
        frozen=jax.device_put(model.frozen, replicated),
        x=jax.device_put(population.x[rows].astype(np.float32), replicated),
        y=jax.device_put(population.y[rows].astype(label_dtype(population)), replicated),
        offsets=jax.device_put(np.zeros((N,), np.int32), replicated),
        counts=jax.device_put(np.full((N,), population.max_count, np.int32), replicated),
    )
    init_from_key = initial_state(model, algorithm, aggregator, population.feature_shape, N, uplink=uplink,
                                  downlink=downlink)
    init_program = jax.jit(init_from_key, out_shardings=replicated)

    def round_for(layout):
        return round_program(
            model, algorithm, aggregator, schedule, task, mesh, layout, num_clients=N,
            max_count=population.max_count, uplink=uplink, downlink=downlink,
        )

    cache = autotune.TuningCache(autotune.default_cache_dir() if cache_dir == "default" else cache_dir)
    state_abs = jax.eval_shape(init_from_key, jax.random.key(0))
    state_abs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), state_abs)
    lowered = {candidates[0]: lower_round(round_for(layout_for(candidates[0], True)), state_abs, data)}
    key = ""
    if cache.path is not None:
        program = lowered[candidates[0]].as_text()
        fields = {
            "version": KEY_VERSION,
            "platform": device.platform,
            "device_kind": getattr(device, "device_kind", ""),
            "num_devices": D,
            "process_count": jax.process_count(),
            "cpu": (chunking.cpu_model(), chunking._visible_cores()) if device.platform == "cpu" else None,
            "params": _shapes(params),
            "local_state_floats": optimizer_floats + seed_layout.num_params,
            "feature_shape": list(population.feature_shape),
            "batch": batch,
            "steps": steps,
            "max_count": population.max_count,
            "cohort_size": cohort_size,
            "convolutions": contains_convolution(jax.make_jaxpr(bound(model).apply)(params, sample_x).jaxpr),
            "program": hashlib.sha256(program.encode()).hexdigest(),
            "describe": describe,
            "jax": jax.__version__,
            "jaxlib": getattr(jax.lib, "__version__", None) or jax.__version__,
            "jaxqfl": jaxqfl.__version__,
        }
        key = autotune.cache_key(fields)
        hit = cache.get(key)
        retuned = None if hit is None else tuning_conditions.stale_reason(hit, load)
        if hit is not None and hit["chunk"] <= per_device0 and retuned is None:
            old = hit.get("record", {})
            record = autotune.TuningRecord(
                candidates=old.get("candidates", [hit["chunk"]]),
                seconds=old.get("seconds", [None]),
                skipped=old.get("skipped", {}),
                picked=hit["chunk"],
                seed=old.get("seed", seed_layout.chunk),
                cache_hit=True,
                tuning_seconds=time.perf_counter() - t_start,
                budget_seconds=float(budget_seconds),
                key=key,
            )
            if keep is not None:  # compiled only if the caller re-times the pick
                def timed_pick(chunk=hit["chunk"]):
                    timed = TimedRound(lower_round(round_for(layout_for(chunk, True)), state_abs, data),
                                       init_program(jax.random.key(0)), data)
                    timed()  # warm-up
                    return timed

                keep.update(timed_round=timed_pick, scale=layout_for(hit["chunk"], False).per_device
                            / layout_for(hit["chunk"], True).per_device)
            return layout_for(hit["chunk"], False), record

    kept: dict[int, TimedRound] = {}

    def scale(chunk: int) -> float:  # measured clients -> the real share
        return layout_for(chunk, False).per_device / layout_for(chunk, True).per_device

    def measure(chunk: int) -> float:
        lo = lowered.pop(chunk, None) or lower_round(round_for(layout_for(chunk, True)), state_abs, data)
        keep: list = []
        seconds = measure_layout(lo, init_program(jax.random.key(0)), data, keep=keep)
        if keep:
            kept[chunk] = keep[0]
        return seconds * scale(chunk)

    def confirm(chunks: list[int]) -> dict[int, float]:
        found = {c: kept[c] for c in chunks if c in kept}
        return {c: s * scale(c) for c, s in duel(found).items()}

    left = max(0.0, budget_seconds - (time.perf_counter() - t_start))  # the key and the seed's lowering count too
    record = autotune.tune(candidates, measure, lambda c: c <= max_chunk, left, confirm=confirm)
    if keep is not None and record.picked in kept:
        keep.update(timed_round=lambda timed=kept[record.picked]: timed, scale=scale(record.picked))
    kept.clear()
    record = record._replace(tuning_seconds=time.perf_counter() - t_start, budget_seconds=float(budget_seconds),
                             key=key, retuned=retuned)
    if key:
        picked_seconds = dict(zip(record.candidates, record.seconds)).get(record.picked)
        cache.put(key, {"chunk": record.picked, "record": record._asdict(), "fields": fields,
                        "conditions": tuning_conditions.conditions(picked_seconds, load),
                        "written": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return layout_for(record.picked, False), record
