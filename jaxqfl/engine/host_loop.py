"""Rounds driven from the host, one program per round: streamed data and host-home client states.

When the host must act between rounds -- put the next cohort's rows on the
devices (``build_streaming``) or gather and write back the cohort's client
states (the ``"host"`` home) -- a block of R rounds runs as R calls of one
compiled round program::

    host:   cohort_r = sample_cohort(keys.round_key(run_key, r), C, M)     (the same keys as on device)
            [block_r = the cohort's data rows]                      (streamed data)
            [rows_r  = the cohort's client-state rows]              (host home)
    device: state, metrics[, new rows] = round(state, data or block_r, cohort_r[, rows_r])
    host:   [client states[cohort_r] = new rows]

Streamed data blocks are prepared on a background thread while the previous
round runs (double buffering: at most two blocks alive). Client-state rows are
gathered after the previous round's write-back (cohorts may overlap).
``run_block`` returns the same stacked ``RoundMetrics`` as the on-device block
program, so ``engine.run`` drives both.
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
from jaxqfl.engine.mesh import CLIENTS
from jaxqfl.engine.round import sample_cohort


class StreamStats(NamedTuple):
    rounds: int
    seconds: float  # wall time of the rounds, compilation excluded
    host_seconds: float  # time spent sampling + gathering + putting blocks (overlapped with rounds)
    block_bytes: int  # bytes of one cohort's data block (0 when the data is on the devices)


def zero_metrics_like(m):
    return jax.tree.map(lambda a: np.zeros(np.shape(a), np.asarray(a).dtype), m)


def stack_metrics(per_round: list, num_rounds: int):
    """[R]-stacked metrics; rounds past the active ones are zeros with ``active=False``."""
    per_round = list(per_round)
    while len(per_round) < num_rounds:
        per_round.append(zero_metrics_like(per_round[0])._replace(active=np.asarray(False)))
    return jax.tree.map(lambda *a: np.stack(a), *per_round)


def host_loop(
    *, mesh, layout, num_clients: int, one_round: Callable, abstract_state: Callable, state_sharding, data,
    data_abstract,
    gather_block: Callable | None, block_bytes: int, host_home: bool, prefetch: bool = True,
):
    """``(compile() -> seconds, run_block(state, R, num_active) -> (state, metrics), stats() -> StreamStats)``.

    ``data``: the device data (``DeviceData``) or None when ``gather_block(ids)``
    makes each round's block. ``abstract_state()``: the state's shapes (client
    states excluded for the host home).
    """
    replicated = NamedSharding(mesh, P())
    sharded = NamedSharding(mesh, P(CLIENTS))
    C, M, M_pad = num_clients, layout.cohort_size, layout.padded_cohort
    totals = {"rounds": 0, "seconds": 0.0, "host_seconds": 0.0}
    traces = [0]

    @jax.jit
    def cohort_program(run_key_data, r):
        return sample_cohort(keys.round_key(jax.random.wrap_key_data(run_key_data), r), C, M)

    def round_fn(state, data, cohort, rows):
        traces[0] += 1
        if host_home:
            return one_round(state, data, cohort, rows)
        return one_round(state, data, cohort)

    dev_sharding = state_sharding._replace(client_states=()) if host_home else state_sharding
    out_shardings = (dev_sharding, replicated, sharded) if host_home else (dev_sharding, replicated)
    round_jit = jax.jit(round_fn, donate_argnums=(0,), out_shardings=out_shardings)
    compiled = {}

    def cohort(run_key, r: int) -> np.ndarray:
        """The [M] ids of round ``r`` (``run_key``: a typed key, or its host key data)."""
        if isinstance(run_key, jax.Array) and jnp.issubdtype(run_key.dtype, jax.dtypes.prng_key):
            run_key = jax.random.key_data(run_key)
        return np.asarray(jax.device_get(cohort_program(np.asarray(run_key), jnp.int32(r))))

    def _rows_abstract(state_abs):
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct((M_pad,) + a.shape[1:], a.dtype, sharding=sharded),
                            state_abs.client_states)

    def compile() -> float:
        if "round" in compiled:
            return 0.0
        t0 = time.perf_counter()
        state_abs = abstract_state()
        dev_abs = state_abs._replace(client_states=()) if host_home else state_abs
        dev_abs = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), dev_abs, dev_sharding)
        rows = _rows_abstract(state_abs) if host_home else None
        ids = jax.ShapeDtypeStruct((M,), jnp.int32, sharding=replicated)
        compiled["round"] = round_jit.lower(dev_abs, data_abstract, ids, rows).compile()
        return time.perf_counter() - t0

    def prepare(run_key_data, r: int):
        t0 = time.perf_counter()
        ids = cohort(run_key_data, r)
        block = jax.device_put(gather_block(ids), sharded) if gather_block is not None else data
        ids_dev = jax.device_put(ids, replicated)
        jax.block_until_ready((block, ids_dev))
        return ids, block, ids_dev, time.perf_counter() - t0

    def run_block(state, num_rounds: int, num_active: int | None = None):
        """Run ``num_active`` (default all) of ``num_rounds`` rounds, one program call each.

        The state passed in is consumed (device buffers donated; host-home rows updated in place).
        """
        if not isinstance(num_rounds, int) or num_rounds < 1:
            raise ValueError(f"num_rounds must be a positive integer, got {num_rounds!r}")
        num_active = num_rounds if num_active is None else num_active
        if not 1 <= num_active <= num_rounds:
            raise ValueError(f"num_active must lie in [1, {num_rounds}] for rounds driven from the host, "
                             f"got {num_active}")
        compile()
        program = compiled["round"]
        host_states = state.client_states if host_home else None
        dev_state = jax.device_put(state._replace(client_states=()) if host_home else state, dev_sharding)
        run_key = np.asarray(jax.device_get(jax.random.key_data(state.key)))
        r0 = int(jax.device_get(state.round))
        metrics = []
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(prepare, run_key, r0)
            for i in range(num_active):
                ids, block, ids_dev, seconds = pending.result()
                totals["host_seconds"] += seconds
                if host_home:
                    slots = np.zeros((M_pad,), np.int64)
                    slots[:M] = ids
                    rows = jax.device_put(jax.tree.map(lambda s: s[slots], host_states), sharded)
                    dev_state, m, new_rows = program(dev_state, block, ids_dev, rows)
                else:
                    dev_state, m = program(dev_state, block, ids_dev, None)
                if not prefetch:
                    jax.block_until_ready(dev_state)
                if i + 1 < num_active:  # the next block is gathered while this round runs
                    pending = pool.submit(prepare, run_key, r0 + i + 1)
                if host_home:
                    new_rows = jax.device_get(new_rows)
                    jax.tree.map(lambda s, n: s.__setitem__(ids, n[:M]), host_states, new_rows)
                metrics.append(m)
                del block
            jax.block_until_ready(dev_state)
        totals["seconds"] += time.perf_counter() - t0
        totals["rounds"] += num_active
        metrics = stack_metrics([jax.device_get(m) for m in metrics], num_rounds)
        if host_home:
            dev_state = dev_state._replace(client_states=host_states)
        return dev_state, metrics

    def stats() -> StreamStats:
        return StreamStats(totals["rounds"], totals["seconds"], totals["host_seconds"], block_bytes)

    return compile, run_block, stats, cohort, lambda: traces[0]
