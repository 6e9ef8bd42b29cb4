"""The round program: a block of FL rounds compiled into one XLA program.

One round, as data (DESIGN.md):

    key -> cohort ids [M] (sampled without replacement, inside the program)
    gather the cohort's per-client state; pad the cohort to D * n_chunks * chunk
    shard_map over the mesh axis "clients" (M_pad / D clients per device):
        lax.scan over chunks, each chunk a vmap over clients:
            downlink codec: server params -> what the client receives
            lax.scan over local steps: gather batch rows -> loss -> grad -> client optimizer
            delta = local - received -> uplink codec -> decoded delta, bits
        weighted partial sums on each device -> lax.psum over "clients"
    server: mean delta = sum_i p_i dec_i / sum_i p_i -> codec finalize -> server optimizer
    scatter the cohort's new per-client state back

A block of R rounds is a ``lax.scan`` over rounds; rounds past ``num_active``
(the tail of the last block) are skipped with ``lax.cond``, so every block of a
run is the same program: it traces and compiles once. Nothing leaves the device
inside a block.

Data: on-device (``build``), the replicated population, indexed by client id;
streamed (``jaxqfl.engine.streaming``), one round's ``CohortBlock`` of the
cohort's rows sharded over "clients", indexed by slot. ``round_program`` is the
one round both compile.

Local steps: every step's batch rows are drawn before the step scan (one
vectorised draw with the same keys, so the scan body is only gather, loss,
gradient and update). A ``local_steps`` schedule never masks a step, so its
steps skip the select over the params. On CPU the step's gradient is evaluated
with its convolutions in XLA:CPU's canonical order (``conv_layout``): inside a
scan XLA:CPU leaves them in autodiff's order and runs them ~10x slower.

Outputs are replicated over the mesh, and the initial state is computed by a
program with replicated outputs, so under ``jax.distributed`` every process
holds (and can read) the same state and metrics.

Weights: p_i = n_i (examples) or 1 (uniform); padding clients get p_i = 0.
Determinism: every random draw is a ``fold_in`` of the run key by (round, client
id, step, purpose) (``jaxqfl.keys``), so results do not depend on the device
count or the chunk size beyond float summation order.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxqfl import keys
from jaxqfl.algorithms.fedavg import Algorithm
from jaxqfl.compress.integer_sum import aggregate_in_integers
from jaxqfl.data.population import Population
from jaxqfl.engine.autotune import autotune_default
from jaxqfl.engine.chunking import auto_chunk_size, padded_layout
from jaxqfl.engine.conv_layout import canonical_convolutions, contains_convolution
from jaxqfl.engine.mesh import CLIENTS, client_mesh
from jaxqfl.engine.schedule import LocalSchedule, make_batch_fn
from jaxqfl.tasks import Task, for_num_classes

FLOAT_BITS = 32


class DeviceData(NamedTuple):
    """The population's training arrays on the devices (replicated)."""

    x: jax.Array  # [N, *F]
    y: jax.Array  # [N]
    offsets: jax.Array  # [C] int32
    counts: jax.Array  # [C] int32


class ServerState(NamedTuple):
    params: Any
    opt_state: Any
    round: jax.Array  # () int32, rounds done so far
    key: jax.Array  # run key (typed PRNG key)
    client_states: Any  # pytree with a leading [num_clients] axis (codec residuals, ...)


class RoundMetrics(NamedTuple):
    """Per-round metrics; a block returns each with a leading [R] axis."""

    train_loss: jax.Array  # () weighted mean over the cohort of each client's mean local loss
    total_weight: jax.Array  # () sum of p_i over the cohort
    cohort: jax.Array  # [M] int32 client ids
    uplink_bits: jax.Array  # [M] int32 bits each client sent
    downlink_bits: jax.Array  # [M] int32 bits each client received
    local_steps: jax.Array  # [M] int32 local steps each client took
    active: jax.Array  # () bool, False for a skipped tail round


