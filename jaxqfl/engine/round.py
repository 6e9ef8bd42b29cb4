"""The round program: one FL round over a cohort, traceable (a block of rounds scans it).

One round, as data (DESIGN.md, protocol v2):

    key -> cohort ids [M] (sampled without replacement, inside the program)
    message = algorithm.broadcast(params, algorithm_state)
    gather the cohort's per-client states; pad the cohort to D * num_chunks * chunk slots
    shard_map over the mesh axis "clients" (M_pad / D slots per device):
        lax.scan over chunks, each chunk a vmap over clients:
            train_client: downlink -> client_init -> scan of client_step -> client_final
            send_update:  aggregator.prepare -> uplink codec -> aggregator.client -> summand
        reduction (static, the aggregator's): "sum": masked chunk sums -> lax.psum
                                              "gather": every summand kept, [M_pad, ...]
        [aggregator.statistics pre-pass: the chunks are trained first and kept, the
         statistics summed (psum) / maxed (pmax) over the cohort, then sent]
    server: aggregator.server -> codec finalize -> algorithm.server_update
    scatter the cohort's new per-client states back

Padding slots train on a real client's data with weight 0, their summands are
zeroed before the sum (or marked invalid for a gather) and their states are
never written back. Weights: what the algorithm's ``client_final`` returns.

Poisson sampling (``sampling="poisson"``, ``jaxqfl.engine.sampling.sample_poisson_cohort``):
each of the C clients joins independently with probability q; the joiners fill the first of
``M = layout.cohort_size`` static slots (M_max) and the other slots are masked
out exactly like padding (``valid`` False: no summand, no weight, no state
write-back, no bits, cohort id -1 in the metrics). More than M_max joiners is an
*overflow*: the round keeps M_max of them chosen uniformly at random and reports
it (``RoundMetrics.joined`` / ``overflow``, server metrics ``cohort_joined`` /
``cohort_overflow``); never silently.

A deadline (``jaxqfl.systems.deadline``, planned before training by ``engine.straggler``)
masks out the clients that miss it like unfilled Poisson slots, or masks their later
steps; without one the program is the one it always was.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxqfl import keys
from jaxqfl.aggregate.base import CohortInfo, CohortStatistics
from jaxqfl.algorithms.base import ServerInfo
from jaxqfl.engine.client_update import make_receive, make_send_update, make_train_client
from jaxqfl.engine.layout import ClientLayout
from jaxqfl.engine.mesh import CLIENTS
from jaxqfl.engine.sampling import sample_distinct, sample_poisson_cohort
from jaxqfl.engine.schedule import LocalSchedule
from jaxqfl.engine.state import RoundMetrics, ServerState
from jaxqfl.engine.straggler import make_deadline_plan
from jaxqfl.systems.deadline import check_deadline


class DeviceData(NamedTuple):
    """The population's training arrays on the devices (replicated)."""

    x: jax.Array  # [N, *F]
    y: jax.Array  # [N]
    offsets: jax.Array  # [C] int32
    counts: jax.Array  # [C] int32
    frozen: Any = ()  # the model's frozen part (a LoRA base, jaxqfl.models.core.bound): once per device


class CohortBlock(NamedTuple):
    """The rows of one round's cohort, slot-major: what a streamed round reads instead of the population.

    Slot ``j < M`` holds client ``cohort[j]``'s rows ``x[j, :count_j]`` (the rest padding);
    sharded over ``"clients"`` on its first axis, so each device holds its own share.
    """

    x: jax.Array  # [M_pad, max_count, *F] float32
    y: jax.Array  # [M_pad, max_count] (or [M_pad, max_count, k] regression targets)
    counts: jax.Array  # [M_pad] int32 (>= 1; padding slots 1)


class ProceduralData(NamedTuple):
    """A procedural population's stand-in for ``DeviceData``: no rows; the round generates its cohort's.

    Each device generates the rows of its own slots (``ProceduralPopulation.rows`` of their
    ids, closed over by ``round_program(procedural=...)``) and reads them by slot, like a
    streamed ``CohortBlock``: memory O(cohort x max_count), never O(population).
    """

    frozen: Any = ()  # the model's frozen part, as in DeviceData


