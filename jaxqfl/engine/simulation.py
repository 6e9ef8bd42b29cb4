"""Building a simulation: the round program for a population, a model, an algorithm and an aggregator.

``build`` puts the population on every device and compiles a *block* of R
rounds as one program: a ``lax.scan`` over ``round_program``'s round; rounds
past ``num_active`` (the tail of the last block) are skipped with
``lax.cond``, so every block of a run is the same program: it traces and
compiles once, and nothing leaves the device inside a block. With the
``"host"`` client-state home, rounds are driven from the host one program
each (``jaxqfl.engine.host_loop``). ``build_streaming``
(``jaxqfl.engine.streaming``) shares the same setup and returns the same
``Simulation`` API, so ``engine.run`` drives both.

Outputs are replicated over the mesh (client states sharded in the
``"sharded"`` home), and the initial state is computed by a program with the
same shardings, so under ``jax.distributed`` every process holds the same state.
"""
from __future__ import annotations

import time
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxqfl.aggregate.base import check_aggregator
from jaxqfl import keys
from jaxqfl.data.population import Population
from jaxqfl.engine import homes
from jaxqfl.engine.autotune import autotune_default
from jaxqfl.engine.client_evaluation import FineTune, build_client_evaluate
from jaxqfl.engine.cohort_draw import check_cohort_draw
from jaxqfl.engine.evaluation import build_evaluate, label_dtype
from jaxqfl.engine.host_loop import host_loop
from jaxqfl.engine.layout import ClientLayout, check_cohort_and_chunk, client_layout
from jaxqfl.engine.mesh import CLIENTS, client_mesh
from jaxqfl.data.procedural import ProceduralPopulation
from jaxqfl.engine.round import DeviceData, ProceduralData, round_program
from jaxqfl.engine.sampling import check_sampling
from jaxqfl.engine.schedule import LocalSchedule
from jaxqfl.engine.state import ServerState, initial_state, one_client_states
from jaxqfl.models.core import bound
from jaxqfl.systems.deadline import check_deadline
from jaxqfl.tasks import Task, default_for


class Simulation(NamedTuple):
    """A built simulation: pure functions over ``ServerState`` plus its static layout."""

    init: Callable  # init(seed) -> ServerState
    run_block: Callable  # run_block(state, num_rounds, num_active=None) -> (state, RoundMetrics[R])
    compile_block: Callable  # compile_block(num_rounds) -> seconds spent compiling (cached)
    evaluate: Callable  # evaluate(params) -> {"loss": float, "accuracy": float, ...}
    trace_count: Callable  # trace_count() -> how many times the round/block program was traced
    num_devices: int
    chunk_size: int
    cohort_size: int
    clients_per_device: int
    num_params: int
    client_state_home: str  # "replicated", "sharded" or "host"
    stream_stats: Callable | None = None  # host-driven rounds: stream_stats() -> StreamStats
    cohort: Callable | None = None  # host-driven rounds: cohort(run_key_data, round) -> [M] ids
    tuning: dict | None = None  # the chunk-size search (jaxqfl.engine.autotune.TuningRecord), when one ran
    sampling: str = "fixed"  # "fixed" or "poisson" (jaxqfl.engine.sampling)
    max_cohort: int | None = None  # Poisson sampling: the static number of cohort slots M_max
    # evaluate_clients(state) -> client_* spread of the models the clients use (personal / fine-tuned), or None
    evaluate_clients: Callable | None = None
    tiers: Any = None  # the checked engine.tiers.Tiers, when clients differ by tier
    systems: Any = None  # with a round deadline: its ClientSystems (engine.run's clock by default)
    # run_block's active rounds may run as several calls (jaxqfl.engine.pieces): no round depends on its position
    piecewise: bool = True
    # per-client integer metrics (RoundMetrics.clients) whose values engine.run counts over the active rounds
    # (RunResult.counts, carried over a resume by RunTotals.counts); FedBuff: ("staleness",)
    counted_metrics: tuple = ()