class Simulation(NamedTuple):
    """A built simulation: pure functions over ``ServerState`` plus its static layout."""

    init: Callable  # init(seed) -> ServerState
    run_block: Callable  # run_block(state, num_rounds, num_active=None) -> (state, RoundMetrics[R])
    compile_block: Callable  # compile_block(num_rounds) -> seconds spent compiling (cached)
    evaluate: Callable  # evaluate(params) -> {"loss": float, "accuracy": float}
    trace_count: Callable  # trace_count() -> how many times the block program was traced
    num_devices: int
    chunk_size: int
    cohort_size: int
    clients_per_device: int
    num_params: int
    tuning: dict | None = None  # the chunk-size search (autotune.TuningRecord._asdict()), None when not tuned


def _stack_states(state, n: int):
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + jnp.shape(a)), state)


def _tree_where(cond, a, b):
    return jax.tree.map(lambda u, v: jnp.where(cond, u, v), a, b)


def _num_params(tree) -> int:
    return int(sum(np.prod(np.shape(a)) for a in jax.tree.leaves(tree)))


class ClientLayout(NamedTuple):
    """How a cohort of M clients is laid out: D devices x num_chunks chunks x chunk clients.

    ``M_pad = D * per_device`` and ``per_device = num_chunks * chunk >= ceil(M / D)``;
    the ``M_pad - M`` padding slots train on a real client's data with weight 0.
    """

    cohort_size: int  # M
    num_devices: int  # D
    chunk: int  # clients per vmap
    num_chunks: int  # chunks per device
    per_device: int  # num_chunks * chunk
    num_params: int

    @property
    def padded_cohort(self) -> int:
        return self.per_device * self.num_devices


