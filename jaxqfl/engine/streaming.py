"""Rounds over a population that stays on the host: each cohort's rows streamed in, double-buffered.

``engine.build`` copies the whole population to every device. When it does not
fit (a million clients), ``build_streaming`` keeps it in host memory and, per
round ``r`` (``jaxqfl.engine.host_loop``):

    host:   cohort_r = sample_cohort(keys.round_key(run_key, r), C, M)    (the same keys as on device)
            block_r  = the cohort's rows, slot-major [M_pad, max_count, *F] (a NumPy gather),
                       put on the devices sharded over "clients" (each device gets its share)
    device: (state, metrics) = round(state, block_r, cohort_r)     (the engine's own round)

and prepares ``block_{r+1}`` on a background thread while round ``r`` runs.
Device memory per round is ``M_pad * max_count * (4 F + 4)`` bytes for the rows
instead of the whole population; host memory is the population plus two blocks, or
only the two blocks for a population memory-mapped from disk (``jaxqfl.data.packed``).

The round program is the one ``engine.build`` compiles (``round_program``),
fed a ``CohortBlock`` instead of the population: slot ``j`` of the block holds
client ``cohort[j]``, whose keys still come from its id. So a streamed run
equals the on-device run of the same seed (float summation order aside), and
compiles once. It returns the same ``Simulation`` as ``engine.build``. Its blocks
can be dispatched in pieces (``jaxqfl.engine.pieces``; the progress bar's ~1 s): a
round's cohort and rows are a function of its round index, so pieces give the same
results; only the first round of a piece gathers its rows without the overlap of
the round before (one gather per piece, about one a second).

Data placement across processes: every process holds the whole population on
its host and gathers the same block; each puts only its own devices' share.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxqfl.data.population import Population
from jaxqfl.engine.evaluation import label_dtype
from jaxqfl.engine.host_loop import StreamStats, host_loop
from jaxqfl.engine.mesh import CLIENTS
from jaxqfl.engine.round import CohortBlock
from jaxqfl.engine.schedule import LocalSchedule
from jaxqfl.engine.simulation import Simulation, setup_round
from jaxqfl.tasks import Task

StreamingSimulation = Simulation  # the same API as engine.build's


def gather_rows(population: Population, cohort: np.ndarray, padded_cohort: int, y_dtype) -> CohortBlock:
    """The cohort's rows, slot-major (host NumPy): slot j < M holds client ``cohort[j]``.

    ``x[j, k] = population.x[offsets[c] + min(k, counts[c] - 1)]`` for ``c = cohort[j]``
    (rows past a client's count repeat its last row; the schedule never reads them).
    Padding slots ``j >= M`` hold zeros and count 1. Only the cohort's rows of ``population.x``
    and ``population.y`` are read: a population memory-mapped from disk (``jaxqfl.data.packed``)
    is read by cohort.
    """
    max_count = population.max_count
    counts = population.counts[cohort].astype(np.int64)
    rows = population.offsets[cohort].astype(np.int64)[:, None] + np.minimum(
        np.arange(max_count)[None, :], counts[:, None] - 1
    )  # [M, max_count]
    M = len(cohort)
    x = np.zeros((padded_cohort, max_count) + population.feature_shape, np.float32)
    y = np.zeros((padded_cohort, max_count) + population.y.shape[1:], y_dtype)
    if population.x.dtype == np.float32:
        np.take(population.x, rows, axis=0, out=x[:M])
    else:  # cast the cohort's rows only (a memory-mapped population is never read whole)
        x[:M] = population.x[rows]
    y[:M] = population.y[rows]
    c = np.ones((padded_cohort,), np.int32)
    c[:M] = counts
    return CohortBlock(x, y, c)


def build_streaming(
    population: Population,
    model,
    algorithm,
    schedule: LocalSchedule,
    *,
    cohort_size: int,
    aggregator=None,
    task: Task | None = None,
    num_devices: int | None = None,
    chunk_size: int | None = None,
    uplink=None,
    downlink=None,
    client_state: str = "auto",
    eval_batch_size: int = 1024,
    prefetch: bool = True,
    autotune: bool | None = None,
    label_transform=None,
    systems=None,
    deadline: float | None = None,
    stragglers: str = "wait",
) -> Simulation:
    """Like ``engine.build`` (same arguments), with the population left on the host and streamed.

    ``prefetch=False`` prepares each block only when its round starts (no overlap).
    A model with a frozen part (a LoRA base) is refused: a streamed block carries
    only the cohort's rows. A round deadline (``systems``, ``deadline``, ``stragglers``:
    ``engine.build``'s) is refused: the plan reads the population's counts on the devices.
    """
    if not hasattr(population, "x"):
        raise ValueError("a procedural population generates its cohort's rows inside the round: there is nothing "
                         "to stream; use engine.build")
    if deadline is not None or stragglers != "wait" or systems is not None:
        raise ValueError(f"a round deadline (deadline={deadline!r}, stragglers={stragglers!r}) is not available for "
                         f"a streamed population: use engine.build")
    if getattr(model, "bind", None) is not None:
        raise ValueError("streamed populations do not carry a model's frozen part (a LoRA base) yet: "
                         "use engine.build (population on the devices) for a LoRA model")
    if algorithm.personalize is not None:
        import warnings

        warnings.warn("a streamed population does not evaluate the clients' personal models (engine.build does); "
                      "only the global model is evaluated", stacklevel=2)
    setup = setup_round(
        population, model, algorithm, schedule, cohort_size=cohort_size, aggregator=aggregator, task=task,
        num_devices=num_devices, chunk_size=chunk_size, uplink=uplink, downlink=downlink,
        client_state=client_state, eval_batch_size=eval_batch_size, autotune=autotune,
        label_transform=label_transform,
    )
    mesh, layout = setup.mesh, setup.layout
    sharded = NamedSharding(mesh, P(CLIENTS))
    y_dtype = label_dtype(population)
    M_pad, max_count = layout.padded_cohort, population.max_count
    block_abstract = CohortBlock(
        jax.ShapeDtypeStruct((M_pad, max_count) + population.feature_shape, jnp.float32, sharding=sharded),
        jax.ShapeDtypeStruct((M_pad, max_count) + population.y.shape[1:], y_dtype, sharding=sharded),
        jax.ShapeDtypeStruct((M_pad,), jnp.int32, sharding=sharded),
    )
    block_bytes = M_pad * (max_count * (4 * int(np.prod(population.feature_shape))
                                        + np.dtype(y_dtype).itemsize * int(np.prod(population.y.shape[1:]))) + 4)
    compile_round, run_block, stats, cohort, traces = host_loop(
        mesh=mesh, layout=layout, num_clients=population.num_clients, one_round=setup.one_round,
        abstract_state=setup.abstract_state, state_sharding=setup.state_sharding, data=None, data_abstract=block_abstract,
        gather_block=lambda ids: gather_rows(population, ids, M_pad, y_dtype), block_bytes=block_bytes,
        host_home=setup.home == "host", prefetch=prefetch,
    )
    return Simulation(
        init=setup.init, run_block=run_block, compile_block=lambda num_rounds: compile_round(),
        evaluate=setup.evaluate, trace_count=traces, num_devices=mesh.devices.size, chunk_size=layout.chunk,
        cohort_size=cohort_size, clients_per_device=layout.per_device, num_params=layout.num_params,
        client_state_home=setup.home, stream_stats=stats, cohort=cohort, tuning=setup.tuning,
    )


__all__ = ["StreamStats", "StreamingSimulation", "build_streaming", "gather_rows"]