class RoundSetup(NamedTuple):
    """What ``build`` and ``build_streaming`` share: the checked layout, the round program, the init."""

    task: Task
    mesh: Any
    layout: ClientLayout
    home: str
    one_round: Callable  # round_program(...)
    init: Callable  # init(seed) -> ServerState (client states in their home)
    abstract_state: Callable  # () -> ServerState of ShapeDtypeStructs (with shardings for device homes)
    state_sharding: Any  # pytree of NamedShardings of the state (device homes)
    evaluate: Callable
    tuning: dict | None = None  # the chunk-size search record, when one ran
    sampling: str = "fixed"
    max_cohort: int | None = None  # Poisson: M_max slots (None for fixed-size sampling)
    tiers: Any = None  # the checked tiers (engine.tiers), or None


def default_aggregator():
    from jaxqfl.aggregate.mean import mean

    return mean()


def checked_tiers(tiers, population: Population, model, aggregator, uplink):
    """``(tiers checked, the codec whose init gives each client's uplink state)``; refuses what tiers cannot take."""
    from jaxqfl.compress.switch import switch
    from jaxqfl.engine.tiers import check_tiers
    from jaxqfl.models.switch import check_switchable

    if uplink is not None:
        raise ValueError("with tiers every client sends with its tier's codec (Tiers.uplinks); pass uplink=None")
    if aggregator is not None and check_aggregator(aggregator).encodes_uplink:
        raise ValueError("this aggregator encodes the uplink itself (secure aggregation sums one codec's integer "
                         "codes); clients of different tiers send different codes: use a float aggregator")
    tiers = check_tiers(tiers, population.num_clients)
    sample_x = jnp.zeros((1,) + population.feature_shape, jnp.float32)
    check_switchable((model,) + tuple(tiers.models), sample_x, ("the run's model",) + tuple(tiers.names))
    if tiers.model_at is not None:  # the one-pass model must have the tiers' parameters too
        check_switchable((model, tiers.model_at(jnp.int32(0))), sample_x, ("the run's model", "Tiers.model_at"))
    return tiers, switch(tiers.uplinks, 0)


def evaluate_per_tier(evaluate: Callable, per_tier: Sequence[Callable]) -> Callable:
    """``evaluate`` plus, per tier t, the same params under tier t's model: keys ``tier<t>_<metric>``."""

    def both(params) -> dict:
        out = dict(evaluate(params))
        for t, ev in enumerate(per_tier):
            out.update({f"tier{t}_{k}": v for k, v in ev(params).items()})
        return out

    return both