def client_layout(
    population: Population, model, algorithm: Algorithm, schedule: LocalSchedule, cohort_size: int,
    num_devices: int, chunk_size: int | None, device,
) -> ClientLayout:
    """The padded layout of a cohort; the chunk size from ``jaxqfl.engine.chunking`` when None."""
    sample_x = jnp.zeros((1,) + population.feature_shape, jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), sample_x)
    num_params = _num_params(params)
    per_device0 = math.ceil(cohort_size / num_devices)
    if chunk_size is None:
        opt_state = jax.eval_shape(algorithm.client_init, params).opt_state
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        chunk_size = auto_chunk_size(
            per_device0, num_params, schedule.batch(population.max_count),
            int(np.prod(population.feature_shape)), device.platform, num_devices=num_devices,
            optimizer_floats=_num_params(opt_state), device_memory=(stats or {}).get("bytes_limit"),
            has_convolutions=contains_convolution(jax.make_jaxpr(model.apply)(params, sample_x).jaxpr),
        )
    per_device, num_chunks = padded_layout(cohort_size, num_devices, chunk_size)
    return ClientLayout(cohort_size, num_devices, per_device // num_chunks, num_chunks, per_device, num_params)


def sample_cohort(rkey: jax.Array, num_clients: int, cohort_size: int) -> jax.Array:
    """[M] int32 ids drawn uniformly without replacement with ``fold_in(round_key, COHORT)``.

    The M clients with the largest of C i.i.d. uniforms: every M-subset is equally
    likely (the uniforms' order is a uniform random permutation). ``lax.top_k`` is
    O(C log M), against a full O(C log C) shuffle for ``jax.random.choice(...,
    replace=False)``: at C = 1,000,000 on a CPU, 8 ms instead of 520 ms a round.
    """
    ckey = keys.purpose_key(rkey, keys.COHORT)
    _, ids = jax.lax.top_k(jax.random.uniform(ckey, (num_clients,)), cohort_size)
    return ids.astype(jnp.int32)


class CohortBlock(NamedTuple):
    """The rows of one round's cohort, slot-major: what a streamed round reads instead of the population.

    Slot ``j < M`` holds client ``cohort[j]``'s rows ``x[j, :count_j]`` (the rest padding);
    sharded over ``"clients"`` on its first axis, so each device holds its own share.
    """

    x: jax.Array  # [M_pad, max_count, *F] float32
    y: jax.Array  # [M_pad, max_count]
    counts: jax.Array  # [M_pad] int32 (>= 1; padding slots 1)


def round_program(
    model, algorithm: Algorithm, schedule: LocalSchedule, task: Task, mesh, layout: ClientLayout, *,
    num_clients: int, max_count: int, uplink=None, downlink=None, integer_aggregation: bool = False,
) -> Callable:
    """``one_round(state, data, cohort=None) -> (state, RoundMetrics)``: one FL round, traceable.

    On-device data (``cohort=None``): ``data`` is the replicated population
    (``DeviceData``) and the cohort is sampled inside the program. Streamed data:
    ``data`` is the round's ``CohortBlock`` and ``cohort`` the [M] ids it holds
    (sampled by the host with :func:`sample_cohort`, same keys). Either way a
    client's randomness depends on its id only, so both give the same result.

    ``integer_aggregation=True`` (codecs with ``integer_sum``: uniform, QSGD,
    TernGrad) aggregates the uplink in the integer domain: every client reports
    its scale statistic, the cohort's maximum (``pmax`` over devices) is the
    shared scale, clients quantize against it, and the server sums
    ``sum_i w_i codes_i`` as int32 (``psum``) and applies the scale once
    (``jaxqfl.compress.aggregate_in_integers``). Weights are integers (example
    counts or 1). This needs every client's delta of the device's share at once,
    so a device holds ``per_device x num_params`` floats instead of one chunk's.
    """
    isum = check_integer_aggregation(uplink, integer_aggregation)
    C, M, D = num_clients, layout.cohort_size, layout.num_devices
    chunk, num_chunks, per_device = layout.chunk, layout.num_chunks, layout.per_device
    M_pad = layout.padded_cohort
    S = schedule.num_steps(max_count)
    prepare_plan, step_batch = make_batch_fn(schedule, max_count)
    float_bits = FLOAT_BITS * layout.num_params
    # A local_steps schedule never masks a step: skip the per-step select over the params.
    every_step_active = schedule.local_steps is not None
    if mesh.devices.flat[0].platform == "cpu":  # convolutions in a scan: keep XLA:CPU's fast layout
        value_and_grad = lambda f: canonical_convolutions(jax.value_and_grad(f))
    else:
        value_and_grad = jax.value_and_grad

    def client_update(params, cid, slot, valid, cstate, data, rkey):
        """One client's round: receive, train, encode. Returns (decoded delta, stats, new state).

        ``cid`` (the client id) drives the keys, ``slot`` indexes ``data``.
        """
        ckey = keys.client_key(rkey, cid)
        count = data.counts[slot]
        offset = data.offsets[slot]
        new_cstate = dict(cstate)
        if downlink is not None:
            msg, new_cstate["downlink"] = downlink.encode(
                params, cstate["downlink"], keys.purpose_key(ckey, keys.DOWNLINK)
            )
            start = downlink.decode(msg)
            down_bits = downlink.bits(msg)
        else:
            start, down_bits = params, jnp.int32(float_bits)

        local = algorithm.client_init(start)
        plan = prepare_plan(ckey, count)

        def local_step(local, step):
            s, sb = step
            rows = offset + sb.rows
            xb, yb = data.x[rows], data.y[rows]
            mkey = keys.purpose_key(keys.step_key(ckey, s), keys.QUANT)
            m = sb.mask.astype(jnp.float32)

            def loss_fn(p):
                per_example = task.loss(model.apply(p, xb, key=mkey), yb)
                return jnp.sum(per_example * m) / jnp.maximum(jnp.sum(m), 1.0)

            loss, grads = value_and_grad(loss_fn)(local.params)
            stepped = algorithm.client_step(local, grads)
            if every_step_active:
                return stepped, (loss, sb.active)
            return _tree_where(sb.active, stepped, local), (jnp.where(sb.active, loss, 0.0), sb.active)

        # Every step's batch rows and masks at once (vectorised), then a scan over the steps.
        steps = jnp.arange(S, dtype=jnp.int32)
        batches = (steps, jax.vmap(lambda s: step_batch(plan, ckey, count, s))(steps))
        local, (losses, active) = jax.lax.scan(local_step, local, batches)
        delta = algorithm.client_final(local, start)
        if isum is not None:  # encoded after the cohort's shared scale is known (device_share)
            decoded, up_bits = delta, jnp.int32(0)
        elif uplink is not None:
            msg, new_cstate["uplink"] = uplink.encode(delta, cstate["uplink"], keys.purpose_key(ckey, keys.UPLINK))
            decoded = uplink.decode(msg)
            up_bits = uplink.bits(msg)
        else:
            decoded, up_bits = delta, jnp.int32(float_bits)
        num_steps = jnp.sum(active.astype(jnp.int32))
        mean_loss = jnp.sum(losses) / jnp.maximum(num_steps, 1)
        base_weight = count.astype(jnp.float32) if algorithm.weighting == "examples" else jnp.float32(1.0)
        weight = jnp.where(valid, base_weight, 0.0)
        stats = (weight, mean_loss, jnp.asarray(up_bits, jnp.int32), jnp.asarray(down_bits, jnp.int32), num_steps)
        return decoded, stats, new_cstate

    def device_share(params, ids, slots, valid, cstates, data, rkey):
        """A device's share of the cohort: scan over chunks of vmapped clients, then psum."""
        if isinstance(data, CohortBlock):  # this device's slots of the streamed block
            data = DeviceData(
                x=data.x.reshape((per_device * max_count,) + data.x.shape[2:]),
                y=data.y.reshape((per_device * max_count,)),
                offsets=jnp.arange(per_device, dtype=jnp.int32) * max_count,
                counts=data.counts,
            )
        to_chunks = lambda a: a.reshape((num_chunks, chunk) + a.shape[1:])
        xs = (to_chunks(ids), to_chunks(slots), to_chunks(valid), jax.tree.map(to_chunks, cstates))
        if chunk > 1:
            vmapped = jax.vmap(client_update, in_axes=(None, 0, 0, 0, 0, None, None))
        else:  # one client per chunk: no vmap (XLA:CPU runs vmapped convolutions as slow grouped ones)
            def vmapped(params, cids, cslots, cvalid, cst, data, rkey):
                first = lambda tree: jax.tree.map(lambda a: a[0], tree)
                out = client_update(params, cids[0], cslots[0], cvalid[0], first(cst), data, rkey)
                return jax.tree.map(lambda a: jnp.asarray(a)[None], out)
        zero = (jax.tree.map(jnp.zeros_like, params), jnp.float32(0.0), jnp.float32(0.0))

        def chunk_body(acc, x):
            cids, cslots, cvalid, cst = x
            decoded, (w, loss, ub, db, steps), new_cst = vmapped(params, cids, cslots, cvalid, cst, data, rkey)
            wsum = jax.tree.map(
                lambda d: jnp.tensordot(w, jnp.where(cvalid.reshape((-1,) + (1,) * (d.ndim - 1)), d, 0.0), 1),
                decoded,
            )
            acc = (
                jax.tree.map(jnp.add, acc[0], wsum),
                acc[1] + jnp.sum(w),
                acc[2] + jnp.sum(w * loss),
            )
            if isum is not None:  # keep the deltas for the integer-domain sum below
                return acc, ((ub, db, steps), new_cst, (decoded, w))
            return acc, ((ub, db, steps), new_cst)

        acc, (per_client, new_cstates, *kept) = jax.lax.scan(chunk_body, zero, xs)
        acc = jax.lax.psum(acc, CLIENTS)
        flat = lambda a: a.reshape((num_chunks * chunk,) + a.shape[2:])
        per_client = jax.tree.map(flat, per_client)
        if isum is not None:
            deltas, w = jax.tree.map(flat, kept[0])
            ckeys = jax.vmap(lambda c: keys.purpose_key(keys.client_key(rkey, c), keys.UPLINK))(ids)
            agg = aggregate_in_integers(isum, deltas, w.astype(jnp.int32), ckeys, axis_name=CLIENTS)
            acc = (jax.tree.map(lambda m: m * acc[1], agg.mean), acc[1], acc[2])
            one_client_codes = jax.tree.map(lambda d: jax.ShapeDtypeStruct(d.shape[1:], jnp.int32), deltas)
            bits = jnp.asarray(isum.bits(one_client_codes), jnp.int32)
            per_client = (jnp.full_like(per_client[0], bits), *per_client[1:])
        return acc, per_client, jax.tree.map(flat, new_cstates)

    def one_round(state: ServerState, data, cohort=None):
        rkey = keys.round_key(state.key, state.round)
        streamed = cohort is not None
        if not streamed:
            cohort = sample_cohort(rkey, C, M)
        ids = jnp.zeros((M_pad,), jnp.int32).at[:M].set(cohort)
        valid = jnp.arange(M_pad) < M
        # on-device data is indexed by client id; a streamed block by its slot on the device
        slots = jnp.tile(jnp.arange(per_device, dtype=jnp.int32), D) if streamed else ids
        cstates = jax.tree.map(lambda s: s[ids], state.client_states)
        data_spec = P(CLIENTS) if streamed else P()
        sharded_round = jax.shard_map(
            device_share,
            mesh=mesh,
            in_specs=(P(), P(CLIENTS), P(CLIENTS), P(CLIENTS), P(CLIENTS), data_spec, P()),
            out_specs=(P(), P(CLIENTS), P(CLIENTS)),
            check_vma=False,
        )
        (delta_sum, weight_sum, loss_sum), (ub, db, steps), new_cstates = sharded_round(
            state.params, ids, slots, valid, cstates, data, rkey
        )
        mean_delta = jax.tree.map(lambda d: d / jnp.maximum(weight_sum, 1e-30), delta_sum)
        if uplink is not None:
            mean_delta = uplink.finalize(mean_delta)
        params, opt_state = algorithm.server_update(state.params, state.opt_state, mean_delta)
        scatter_ids = jnp.where(valid, ids, C)  # padding rows are dropped
        client_states = jax.tree.map(
            lambda s, n: s.at[scatter_ids].set(n, mode="drop"), state.client_states, new_cstates
        )
        metrics = RoundMetrics(
            train_loss=loss_sum / jnp.maximum(weight_sum, 1e-30),
            total_weight=weight_sum,
            cohort=cohort,
            uplink_bits=ub[:M],
            downlink_bits=db[:M],
            local_steps=steps[:M],
            active=jnp.asarray(True),
        )
        return ServerState(params, opt_state, state.round + 1, state.key, client_states), metrics

    return one_round


def label_dtype(population: Population):
    """Labels travel as int32 class ids (classification) or float32 targets (regression)."""
    return np.int32 if population.is_classification else np.float32


class RoundSetup(NamedTuple):
    """What ``build`` and ``build_streaming`` share: the checked layout and the round program."""

    task: Task
    mesh: Any
    layout: ClientLayout
    one_round: Callable  # round_program(...)
    init_from_key: Callable  # initial_state(...)
    init_program: Callable  # jitted init_from_key, replicated output (multi-process safe)
    tuning: dict | None = None  # autotune.TuningRecord._asdict() when the chunk size was measured


def setup_round(
    population: Population, model, algorithm: Algorithm, schedule: LocalSchedule, *, cohort_size, task,
    num_devices, chunk_size, uplink, downlink, integer_aggregation: bool, autotune: bool | None = None,
) -> RoundSetup:
    """Check the arguments, build the mesh, the client layout and the round program.

    ``chunk_size=None`` with tuning on (``autotune``; None: on unless ``$JAXQFL_AUTOTUNE=off``)
    times candidate chunk sizes (``jaxqfl.engine.layout_search``); tuning off (or a multi-process
    run) uses the cost model.
    """
    check_cohort_and_chunk(population, cohort_size, chunk_size)
    task = task or for_num_classes(population.num_classes)
    mesh = client_mesh(num_devices)
    C = population.num_clients
    tuning = None
    # Several processes would each time their own candidates and could pick different programs: the model decides.
    if chunk_size is None and (autotune_default() if autotune is None else autotune) and jax.process_count() == 1:
        from jaxqfl.engine.layout_search import tuned_layout  # imports this module

        layout, record = tuned_layout(population, model, algorithm, schedule, task, mesh, cohort_size=cohort_size,
                                      uplink=uplink, downlink=downlink, integer_aggregation=integer_aggregation)
        tuning = record._asdict()
    else:
        layout = client_layout(population, model, algorithm, schedule, cohort_size, mesh.devices.size, chunk_size,
                               mesh.devices.flat[0])
    one_round = round_program(
        model, algorithm, schedule, task, mesh, layout,
        num_clients=C, max_count=population.max_count, uplink=uplink, downlink=downlink,
        integer_aggregation=integer_aggregation,
    )
    init_from_key = initial_state(model, algorithm, population.feature_shape, C, uplink=uplink, downlink=downlink)
    init_program = jax.jit(init_from_key, out_shardings=NamedSharding(mesh, P()))
    return RoundSetup(task, mesh, layout, one_round, init_from_key, init_program, tuning)


def check_cohort_and_chunk(population: Population, cohort_size, chunk_size) -> None:
    """Refuse a cohort outside [1, num_clients] or a chunk size that is not a positive integer."""
    if not isinstance(cohort_size, int) or not 1 <= cohort_size <= population.num_clients:
        raise ValueError(
            f"cohort_size must be an integer in [1, num_clients={population.num_clients}], got {cohort_size!r}"
        )
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None (automatic), got {chunk_size!r}")


def check_integer_aggregation(uplink, integer_aggregation: bool):
    """The uplink's ``IntegerSum`` when integer-domain aggregation is asked for, else None."""
    if not integer_aggregation:
        return None
    if uplink is None or getattr(uplink, "integer_sum", None) is None:
        raise ValueError(
            "integer_aggregation needs an uplink codec that can be summed in the integer domain "
            "(uniform, qsgd or terngrad, without error feedback or a Hadamard rotation); "
            f"got uplink={'None' if uplink is None else 'a codec without integer_sum'}"
        )
    return uplink.integer_sum


def initial_state(model, algorithm: Algorithm, feature_shape, num_clients: int, *, uplink=None, downlink=None):
    """``init_from_key(run_key) -> ServerState``: round 0, params from ``fold_in(run_key, INIT)``."""
    sample_x = jnp.zeros((1,) + tuple(feature_shape), jnp.float32)

    def init_from_key(run_key) -> ServerState:
        params = model.init(keys.purpose_key(run_key, keys.INIT), sample_x)
        client_states = {}
        if uplink is not None:
            client_states["uplink"] = _stack_states(uplink.init(params), num_clients)
        if downlink is not None:
            client_states["downlink"] = _stack_states(downlink.init(params), num_clients)
        return ServerState(params, algorithm.server_init(params), jnp.int32(0), run_key, client_states)

    return init_from_key


def build(
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
    eval_batch_size: int = 1024,
    autotune: bool | None = None,
) -> Simulation:
    """Build the round program for ``population`` and ``model`` (any ``(init, apply)`` pair).

    ``uplink`` / ``downlink`` are codecs (``jaxqfl.compress``) or None for 32-bit floats;
    ``integer_aggregation`` sums the uplink codes as integers (see ``round_program``).
    ``chunk_size=None`` picks one: by measuring a few candidates when ``autotune`` is on
    (the default; ``$JAXQFL_AUTOTUNE=off`` turns the default off; the pick is cached on disk,
    ``jaxqfl.engine.autotune``), else from the cost model (``jaxqfl.engine.chunking``).
    """
    if not isinstance(eval_batch_size, int) or eval_batch_size < 1:
        raise ValueError(f"eval_batch_size must be a positive integer, got {eval_batch_size!r}")
    task, mesh, layout, one_round, init_from_key, init_program, tuning = setup_round(
        population, model, algorithm, schedule, cohort_size=cohort_size, task=task, num_devices=num_devices,
        chunk_size=chunk_size, uplink=uplink, downlink=downlink, integer_aggregation=integer_aggregation,
        autotune=autotune,
    )
    D = mesh.devices.size
    replicated = NamedSharding(mesh, P())
    data = DeviceData(
        x=jax.device_put(population.x.astype(np.float32, copy=False), replicated),
        y=jax.device_put(population.y.astype(label_dtype(population), copy=False), replicated),
        offsets=jax.device_put(population.offsets.astype(np.int32), replicated),
        counts=jax.device_put(population.counts.astype(np.int32), replicated),
    )
    M = cohort_size
    num_params, chunk, per_device = layout.num_params, layout.chunk, layout.per_device

    traces = [0]

    def block(state: ServerState, data: DeviceData, num_active, *, num_rounds: int):
        traces[0] += 1

        def body(state, i):
            def skip(state):
                zeros = jax.eval_shape(lambda s: one_round(s, data)[1], state)
                zero_metrics = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), zeros)
                return state, zero_metrics._replace(active=jnp.asarray(False))

            return jax.lax.cond(i < num_active, lambda s: one_round(s, data), skip, state)

        return jax.lax.scan(body, state, jnp.arange(num_rounds))

    compiled: dict[int, Any] = {}

    def init(seed: int) -> ServerState:
        return init_program(jax.random.key(seed))

    def _abstract_args(num_rounds):
        state = jax.eval_shape(init_from_key, jax.random.key(0))
        return state, data, jnp.int32(num_rounds)

    def compile_block(num_rounds: int) -> float:
        if not isinstance(num_rounds, int) or num_rounds < 1:
            raise ValueError(f"num_rounds must be a positive integer, got {num_rounds!r}")
        if num_rounds in compiled:
            return 0.0
        t0 = time.perf_counter()

        def round_block(s, d, n):
            return block(s, d, n, num_rounds=num_rounds)

        # Replicated outputs: every process of a multi-process run can read state and metrics.
        fn = jax.jit(round_block, donate_argnums=(0,), out_shardings=replicated)
        state_abs, data_, n = _abstract_args(num_rounds)
        state_abs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), state_abs)
        compiled[num_rounds] = fn.lower(state_abs, data_, n).compile()
        return time.perf_counter() - t0

    def run_block(state: ServerState, num_rounds: int, num_active: int | None = None):
        """Run ``num_active`` (default all) of a block of ``num_rounds`` rounds; one program per block size."""
        compile_block(num_rounds)
        num_active = num_rounds if num_active is None else num_active
        if not 0 <= num_active <= num_rounds:
            raise ValueError(f"num_active must lie in [0, {num_rounds}], got {num_active}")
        state = jax.device_put(state, replicated)
        return compiled[num_rounds](state, data, jnp.int32(num_active))

    evaluate = _build_evaluate(population, model, task, mesh, eval_batch_size)

    return Simulation(
        init=init,
        run_block=run_block,
        compile_block=compile_block,
        evaluate=evaluate,
        trace_count=lambda: traces[0],
        num_devices=D,
        chunk_size=chunk,
        cohort_size=M,
        clients_per_device=per_device,
        num_params=num_params,
        tuning=tuning,
    )


