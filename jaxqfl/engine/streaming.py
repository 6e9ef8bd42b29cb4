"""Rounds over a population that stays on the host: each cohort's rows streamed in, double-buffered.

``engine.build`` copies the whole population to every device. When it does not
fit (a million clients), ``build_streaming`` keeps it in host memory and, per
round ``r``:

    host:   cohort_r = sample_cohort(fold_in(run_key, r), C, M)    (the same keys as on device)
            block_r  = the cohort's rows, slot-major [M_pad, max_count, *F] (a NumPy gather),
                       put on the devices sharded over "clients" (each device gets its share)
    device: (state, metrics) = round(state, block_r, cohort_r)     (the engine's own round)

and prepares ``block_{r+1}`` on a background thread while round ``r`` runs
(double buffering: at most two blocks are alive). Device memory per round is
``M_pad * max_count * (4 F + 4)`` bytes for the rows instead of the whole
population; host memory is the population plus two blocks.

The round program is the one ``engine.build`` compiles (``round_program``),
fed a ``CohortBlock`` instead of the population: slot ``j`` of the block holds
client ``cohort[j]``, whose keys still come from its id. So a streamed run
equals the on-device run of the same seed (float summation order aside), and
compiles once: one program per run, whatever the round or the key.

Data placement across processes: every process holds the whole population on
its host (as with ``engine.build``) and gathers the same block; each puts only
its own devices' share.
"""
from __future__ import annotations

import concurrent.futures
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxqfl import keys
from jaxqfl.algorithms.fedavg import Algorithm
from jaxqfl.data.population import Population
from jaxqfl.engine.mesh import CLIENTS
from jaxqfl.engine.schedule import LocalSchedule
from jaxqfl.engine.simulation import CohortBlock, ServerState, label_dtype, sample_cohort, setup_round
from jaxqfl.tasks import Task


class StreamStats(NamedTuple):
    rounds: int
    seconds: float  # wall time of the rounds, compilation excluded
    host_seconds: float  # time spent sampling + gathering + putting blocks (overlapped with rounds)
    block_bytes: int  # bytes of one cohort block (rows + labels + counts)


class StreamingSimulation(NamedTuple):
    """A simulation whose population lives on the host (see module docstring)."""

    init: Callable  # init(seed) -> ServerState
    run: Callable  # run(state, rounds) -> (state, [RoundMetrics on the host], StreamStats)
    compile: Callable  # compile() -> seconds (cached)
    cohort: Callable  # cohort(run_key or its key data, round) -> np.ndarray [M] int32
    gather: Callable  # gather(cohort) -> CohortBlock of NumPy arrays
    num_devices: int
    chunk_size: int
    cohort_size: int
    clients_per_device: int
    num_params: int
    tuning: dict | None = None  # the chunk-size search (see Simulation.tuning)


def gather_rows(population: Population, cohort: np.ndarray, padded_cohort: int, y_dtype) -> CohortBlock:
    """The cohort's rows, slot-major (host NumPy): slot j < M holds client ``cohort[j]``.

    ``x[j, k] = population.x[offsets[c] + min(k, counts[c] - 1)]`` for ``c = cohort[j]``
    (rows past a client's count repeat its last row; the schedule never reads them).
    Padding slots ``j >= M`` hold zeros and count 1.
    """
    max_count = population.max_count
    counts = population.counts[cohort].astype(np.int64)
    rows = population.offsets[cohort].astype(np.int64)[:, None] + np.minimum(
        np.arange(max_count)[None, :], counts[:, None] - 1
    )  # [M, max_count]
    M = len(cohort)
    x = np.zeros((padded_cohort, max_count) + population.feature_shape, np.float32)
    y = np.zeros((padded_cohort, max_count), y_dtype)
    np.take(population.x.astype(np.float32, copy=False), rows, axis=0, out=x[:M])
    y[:M] = population.y[rows]
    c = np.ones((padded_cohort,), np.int32)
    c[:M] = counts
    return CohortBlock(x, y, c)