def setup_round(
    population: Population, model, algorithm, schedule: LocalSchedule, *, cohort_size, aggregator, task,
    num_devices, chunk_size, uplink, downlink, client_state: str, eval_batch_size: int, autotune=None,
    label_transform=None, sampling: str = "fixed", max_cohort: int | None = None, tiers=None,
    availability=None, selection=None, systems=None, deadline: float | None = None, stragglers: str = "wait",
    cohort_sampler: str | None = None,
) -> RoundSetup:
    """Check the arguments, build the mesh, the layout, the round program and the initial state.

    With ``sampling="poisson"`` the layout (chunks, padding, autotuning) is sized for the
    ``max_cohort`` slots, not for the expected ``cohort_size``.
    """
    check_cohort_and_chunk(population, cohort_size, chunk_size)
    procedural = isinstance(population, ProceduralPopulation)
    if procedural:
        check_procedural(client_state, sampling, tiers, availability, selection, deadline)
        autotune = False  # the chunk-size search measures rounds on the population's arrays
    if cohort_sampler is None:
        cohort_sampler = "distinct" if procedural else "top-k"
    if cohort_sampler not in ("top-k", "distinct"):
        raise ValueError(f"cohort_sampler must be 'top-k' or 'distinct' (or None), got {cohort_sampler!r}")
    if cohort_sampler == "distinct" and (sampling != "fixed" or availability is not None or selection is not None
                                         or client_state == "host"):
        raise ValueError("cohort_sampler='distinct' draws a fixed-size cohort inside the round program: not with "
                         "Poisson sampling, availability, selection or the 'host' client-state home")
    check_deadline(deadline, stragglers, systems, population.num_clients)  # before any work
    availability, selection = check_cohort_draw(population.num_clients, cohort_size, client_state, sampling, tiers,
                                                availability, selection, systems)
    if tiers is not None:
        tiers, uplink = checked_tiers(tiers, population, model, aggregator, uplink)
    homes.check_home(client_state)
    slots = check_sampling(sampling, population.num_clients, cohort_size, max_cohort)
    if sampling == "poisson" and client_state == "host":
        raise ValueError("Poisson sampling draws the cohort inside the round program; the 'host' client-state "
                         "home needs it on the host first: use client_state='replicated' or 'sharded'")
    if not isinstance(eval_batch_size, int) or eval_batch_size < 1:
        raise ValueError(f"eval_batch_size must be a positive integer, got {eval_batch_size!r}")
    aggregator = check_aggregator(default_aggregator() if aggregator is None else aggregator)
    task = task or default_for(population)
    mesh = client_mesh(num_devices)
    tuning = None
    if chunk_size is None and (autotune_default() if autotune is None else autotune) and jax.process_count() == 1:
        from jaxqfl.engine import device_split  # measures candidate layouts (processes would disagree)
        from jaxqfl.engine.layout_search import tuned_layout

        split = device_split.split_candidates(num_devices)
        if split:  # a CPU host split into devices: the device count is tuned too
            mesh, layout, record = device_split.tuned_mesh_and_layout(
                population, model, algorithm, aggregator, schedule, task, split, cohort_size=slots,
                uplink=uplink, downlink=downlink)
        else:
            layout, record = tuned_layout(population, model, algorithm, aggregator, schedule, task, mesh,
                                          cohort_size=slots, uplink=uplink, downlink=downlink)
        tuning = record._asdict()
    else:
        layout = client_layout(population, model, algorithm, schedule, slots, mesh.devices.size, chunk_size,
                               mesh.devices.flat[0])
    D, C = mesh.devices.size, population.num_clients
    device = mesh.devices.flat[0]

    sample_x = jax.ShapeDtypeStruct((1,) + population.feature_shape, jnp.float32)
    per_client = one_client_states(algorithm, aggregator, uplink=uplink, downlink=downlink, model=model)
    params_abs = jax.eval_shape(model.init, keys.abstract_key(), sample_x)
    if task.name in ("classification", "regression", "next-token"):  # the built-in tasks whose output width is known
        check_model_outputs(model, params_abs, population)
    one_abs = jax.eval_shape(per_client, params_abs)
    state_bytes = C * sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(one_abs))
    if procedural and state_bytes:
        raise ValueError(f"a procedural population of {C:,} clients cannot keep per-client states "
                         f"({state_bytes // C:,} bytes each, {state_bytes:,} in all) for this algorithm, aggregator "
                         f"or codec: use a stateless one (e.g. FedAvg, FedProx, FedOpt with the mean, no error "
                         f"feedback) or an in-memory population")
    home = homes.resolve_home(client_state, state_bytes, D, device)
    if cohort_sampler == "distinct" and home == "host":
        raise ValueError(f"the per-client states ({state_bytes:,} bytes) would live on the host, whose cohort is "
                         f"drawn there by top-k; cohort_sampler='distinct' needs client_state='sharded' or 'replicated'")
    if sampling == "poisson" and home == "host":
        raise ValueError(f"the per-client states ({state_bytes:,} bytes) would live on the host, which Poisson "
                         f"sampling does not support: pass client_state='sharded' (or 'replicated')")
    if (availability is not None or selection is not None) and home == "host":
        raise ValueError(f"the per-client states ({state_bytes:,} bytes) would live on the host, which needs the "
                         f"cohort before the round; client availability and selection draw it inside the round: "
                         f"pass client_state='sharded' (or 'replicated')")
    rows = homes.state_rows(home, C, D)

    one_round = round_program(model, algorithm, aggregator, schedule, task, mesh, layout, num_clients=C,
                              max_count=population.max_count, uplink=uplink, downlink=downlink,
                              label_transform=label_transform, sampling=sampling,
                              expected_cohort=cohort_size if sampling == "poisson" else None, tiers=tiers,
                              availability=availability, selection=selection, systems=systems, deadline=deadline,
                              stragglers=stragglers, procedural=population.rows if procedural else None,
                              cohort_sampler=cohort_sampler)
    init_from_key = initial_state(model, algorithm, aggregator, population.feature_shape, C, uplink=uplink,
                                  downlink=downlink, client_rows=0 if home == "host" else rows)
    replicated = NamedSharding(mesh, P())
    sharded = NamedSharding(mesh, P(CLIENTS))
    state_abs = jax.eval_shape(init_from_key, keys.abstract_key())
    state_sharding = jax.tree.map(lambda _: replicated, state_abs)
    if home == "sharded":
        state_sharding = state_sharding._replace(
            client_states=jax.tree.map(lambda _: sharded, state_abs.client_states))

    def init_from_words(words):  # the run key's words (keys.run_key_data): no eager seeding programs to compile
        return init_from_key(jax.random.wrap_key_data(words))

    init_program = jax.jit(init_from_words, out_shardings=state_sharding)

    def init(seed: int) -> ServerState:
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        state = init_program(keys.run_key_data(seed))
        if home == "host":  # C NumPy rows on the host, one client's state repeated
            state = state._replace(client_states=homes.host_states(jax.device_get(per_client(state.params)), C))
        return state

    def abstract_state():
        if home == "host":
            host_abs = jax.tree.map(lambda a: jax.ShapeDtypeStruct((C,) + a.shape, a.dtype), one_abs)
            return state_abs._replace(client_states=host_abs)
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state_abs,
                            state_sharding)

    evaluate = build_evaluate(population, model, task, mesh, eval_batch_size)
    if tiers is not None:
        evaluate = evaluate_per_tier(evaluate, [build_evaluate(population, m, task, mesh, eval_batch_size)
                                                for m in tiers.models])
    return RoundSetup(task, mesh, layout, home, one_round, init, abstract_state, state_sharding, evaluate, tuning,
                      sampling, slots if sampling == "poisson" else None, tiers)


