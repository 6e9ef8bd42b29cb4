"""Building a FedBuff simulation: blocks of buffer flushes as one program each, driven by ``engine.run``.

``build_fedbuff`` returns the ``Simulation`` API of ``engine.build`` (``init``,
``run_block``, ``compile_block``, ``evaluate``, ``trace_count``, ...), where one
"round" of the driver is one flush (``jaxqfl.engine.fedbuff``): a block of R flushes
is a ``lax.scan`` over ``flush`` (tail flushes past ``num_active`` skipped with
``lax.cond``, as in ``engine.simulation``), so records, ``sim_time`` (the flush times,
through the server metric ``ROUND_SECONDS``), ``metrics.jsonl`` and ``summary.json``
work unchanged. ``init(seed)`` runs the fill (the first C clients' training) too.

The state is a ``FedBuffState`` (server state + in-flight table + last flush time),
replicated on every device of the mesh; ``jaxqfl.engine.checkpoint`` saves and restores
it whole (a ``Simulation.init(seed)`` state is the template), so a resumed run is the
uninterrupted one bit for bit (``tests/test_fedbuff_resume.py``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxqfl.aggregate.base import check_aggregator
from jaxqfl.data.population import Population
from jaxqfl.engine.evaluation import build_evaluate
from jaxqfl.engine.fedbuff import check_stateless, fedbuff_program, staleness_weight
from jaxqfl.engine.mesh import client_mesh
from jaxqfl.engine.schedule import LocalSchedule
from jaxqfl.engine.simulation import Simulation, block_compiler, check_model_outputs, default_aggregator, device_data
from jaxqfl.engine.state import initial_state, num_params, one_client_states
from jaxqfl.tasks import Task, default_for


def check_fedbuff(num_clients: int, concurrency, buffer, staleness, systems) -> None:
    """``1 <= buffer <= concurrency <= num_clients``, a staleness name, one speed per client; ValueError naming it."""
    for name, value in (("concurrency", concurrency), ("buffer", buffer)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if concurrency > num_clients:
        raise ValueError(f"concurrency {concurrency} exceeds the {num_clients} clients of the population")
    if buffer > concurrency:
        raise ValueError(f"buffer {buffer} exceeds concurrency {concurrency} (K <= C: a flush needs K arrivals)")
    staleness_weight(staleness)
    if systems is None or not hasattr(systems, "seconds_per_step"):
        raise ValueError("FedBuff runs on the virtual clock: pass systems=jaxqfl.systems.ClientSystems(...)")
    for name in ("seconds_per_step", "bandwidth"):
        shape = np.shape(getattr(systems, name))
        if shape != (num_clients,):
            raise ValueError(f"systems.{name} must have shape ({num_clients},), one value per client, got {shape}")


def build_fedbuff(
    population: Population, model, algorithm, schedule: LocalSchedule, *, concurrency: int, buffer: int,
    staleness: str = "constant", systems, aggregator=None, uplink=None, downlink=None, task: Task | None = None,
    num_devices: int | None = None, eval_batch_size: int = 1024, label_transform=None,
) -> Simulation:
    """Build FedBuff (Nguyen et al. 2022) on ``population``: C = ``concurrency`` clients in flight, a flush every
    K = ``buffer`` arrivals, staleness weight ``"constant"`` / ``"sqrt"`` / ``"poly:A"``, speeds ``systems``.

    ``Simulation.cohort_size`` is K (clients aggregated per flush); one driver round is one flush.
    Refuses (ValueError, before any work) K, C outside ``1 <= K <= C <= num_clients``, an unknown
    staleness, a systems profile of the wrong length and per-client persistent state.
    """
    N = population.num_clients
    check_fedbuff(N, concurrency, buffer, staleness, systems)
    if not isinstance(eval_batch_size, int) or eval_batch_size < 1:
        raise ValueError(f"eval_batch_size must be a positive integer, got {eval_batch_size!r}")
    aggregator = check_aggregator(default_aggregator() if aggregator is None else aggregator)
    task = task or default_for(population)
    sample_x = jnp.zeros((1,) + population.feature_shape, jnp.float32)
    params_abs = jax.eval_shape(model.init, jax.random.key(0), sample_x)
    if task.name in ("classification", "regression", "next-token"):
        check_model_outputs(model, params_abs, population)
    per_client = one_client_states(algorithm, aggregator, uplink=uplink, downlink=downlink, model=model)
    check_stateless(jax.eval_shape(per_client, params_abs))
    mesh = client_mesh(num_devices)
    data = device_data(population, mesh, model.frozen)
    fill, flush = fedbuff_program(
        model, algorithm, aggregator, schedule, task, num_clients=N, max_count=population.max_count,
        concurrency=int(concurrency), buffer=int(buffer), staleness=staleness, systems=systems,
        client_states=per_client(jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), params_abs)),
        uplink=uplink, downlink=downlink, label_transform=label_transform,
        platform=mesh.devices.flat[0].platform)
    init_server = initial_state(model, algorithm, aggregator, population.feature_shape, N, uplink=uplink,
                                downlink=downlink, client_rows=0)
    replicated = NamedSharding(mesh, P())
    # every device runs the whole (replicated) program as it is: a shard_map with replicated specs keeps the
    # partitioner from splitting it, so 1 and D devices compute the same bits
    everywhere = lambda fn, n_in, n_out: jax.shard_map(fn, mesh=mesh, in_specs=(P(),) * n_in,
                                                        out_specs=P() if n_out == 1 else (P(),) * n_out,
                                                        check_vma=False)
    start = everywhere(lambda run_key, d: fill(init_server(run_key), d), 2, 1)
    state_abs = jax.eval_shape(start, jax.random.key(0), data)
    sharding = jax.tree.map(lambda _: replicated, state_abs)
    init_program = jax.jit(start, out_shardings=sharding)

    def init(seed: int):
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        return init_program(jax.random.key(int(seed)), data)

    traces = [0]

    def block(state, d, num_active, *, num_rounds: int):
        traces[0] += 1

        def body(state, i):
            def skip(state):
                zeros = jax.eval_shape(lambda s: flush(s, d)[1], state)
                return state, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), zeros)._replace(
                    active=jnp.asarray(False))

            return jax.lax.cond(i < num_active, lambda s: flush(s, d), skip, state)

        return jax.lax.scan(body, state, jnp.arange(num_rounds))

    def lower_block(num_rounds: int):
        fn = jax.jit(everywhere(lambda s, d, n: block(s, d, n, num_rounds=num_rounds), 3, 2), donate_argnums=(0,),
                     out_shardings=(sharding, replicated))
        abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state_abs, sharding)
        return fn.lower(abstract, data, jnp.int32(num_rounds))

    compile_block, compiled = block_compiler(lower_block)

    def run_block(state, num_rounds: int, num_active: int | None = None):
        """Run ``num_active`` (default all) of a block of ``num_rounds`` flushes; one program per block size."""
        compile_block(num_rounds)
        num_active = num_rounds if num_active is None else num_active
        if not 0 <= num_active <= num_rounds:
            raise ValueError(f"num_active must lie in [0, {num_rounds}], got {num_active}")
        return compiled[num_rounds](jax.device_put(state, sharding), data, jnp.int32(num_active))

    return Simulation(
        init=init, run_block=run_block, compile_block=compile_block,
        evaluate=build_evaluate(population, model, task, mesh, eval_batch_size),
        trace_count=lambda: traces[0], num_devices=mesh.devices.size, chunk_size=int(buffer),
        cohort_size=int(buffer), clients_per_device=int(concurrency), num_params=num_params(params_abs),
        client_state_home="replicated", counted_metrics=("staleness",))