def _build_evaluate(population: Population, model, task: Task, mesh, eval_batch_size: int):
    """Test-set loss and metrics of a global model, the test rows split over the mesh."""
    D = mesh.devices.size
    n = population.x_test.shape[0]
    eb = min(eval_batch_size, math.ceil(n / D))
    per_device = math.ceil(n / (D * eb)) * eb
    pad = per_device * D - n
    y_dtype = label_dtype(population)
    x = np.concatenate([population.x_test.astype(np.float32), np.zeros((pad,) + population.feature_shape, np.float32)])
    y = np.concatenate([population.y_test.astype(y_dtype), np.zeros((pad,), y_dtype)])
    mask = np.arange(per_device * D) < n
    sharded = NamedSharding(mesh, P(CLIENTS))
    x, y, mask = (jax.device_put(a, sharded) for a in (x, y, mask))

    def per_device_eval(params, x, y, mask):
        xb, yb, mb = (a.reshape((-1, eb) + a.shape[1:]) for a in (x, y, mask))

        def one(args):
            xi, yi, mi = args
            m = task.metrics(model.apply(params, xi, key=None), yi)
            return {k: jnp.sum(v * mi) for k, v in m.items()}

        sums = jax.tree.map(lambda a: jnp.sum(a, 0), jax.lax.map(one, (xb, yb, mb)))
        return jax.lax.psum(sums, CLIENTS)

    fn = jax.jit(
        jax.shard_map(
            per_device_eval, mesh=mesh, in_specs=(P(), P(CLIENTS), P(CLIENTS), P(CLIENTS)), out_specs=P(), check_vma=False
        )
    )

    def evaluate(params) -> dict[str, float]:
        sums = jax.device_get(fn(params, x, y, mask))
        return {k: float(v) / n for k, v in sums.items()}

    return evaluate