def check_procedural(client_state, sampling, tiers, availability, selection, deadline) -> None:
    """Refuse, by name, what a procedural population (``jaxqfl.data.procedural``) cannot take."""
    refused = [name for name, used in (
        (f"client_state={client_state!r}", client_state == "host"), (f"sampling={sampling!r}", sampling != "fixed"),
        ("tiers", tiers is not None), ("availability", availability not in (None, "always")),
        ("selection", selection not in (None, "uniform")), ("deadline", deadline is not None)) if used]
    if refused:
        raise ValueError(f"a procedural population generates the cohort's rows inside the round and keeps no "
                         f"per-client data; it does not support {', '.join(refused)}")


def block_compiler(lower_block: Callable[[int], Any]):
    """``(compile_block(num_rounds) -> seconds, compiled)``: one program per block length, compiled once.

    ``lower_block(num_rounds)`` returns the lowered block program; ``compiled`` maps
    block lengths to their executables.
    """
    compiled: dict[int, Any] = {}

    def compile_block(num_rounds: int) -> float:
        if not isinstance(num_rounds, int) or num_rounds < 1:
            raise ValueError(f"num_rounds must be a positive integer, got {num_rounds!r}")
        if num_rounds in compiled:
            return 0.0
        t0 = time.perf_counter()
        compiled[num_rounds] = lower_block(num_rounds).compile()
        return time.perf_counter() - t0

    return compile_block, compiled