def sample_cohort(rkey: jax.Array, num_clients: int, cohort_size: int) -> jax.Array:
    """[M] int32 ids drawn uniformly without replacement with ``keys.purpose_key(round_key, COHORT)``.

    The M clients with the largest of C i.i.d. uniforms: every M-subset is equally
    likely (the uniforms' order is a uniform random permutation). ``lax.top_k`` is
    O(C log M), against a full O(C log C) shuffle for ``jax.random.choice(...,
    replace=False)``: at C = 1,000,000 on a CPU, 8 ms instead of 520 ms a round.
    """
    ckey = keys.purpose_key(rkey, keys.COHORT)
    _, ids = jax.lax.top_k(jax.random.uniform(ckey, (num_clients,)), cohort_size)
    return ids.astype(jnp.int32)


def _slot_mask(valid, leaf):
    return valid.reshape((-1,) + (1,) * (jnp.ndim(leaf) - 1))


def slot_major_data(x, y, counts, frozen=()) -> DeviceData:
    """One device's slot-major rows ``x [slots, max_count, *F]`` (``y`` likewise) as ``DeviceData`` read by slot."""
    slots, max_count = x.shape[:2]
    return DeviceData(x=x.reshape((slots * max_count,) + x.shape[2:]),
                      y=y.reshape((slots * max_count,) + y.shape[2:]),
                      offsets=jnp.arange(slots, dtype=jnp.int32) * max_count, counts=counts, frozen=frozen)


def masked_sum(tree, valid):
    """Sum over the leading (client) axis of every leaf, padding slots excluded.

    Written as a dot with the 0/1 slot vector (after zeroing padding, which may
    hold garbage): measured on XLA:CPU, ``jnp.sum(..., axis=0)`` over a chunk of
    the MLP's updates made the whole round 2.5x slower than this contraction.
    """

    def one(a):
        kept = jnp.where(_slot_mask(valid, a), a, jnp.zeros_like(a))
        return jnp.tensordot(valid.astype(a.dtype), kept, 1)

    return jax.tree.map(one, tree)


def masked_max(tree, valid):
    """Elementwise max over the leading axis, padding slots excluded (-inf / int min when none)."""

    def one(a):
        low = -jnp.inf if jnp.issubdtype(a.dtype, jnp.floating) else jnp.iinfo(a.dtype).min
        return jnp.max(jnp.where(_slot_mask(valid, a), a, low), axis=0)

    return jax.tree.map(one, tree)