def build_streaming(
    population: Population,
    model,
    algorithm: Algorithm,
    schedule: LocalSchedule,
    *,
    cohort_size: int,
    task: Task | None = None,
    num_devices: int | None = None,
    chunk_size: int | None = None,
    uplink=None,
    downlink=None,
    integer_aggregation: bool = False,
    prefetch: bool = True,
    autotune: bool | None = None,
) -> StreamingSimulation:
    """Like ``engine.build`` (same arguments), with the population left on the host and streamed.

    ``prefetch=False`` prepares each block only when its round starts (no overlap).
    """
    _, mesh, layout, one_round, init_from_key, init_program, tuning = setup_round(
        population, model, algorithm, schedule, cohort_size=cohort_size, task=task, num_devices=num_devices,
        chunk_size=chunk_size, uplink=uplink, downlink=downlink, integer_aggregation=integer_aggregation,
        autotune=autotune,
    )
    D = mesh.devices.size
    replicated = NamedSharding(mesh, P())
    sharded = NamedSharding(mesh, P(CLIENTS))
    C, M = population.num_clients, cohort_size
    y_dtype = label_dtype(population)

    @jax.jit
    def cohort_program(run_key_data, r):
        run_key = jax.random.wrap_key_data(run_key_data)
        return sample_cohort(keys.round_key(run_key, r), C, M)
    def streamed_round(state, block, cohort):
        return one_round(state, block, cohort)

    round_jit = jax.jit(streamed_round, donate_argnums=(0,), out_shardings=replicated)
    compiled = {}

    def init(seed: int) -> ServerState:
        return init_program(jax.random.key(seed))

    def cohort(run_key, round_index: int) -> np.ndarray:
        """The [M] ids of round ``round_index`` (``run_key``: a key, or its host key data)."""
        if isinstance(run_key, jax.Array) and jnp.issubdtype(run_key.dtype, jax.dtypes.prng_key):
            run_key = jax.random.key_data(run_key)
        return np.asarray(jax.device_get(cohort_program(np.asarray(run_key), jnp.int32(round_index))))

    def gather(ids: np.ndarray) -> CohortBlock:
        return gather_rows(population, ids, layout.padded_cohort, y_dtype)

    def compile() -> float:
        if "round" in compiled:
            return 0.0
        t0 = time.perf_counter()
        state = jax.eval_shape(init_from_key, jax.random.key(0))
        state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), state)
        block = CohortBlock(
            jax.ShapeDtypeStruct((layout.padded_cohort, population.max_count) + population.feature_shape,
                                 jnp.float32, sharding=sharded),
            jax.ShapeDtypeStruct((layout.padded_cohort, population.max_count), y_dtype, sharding=sharded),
            jax.ShapeDtypeStruct((layout.padded_cohort,), jnp.int32, sharding=sharded),
        )
        ids = jax.ShapeDtypeStruct((M,), jnp.int32, sharding=replicated)
        compiled["round"] = round_jit.lower(state, block, ids).compile()
        return time.perf_counter() - t0

    def prepare(run_key, round_index: int):
        """Sample, gather and put one round's block; returns (device block, device ids, host seconds)."""
        t0 = time.perf_counter()
        ids = cohort(run_key, round_index)
        block = jax.device_put(gather(ids), sharded)
        ids_dev = jax.device_put(ids, replicated)
        jax.block_until_ready((block, ids_dev))
        return block, ids_dev, time.perf_counter() - t0

    def run(state: ServerState, rounds: int):
        """Run ``rounds`` streamed rounds from ``state``; metrics come back to the host."""
        if not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
        compile()
        program = compiled["round"]
        state = jax.device_put(state, replicated)
        # host copies: the state (and its key) is donated to the first round
        run_key, r0 = np.asarray(jax.device_get(jax.random.key_data(state.key))), int(jax.device_get(state.round))
        metrics, host_seconds = [], 0.0
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(prepare, run_key, r0)
            for i in range(rounds):
                block, ids, seconds = pending.result()
                host_seconds += seconds
                state, m = program(state, block, ids)  # dispatched asynchronously
                if not prefetch:
                    jax.block_until_ready(state)
                if i + 1 < rounds:  # with prefetch, the next block is gathered while this round runs
                    pending = pool.submit(prepare, run_key, r0 + i + 1)
                metrics.append(m)
                del block
            jax.block_until_ready(state)
        seconds = time.perf_counter() - t0
        metrics = [jax.device_get(m) for m in metrics]
        block_bytes = layout.padded_cohort * (
            population.max_count * (4 * int(np.prod(population.feature_shape)) + np.dtype(y_dtype).itemsize) + 4
        )
        return state, metrics, StreamStats(rounds, seconds, host_seconds, block_bytes)

    return StreamingSimulation(
        init=init,
        run=run,
        compile=compile,
        cohort=cohort,
        gather=gather,
        num_devices=D,
        chunk_size=layout.chunk,
        cohort_size=M,
        clients_per_device=layout.per_device,
        num_params=layout.num_params,
        tuning=tuning,
    )


__all__ = ["StreamStats", "StreamingSimulation", "build_streaming", "gather_rows"]