def check_model_outputs(model, params_abs, population: Population) -> None:
    """Refuse a model whose output width does not fit the task (before anything trains).

    Classification needs ``num_classes`` logits per example; regression one output
    per target value. A narrower classifier would index past its logits (NaN loss).
    """
    x = jax.ShapeDtypeStruct((2,) + tuple(population.feature_shape), jnp.float32)
    out = jax.eval_shape(lambda p, x: bound(model).apply(p, x, key=None), params_abs, x)
    if population.task == "next-token":  # logits at every position: [B, T, vocab]
        want = (2,) + tuple(population.feature_shape) + (population.num_classes,)
        if tuple(out.shape) != want:
            raise ValueError(f"the model outputs {tuple(out.shape[1:])} per example but next-token data of context "
                             f"{want[1]} needs logits {want[1:]} (one row of {want[2]} per position)")
        return
    width = int(np.prod(out.shape[1:]))
    want = population.num_classes if population.is_classification else int(np.prod(population.y_test.shape[1:]))
    what = f"{want} classes" if population.is_classification else f"{want} target value(s) per example"
    if out.shape[0] != 2 or width != want:
        raise ValueError(f"the model outputs {out.shape[1:]} per example but the task has {what}; "
                         f"build the model with {want} outputs")


def device_data(population: Population, mesh, frozen=()) -> DeviceData:
    """The population's training arrays and a model's ``frozen`` part, replicated on every device of the mesh."""
    replicated = NamedSharding(mesh, P())
    return DeviceData(
        frozen=jax.device_put(frozen, replicated),
        x=jax.device_put(population.x.astype(np.float32, copy=False), replicated),
        y=jax.device_put(population.y.astype(label_dtype(population), copy=False), replicated),
        offsets=jax.device_put(population.offsets.astype(np.int32), replicated),
        counts=jax.device_put(population.counts.astype(np.int32), replicated),
    )