def round_program(
    model, algorithm, aggregator, schedule: LocalSchedule, task, mesh, layout: ClientLayout, *,
    num_clients: int, max_count: int, uplink=None, downlink=None, label_transform=None,
    sampling: str = "fixed", expected_cohort: float | None = None, tiers=None,
    availability=None, selection=None, systems=None, deadline: float | None = None, stragglers: str = "wait",
    procedural=None, cohort_sampler: str = "top-k",
) -> Callable:
    """``one_round(state, data, cohort=None, cohort_states=None) -> (state, RoundMetrics[, new cohort states])``.

    On-device data (``DeviceData``, replicated) is indexed by client id; a streamed
    ``CohortBlock`` by slot. ``cohort`` (the [M] ids, sampled on the host with the
    same keys) is given when the host must know it first (streamed data, host-home
    client states); otherwise the program samples it. ``cohort_states`` (the
    cohort's [M_pad] rows of every client state, host home) replaces the gather
    from ``state.client_states``, and the new rows are returned instead of scattered.

    ``sampling="poisson"``: each client joins with probability ``q = expected_cohort / num_clients``
    into the layout's ``cohort_size`` (M_max) slots (``sample_poisson_cohort``); the
    algorithm's ``ServerInfo.cohort_size`` is then the expected cohort ``q C``.

    ``availability`` / ``selection`` (``jaxqfl.systems.availability`` / ``.selection``, resolved:
    None for always / uniform) and ``systems`` (``jaxqfl.systems.ClientSystems``, for rules that
    rank by speed): the cohort is drawn among the available clients by the rule
    (``jaxqfl.engine.cohort_draw``); slots no available client fills are masked out like
    unfilled Poisson slots, and the server metric ``available`` counts the available clients.

    ``systems``, ``deadline`` (simulated seconds) and
    ``stragglers`` (``"wait"``, ``"drop"``, ``"partial"``): the deadline of each round
    (module docstring, ``jaxqfl.systems.deadline``). Not for a streamed ``CohortBlock``.

    ``procedural`` (``rows(ids) -> (x [n, max_count, *F], y [n, max_count], counts [n])``, a
    ``jaxqfl.data.procedural.ProceduralPopulation.rows``): ``data`` is then a ``ProceduralData``
    and each device generates its slots' rows inside the program. ``cohort_sampler``: ``"top-k"``
    (``sample_cohort``, O(C)) or ``"distinct"`` (``sampling.sample_distinct``, O(M); a
    procedural population's). Neither a deadline, availability nor selection with ``procedural``.
    """
    if cohort_sampler not in ("top-k", "distinct"):
        raise ValueError(f"cohort_sampler must be 'top-k' or 'distinct', got {cohort_sampler!r}")
    if procedural is not None and (deadline is not None or availability is not None or selection is not None
                                   or sampling != "fixed"):
        raise ValueError("a procedural population supports fixed-size sampling without a deadline, availability "
                         "or a selection rule (they read the whole population's data)")
    if sampling not in ("fixed", "poisson"):
        raise ValueError(f"sampling must be 'fixed' or 'poisson', got {sampling!r}")
    poisson = sampling == "poisson"
    if poisson and not (expected_cohort is not None and 0 < expected_cohort <= num_clients):
        raise ValueError(f"Poisson sampling needs an expected cohort in (0, {num_clients}], got {expected_cohort!r}")
    deadline, stragglers = check_deadline(deadline, stragglers, systems, num_clients)
    left_out = [what for what, on in (("stragglers='drop'", stragglers == "drop"), ("Poisson sampling", poisson),
                                      ("availability", availability is not None)) if on]
    if aggregator.whole_cohort and left_out:  # the engine names no rule: the aggregator says what it needs
        raise ValueError(f"this aggregator's summands only mean something in the sum of the whole sampled cohort "
                         f"(secure aggregation's masks cancel there); {left_out[0]} leaves sampled clients out of "
                         f"the sum")
    partial = stragglers == "partial"
    C, M, D = num_clients, layout.cohort_size, layout.num_devices
    chunk, num_chunks, per_device = layout.chunk, layout.num_chunks, layout.per_device
    M_pad = layout.padded_cohort
    platform = mesh.devices.flat[0].platform
    train_client = make_train_client(model, algorithm, schedule, task, max_count=max_count, downlink=downlink,
                                     platform=platform, label_transform=label_transform, tiers=tiers,
                                     step_limits=partial)
    send_update = make_send_update(aggregator, uplink, tiers)
    plan = None
    if deadline is not None:
        plan = make_deadline_plan(train_client, make_receive(downlink), send_update, aggregator, schedule,
                                  max_count=max_count, systems=systems, deadline=deadline, stragglers=stragglers)
    if tiers is not None:
        uplink = None  # each client's codec is its tier's (send_update); a switched codec's finalize is the identity
    generic_codec = uplink is not None and not aggregator.encodes_uplink
    gather = aggregator.reduction == "gather"
    two_phase = aggregator.statistics is not None
    draw = None
    if availability is not None or selection is not None:
        from jaxqfl.engine.cohort_draw import make_cohort_draw

        draw = make_cohort_draw(availability=availability, selection=selection, systems=systems, model=model,
                                task=task, schedule=schedule, num_clients=C, cohort_size=M, max_count=max_count,
                                num_params=layout.num_params, poisson_rate=expected_cohort / C if poisson else None)

    def vmapped(fn, in_axes):
        if chunk > 1:
            return jax.vmap(fn, in_axes=in_axes)

        def one_at_a_time(*args):  # one client per chunk: no vmap (XLA:CPU runs vmapped convs slowly)
            first = [jax.tree.map(lambda a: a[0], x) if ax == 0 else x for x, ax in zip(args, in_axes)]
            return jax.tree.map(lambda a: jnp.asarray(a)[None], fn(*first))

        return one_at_a_time

    def device_share(message, agg_state, ids, slots, valid, limits, cstates, data, rkey, round_index):
        """A device's share of the cohort: chunks of vmapped clients, then the reduction."""
        if isinstance(data, ProceduralData):  # generate this device's slots' rows (padding: client 0's, weight 0)
            data = slot_major_data(*procedural(ids), frozen=data.frozen)
        elif isinstance(data, CohortBlock):  # this device's slots of the streamed block
            data = slot_major_data(data.x, data.y, data.counts)
        to_chunks = lambda a: a.reshape((num_chunks, chunk) + a.shape[1:])
        flat = lambda a: a.reshape((num_chunks * chunk,) + a.shape[2:])
        vtrain = vmapped(lambda cid, slot, v, cs, *lim: train_client(message, cid, slot, v, cs, data, rkey,
                                                                      round_index, *lim),
                         (0, 0, 0, 0) + (0,) * len(limits))
        vsend = vmapped(lambda t, cs, st: send_update(t, cs, agg_state, st), (0, 0, None))
        xs = (to_chunks(ids), to_chunks(slots), to_chunks(valid), jax.tree.map(to_chunks, cstates),
              *map(to_chunks, limits))

        if two_phase:  # train every chunk first, reduce the statistics, then send
            trained = jax.lax.scan(lambda c, x: (c, vtrain(*x)), None, xs)[1]
            all_trained = jax.tree.map(flat, trained)
            per_client = jax.vmap(lambda t: aggregator.statistics(
                t.update, t.weight, t.client_states["aggregator"], agg_state, t.info))(all_trained)
            stats = CohortStatistics(
                sums=jax.lax.psum(masked_sum(per_client.sums, valid), CLIENTS),
                maxes=jax.tree.map(lambda a: jax.lax.pmax(a, CLIENTS), masked_max(per_client.maxes, valid)),
            )
            get_trained = lambda x, i: jax.tree.map(lambda a: a[i], trained)
        else:
            stats = CohortStatistics()
            get_trained = lambda x, i: vtrain(*x)

        def chunk_body(acc, x):
            chunk_index, x = x
            t = get_trained(x, chunk_index)
            s = vsend(t, t.client_states, stats)
            cvalid = x[2]
            summands, w_sum, wl_sum = acc
            if not gather:
                summands = jax.tree.map(jnp.add, summands, masked_sum(s.summand, cvalid))
            acc = (summands, w_sum + jnp.sum(t.weight), wl_sum + jnp.sum(t.weight * t.loss))
            per_client = (s.uplink_bits, t.downlink_bits, t.info.num_steps, {**t.metrics, **s.metrics})
            return acc, (per_client, s.client_states, s.summand if gather else ())

        def first_chunk_summand(x):
            t = get_trained(x, 0)
            return vsend(t, t.client_states, stats).summand

        summand_shape = jax.eval_shape(first_chunk_summand, jax.tree.map(lambda a: a[0], xs))
        zeros = () if gather else jax.tree.map(lambda s: jnp.zeros(s.shape[1:], s.dtype), summand_shape)
        acc0 = (zeros, jnp.float32(0.0), jnp.float32(0.0))
        acc, (per_client, new_cstates, kept) = jax.lax.scan(
            chunk_body, acc0, (jnp.arange(num_chunks), xs))
        acc = jax.lax.psum(acc, CLIENTS)
        return acc, stats, jax.tree.map(flat, per_client), jax.tree.map(flat, new_cstates), jax.tree.map(flat, kept)

    def one_round(state: ServerState, data, cohort=None, cohort_states=None):
        rkey = keys.round_key(state.key, state.round)
        data_is_block = isinstance(data, CohortBlock)
        by_slot = data_is_block or isinstance(data, ProceduralData)
        joined, num_joined = jnp.ones((M,), bool), jnp.int32(M)
        draw_metrics = {}
        if draw is not None:  # availability and / or a selection rule (jaxqfl.engine.cohort_draw)
            if cohort is not None or data_is_block:
                raise ValueError("client availability and selection draw the cohort inside the program; a "
                                 "host-given cohort (streamed data, host-home client states) is not supported")
            cohort, joined, num_joined, draw_metrics = draw(state.key, rkey, state.round, state.params, data)
        elif poisson:
            if cohort is not None:
                raise ValueError("Poisson sampling draws its cohort inside the program; a host-given cohort "
                                 "(streamed data, host-home client states) is not supported")
            cohort, joined, num_joined = sample_poisson_cohort(rkey, C, expected_cohort / C, M)
        elif cohort is None:
            cohort = (sample_distinct if cohort_sampler == "distinct" else sample_cohort)(rkey, C, M)
        ids = jnp.zeros((M_pad,), jnp.int32).at[:M].set(cohort)
        valid = (jnp.arange(M_pad) < M) & jnp.zeros((M_pad,), bool).at[:M].set(joined)
        limits, deadline_metrics = (), {}
        # on-device data is indexed by client id; a streamed block by its slot on the device
        slots = jnp.tile(jnp.arange(per_device, dtype=jnp.int32), D) if by_slot else ids
        if cohort_states is None:
            cstates = jax.tree.map(lambda s: s[ids], state.client_states)
        else:
            cstates = cohort_states
        message = algorithm.broadcast(state.params, state.algorithm_state)
        if plan is not None:  # who meets the deadline, with how many steps, before anyone trains
            if data_is_block:
                raise ValueError("a deadline needs the population on the devices; a streamed CohortBlock is not "
                                 "supported")
            planned = plan(message, ids, valid, cstates, state.aggregator_state, data, rkey, state.round)
            valid, joined = planned.keep, planned.keep[:M]  # a dropped client is masked like an unfilled slot
            limits, deadline_metrics = ((planned.steps,) if partial else ()), planned.server_metrics
        sharded_round = jax.shard_map(
            device_share,
            mesh=mesh,
            in_specs=(P(), P(), P(CLIENTS), P(CLIENTS), P(CLIENTS), P(CLIENTS), P(CLIENTS),
                      P(CLIENTS) if data_is_block else P(),
                      P(), P()),
            out_specs=(P(), P(), P(CLIENTS), P(CLIENTS), P(CLIENTS)),
            check_vma=False,
        )
        (summed, weight_sum, loss_sum), stats, (ub, db, steps, cmetrics), new_cstates, kept = sharded_round(
            message, state.aggregator_state, ids, slots, valid, limits, cstates, data, rkey, state.round)
        reduced = kept if gather else summed
        cohort_info = CohortInfo(ids=ids, valid=valid, key=rkey, round=state.round)
        aggregate, agg_state, agg_metrics = aggregator.server(reduced, state.aggregator_state, stats, cohort_info)
        if generic_codec:
            aggregate = uplink.finalize(aggregate)
        params, alg_state, alg_metrics = algorithm.server_update(
            state.params, state.algorithm_state, aggregate,
            ServerInfo(state.round, C, expected_cohort if poisson else M, weight_sum))
        if cohort_states is None:
            scatter_ids = jnp.where(valid, ids, state_rows(state))  # padding rows are dropped
            client_states = jax.tree.map(
                lambda s, n: s.at[scatter_ids].set(n, mode="drop"), state.client_states, new_cstates)
        else:
            client_states = state.client_states
        overflow = jnp.maximum(num_joined - M, 0).astype(jnp.int32)
        sampling_metrics = {}
        if poisson:  # per-round server metrics: they reach metrics.jsonl as server_cohort_*_per_round
            sampling_metrics = {"cohort_joined": num_joined.astype(jnp.float32),
                                "cohort_overflow": overflow.astype(jnp.float32)}
        sampling_metrics.update(draw_metrics)  # "available": server_available_per_round
        real = lambda a: jnp.where(_slot_mask(joined, a), a, jnp.zeros_like(a))  # masked slots report zeros
        metrics = RoundMetrics(
            train_loss=loss_sum / jnp.maximum(weight_sum, 1e-30),
            total_weight=weight_sum,
            cohort=jnp.where(joined, cohort, -1),
            uplink_bits=real(ub[:M]),
            downlink_bits=real(db[:M]),
            local_steps=real(steps[:M]),
            active=jnp.asarray(True),
            clients=jax.tree.map(lambda a: real(a[:M]), cmetrics),
            server={**agg_metrics, **alg_metrics, **sampling_metrics, **deadline_metrics},
            joined=num_joined.astype(jnp.int32),
            overflow=overflow,
        )
        new_state = ServerState(params, alg_state, agg_state, client_states, state.round + 1, state.key)
        if cohort_states is None:
            return new_state, metrics
        if plan is not None:  # the host writes every cohort row back: a dropped client's row goes back unchanged
            new_cstates = jax.tree.map(lambda n, o: jnp.where(_slot_mask(valid, n), n, o), new_cstates, cohort_states)
        return new_state, metrics, new_cstates

    def state_rows(state):
        leaves = jax.tree.leaves(state.client_states)
        return leaves[0].shape[0] if leaves else C

    return one_round