def build(
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
    autotune: bool | None = None,
    label_transform=None,
    sampling: str = "fixed",
    max_cohort: int | None = None,
    personal_eval: FineTune | None = None,
    tiers=None,
    availability=None,
    selection=None,
    systems=None,
    deadline: float | None = None,
    stragglers: str = "wait",
    cohort_sampler: str | None = None,
) -> Simulation:
    """Build the simulation of ``algorithm`` on ``population`` with ``model`` (any ``(init, apply)`` pair).

    Args:
      aggregator: a ``jaxqfl.aggregate`` aggregator (default ``aggregate.mean()``).
      uplink / downlink: codecs (``jaxqfl.compress``) or None for 32-bit floats.
      client_state: home of the per-client states: ``"auto"``, ``"replicated"``,
        ``"sharded"`` or ``"host"`` (``jaxqfl.engine.homes``); results do not depend on it.
      chunk_size: clients per vmap; None picks one: by measuring a few candidates
        (``autotune``, default on unless ``JAXQFL_AUTOTUNE=off``; ``jaxqfl.engine.layout_search``,
        cached on disk) or from the cost model (``jaxqfl.engine.chunking``) when tuning is off.
      label_transform: None, or ``fn(y, info) -> y`` applied to every training batch's labels
        (``info``: the client's ``ClientInfo``), e.g. ``aggregate.label_flip_transform``.
      sampling: ``"fixed"`` (``cohort_size`` clients uniformly without replacement) or
        ``"poisson"``: each client joins with probability ``q = cohort_size / num_clients``
        (``cohort_size`` is the EXPECTED cohort) into ``max_cohort`` static slots, the
        rest masked out; more joiners than slots is reported per round
        (``RoundMetrics.overflow``), never silent (``jaxqfl.engine.sampling``). Not
        available with the ``"host"`` client-state home nor with ``build_streaming``.
        For DP under Poisson sampling give ``aggregate.dp_mean`` the fixed
        ``denominator=cohort_size`` (the expected cohort, McMahan et al. 2018).
      max_cohort: M_max for Poisson sampling (default: the smallest m with
        ``P(Binomial(C, q) > m) <= 1e-9``, ``sampling.default_max_cohort``).
      personal_eval: per-client fine-tuning before the per-client evaluation
        (``jaxqfl.engine.client_evaluation.FineTune``; TFF's personalization evaluation).
        With it (steps > 0), or with an algorithm that has personal models
        (``algorithm.personalize``), every evaluation also evaluates the model each
        client uses on its own test rows (``Simulation.evaluate_clients``). That needs
        the population's ``test_counts`` (fine-tuning without them is refused; personal
        models without them are not evaluated, with a warning).
      tiers: ``jaxqfl.engine.tiers.Tiers``: each client trains its tier's model and sends with its
        tier's codec (``uplink`` must then be None); evaluations add every tier's model's metrics
        of the global params (``tier<t>_accuracy``, ...).
      availability: which clients can be sampled each round, drawn inside the program
        (``jaxqfl.systems.availability``: an ``Availability`` or a spec ``"always"``,
        ``"bernoulli:P"``, ``"diurnal:PERIOD"``, a CSV path); None / ``"always"``: every client.
      selection: which available clients form the cohort (``jaxqfl.systems.selection``: a
        ``Selection`` or ``"uniform"``, ``"power-of-choice:D"``, ``"oort"``, ``"oort:D"``). With
        either, fewer available clients than cohort slots leaves the rest masked out, and the
        server metric ``available`` is reported per round. Not with the ``"host"`` client-state
        home nor ``build_streaming``; a selection rule needs ``sampling="fixed"`` and no tiers.
      systems: the clients' ``jaxqfl.systems.ClientSystems`` (``selection="oort"`` and a deadline need it).
      deadline / stragglers: a round deadline of ``deadline`` simulated seconds
        (``jaxqfl.systems.deadline``): clients of ``systems`` (a ``jaxqfl.systems.ClientSystems``)
        that cannot meet it are dropped (``stragglers="drop"``) or do the steps they can
        (``"partial"``); each round reports its simulated seconds (server metric
        ``round_sim_seconds``, used by ``engine.run``'s clock), ``stragglers_dropped`` and
        ``partial_work``. ``"wait"`` (the default, no deadline) leaves the round as it is.
        Every client-state home and both samplings; not ``build_streaming`` nor sweeps.
      population may be a ``jaxqfl.data.procedural.ProceduralPopulation``: no rows go to the devices;
        each round generates its cohort's rows inside the program (``round.ProceduralData``).
        Refused with it: per-client states, the host home, Poisson sampling, tiers, availability,
        selection, a deadline, chunk-size autotuning (the cost model picks the chunk).
      cohort_sampler: ``"top-k"`` (``round.sample_cohort``: C uniforms, the default in memory) or
        ``"distinct"`` (``sampling.sample_distinct``: O(M), the default of a procedural population);
        an in-memory population with ``"distinct"`` runs the very rounds of its procedural twin.
    """
    setup = setup_round(
        population, model, algorithm, schedule, cohort_size=cohort_size, aggregator=aggregator, task=task,
        num_devices=num_devices, chunk_size=chunk_size, uplink=uplink, downlink=downlink,
        client_state=client_state, eval_batch_size=eval_batch_size, autotune=autotune,
        label_transform=label_transform, sampling=sampling, max_cohort=max_cohort, tiers=tiers,
        availability=availability, selection=selection, systems=systems, deadline=deadline, stragglers=stragglers,
        cohort_sampler=cohort_sampler,
    )
    mesh, layout, one_round = setup.mesh, setup.layout, setup.one_round
    if isinstance(population, ProceduralPopulation):  # no rows on the devices: the round generates the cohort's
        data = ProceduralData(frozen=jax.device_put(model.frozen, NamedSharding(mesh, P())))
    else:
        data = device_data(population, mesh, model.frozen)
    evaluate_clients = None
    fine_tunes = personal_eval is not None and personal_eval.steps
    if fine_tunes or (algorithm.personalize is not None and population.test_counts is not None):
        evaluate_clients = build_client_evaluate(population, model, setup.task, mesh, algorithm, data,
                                                 fine_tune=personal_eval or FineTune())
    elif algorithm.personalize is not None:
        warnings.warn("the clients' personal models are not evaluated: the population's test set belongs to no "
                      "client (split it with jaxqfl.data.split_test_by_labels); only the global model is",
                      stacklevel=2)
    common = dict(init=setup.init, evaluate=setup.evaluate, evaluate_clients=evaluate_clients,
                  num_devices=mesh.devices.size, chunk_size=layout.chunk, cohort_size=cohort_size, clients_per_device=layout.per_device, num_params=layout.num_params,
                  client_state_home=setup.home, tuning=setup.tuning, sampling=sampling, max_cohort=setup.max_cohort,
                  tiers=setup.tiers, systems=systems if deadline is not None else None)
    if setup.home == "host":
        compile_round, run_block, stats, cohort, traces = host_loop(
            mesh=mesh, layout=layout, num_clients=population.num_clients, one_round=one_round,
            abstract_state=setup.abstract_state, state_sharding=setup.state_sharding, data=data, data_abstract=data, gather_block=None, block_bytes=0,
            host_home=True,
        )
        return Simulation(run_block=run_block, compile_block=lambda num_rounds: compile_round(),
                          trace_count=traces, stream_stats=stats, cohort=cohort, **common)

    traces = [0]

    def block(state: ServerState, data: DeviceData, num_active, *, num_rounds: int):
        traces[0] += 1

        def body(state, i):
            traced = {}  # the round's metric shapes, kept when cond traces the round (before the skip branch)

            def run(state):
                state, metrics = one_round(state, data)
                traced["metrics"] = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), metrics)
                return state, metrics

            def skip(state):
                # zeros shaped like the round's metrics; tracing the round again only if cond has not traced it yet
                zeros = traced.get("metrics") or jax.eval_shape(lambda s: one_round(s, data)[1], state)
                zero_metrics = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), zeros)
                return state, zero_metrics._replace(active=jnp.asarray(False))

            return jax.lax.cond(i < num_active, run, skip, state)

        return jax.lax.scan(body, state, jnp.arange(num_rounds))

    replicated = NamedSharding(mesh, P())

    def lower_block(num_rounds: int):
        def round_block(s, d, n):
            return block(s, d, n, num_rounds=num_rounds)

        # state in its home's shardings; metrics replicated (every process of a multi-process run reads them)
        fn = jax.jit(round_block, donate_argnums=(0,), out_shardings=(setup.state_sharding, replicated))
        return fn.lower(setup.abstract_state(), data, np.int32(num_rounds))

    compile_block, compiled = block_compiler(lower_block)

    def run_block(state: ServerState, num_rounds: int, num_active: int | None = None):
        """Run ``num_active`` (default all) of a block of ``num_rounds`` rounds; one program per block size."""
        compile_block(num_rounds)
        num_active = num_rounds if num_active is None else num_active
        if not 0 <= num_active <= num_rounds:
            raise ValueError(f"num_active must lie in [0, {num_rounds}], got {num_active}")
        state = jax.device_put(state, setup.state_sharding)
        return compiled[num_rounds](state, data, np.int32(num_active))  # NumPy: no eager program

    return Simulation(run_block=run_block, compile_block=compile_block, trace_count=lambda: traces[0], **common)
