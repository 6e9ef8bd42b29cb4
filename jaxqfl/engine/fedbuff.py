"""FedBuff: buffered asynchronous FL as an event program on the virtual clock (one flush, traceable).

Nguyen et al., AISTATS 2022, "Federated Learning with Buffered Asynchronous
Aggregation". C clients train concurrently; the server keeps a buffer and every
K arrivals applies the buffer's staleness-weighted mean delta; an arrived client
is replaced by a newly sampled one, so C stay in flight. Semantics, exactly:

* State: the server state (params, algorithm / aggregator state, ``round`` = number
  of flushes applied, run key), the time ``T_{r-1}`` of the last flush (0 before the
  first) and an in-flight table of C slots: client id, start time, finish time,
  start version and the client's *trained* output (update, weight, loss, bits...).
  A client's training depends only on its start model, its data and its key, so it
  is trained when it starts and the result is held until it arrives.
* Fill (time 0): the C clients ``round.sample_cohort(round_key(run, 0), N, C)``, trained
  from the initial model with round-0 keys ``client_key(round_key(run, 0), c)``, start
  version 0, finish time

      finish_c = start_c + steps_c * seconds_per_step_c + (downlink_bits_c + uplink_bits_c) / bandwidth_c

  (``jaxqfl.systems``; ``uplink_bits_c``: the client's upload as ``send_update`` encodes it
  when it starts: exact for codecs whose size depends only on the shapes, which is
  every built-in codec; the flush reports the bits it actually sends).
* Flush r = 0, 1, ...: the K slots with the smallest finish times arrive (ties: lower
  client id first); ``T_r`` is the K-th arrival's finish time. Arrival c has staleness
  ``s_c = r - start_version_c`` and weight ``w_c f(s_c)``, ``f`` = constant (1), sqrt
  (``1 / sqrt(1 + s)``) or poly:A (``(1 + s)^-A``). The K arrivals, in slot order, are
  the aggregator's cohort (``CohortInfo`` with the round key of r): they are sent with
  the keys of flush r (``info.key = client_key(round_key(run, r), c)``, ``info.round = r``)
  through ``make_send_update`` (uplink codec, DP, secure aggregation apply per buffer of
  K), reduced ("sum" or "gather", statistics pre-pass included) and finished by
  ``aggregator.server``; then ``algorithm.server_update`` (``ServerInfo`` cohort size K)
  gives version r + 1. Server metric ``ROUND_SECONDS`` = ``T_r - T_{r-1}``
  (``jaxqfl.systems.clock``): the driver's clock is the flush time. Per-client metric
  ``staleness``; ``RoundMetrics.cohort`` and every per-client metric are in arrival order.
* Replacement: the K arrived slots are refilled with K clients drawn uniformly without
  replacement among those not in flight: the top K of the uniforms of
  ``purpose_key(round_key(run, r + 1), COHORT)`` with the C - K still in flight set to -1
  (with K = C: exactly ``sample_cohort`` of round r + 1), trained with
  ``client_key(round_key(run, r + 1), c)``; the j-th smallest arrived slot receives the
  j-th drawn client (``top_k`` order). A replacement starts at its predecessor's arrival time
  t and downloads version r + 1 if ``t == T_r`` (a flush at t happens before downloads
  at t), else version r (both models are at hand inside the flush).

Hence K = C, constant f and equal speeds is synchronous FedAvg with cohort C: the same
cohorts, keys and models, flush r = round r (``tests/test_fedbuff.py``).

Per-client persistent state (SCAFFOLD controls, error feedback, SiloBN statistics, adaptive
DP clipping's indicator) has no clear asynchronous meaning; ``check_stateless`` refuses it.

Privacy per buffer (the FedBuff paper's point): the buffer is the aggregator's cohort, so a
secure sum (``aggregate.secure_sum(codec, num_clients=N, cohort_size=K)``) masks among the
K arrivals of a flush and unmasks over their survivors (dropouts drawn from the flush's
client keys), and ``aggregate.dp_mean(clip, z)`` (fixed clip: stateless) releases the
flush's clipped sum plus ``N(0, (z C)^2)`` noise over K, the noise drawn from
``fold_in(round_key(run, r), DP)``. Accounting (``jaxqfl.privacy``, ``sampling="async"``):
who arrives depends on speed, not on a uniform draw, so a flush is the unsampled Gaussian
mechanism, composed over the flushes. Such means weigh each client 1 (DP) or an integer
(secure and integer sums): a staleness factor other than 1 is dropped or rounded there
(the CLI refuses the combination). A secure sum's upload size in ``finish_c`` is the one
drawn at the client's start (its dropout then), while the flush decides the dropout with the
flush's keys: the clock may count a dropped client's masked words (timing only).

Devices: the whole program is replicated: every device runs all of it on every array (a
``shard_map`` with replicated specs, a vmap over the C fill / K replacements), so no
chunking applies and the events (arrivals, staleness, clock, cohorts) are the same on any
device count; 2 and 4 devices give the same bits, and 1 device the same model to one ulp
(XLA compiles a one-device program without its SPMD partitioner and fuses the server
step's float ops differently; tested). It does not scale with the device count: each
device trains every replacement. A sharded version would split the K replacements over
``"clients"`` as the synchronous round splits its cohort.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxqfl import keys
from jaxqfl.aggregate.base import CohortInfo, CohortStatistics
from jaxqfl.algorithms.base import ServerInfo, tree_select
from jaxqfl.engine.client_update import TrainedClient, make_send_update, make_train_client
from jaxqfl.engine.round import masked_max, masked_sum, sample_cohort
from jaxqfl.engine.state import RoundMetrics, ServerState
from jaxqfl.systems.clock import ROUND_SECONDS

STALENESS = ("constant", "sqrt", "poly:A")


class InFlight(NamedTuple):
    """The C in-flight slots (every leaf has a leading [C] axis)."""

    ids: jax.Array  # [C] int32 client ids
    start: jax.Array  # [C] float32 simulated start time
    finish: jax.Array  # [C] float32 simulated arrival time
    version: jax.Array  # [C] int32 the server version (flushes applied) the client downloaded
    trained: TrainedClient  # [C, ...] the client's trained output, held until it arrives


class FedBuffState(NamedTuple):
    """What a FedBuff run carries from one flush to the next."""

    server: ServerState  # round = flushes applied; client_states = () (none kept)
    in_flight: InFlight
    clock: jax.Array  # () float32 the last flush's time T_{r-1} (0 before the first)

    @property
    def params(self):
        return self.server.params

    @property
    def round(self):
        return self.server.round


def staleness_weight(spec: str) -> Callable[[jax.Array], jax.Array]:
    """``f(s)`` of ``"constant"`` (1), ``"sqrt"`` (``1/sqrt(1+s)``) or ``"poly:A"`` (``(1+s)^-A``, A > 0)."""
    if spec == "constant":
        return lambda s: jnp.ones(jnp.shape(s), jnp.float32)
    if spec == "sqrt":
        return lambda s: jax.lax.rsqrt(1.0 + s.astype(jnp.float32))
    if isinstance(spec, str) and spec.startswith("poly:"):
        try:
            a = float(spec[len("poly:"):])
        except ValueError:
            a = float("nan")
        if a > 0 and a != float("inf"):
            return lambda s: jnp.power(1.0 + s.astype(jnp.float32), -a)
        raise ValueError(f"staleness {spec!r}: A in poly:A must be a finite number > 0")
    raise ValueError(f"staleness must be one of {', '.join(STALENESS)}, got {spec!r}")


def check_stateless(per_client_states: dict) -> None:
    """Refuse per-client persistent state (``one_client_states`` of the run, abstract or concrete)."""
    kept = sorted(name for name, s in per_client_states.items() if jax.tree.leaves(s))
    if kept:
        raise ValueError(f"FedBuff keeps no per-client state, but this run keeps some per client (in its "
                         f"{', '.join(kept)}: SCAFFOLD / FedDyn controls, error feedback (+ef), adaptive DP "
                         f"clipping's indicators, personal or BatchNorm statistics); its meaning across asynchronous versions "
                         f"is not defined: use a stateless algorithm, codec and aggregator")


def fedbuff_program(model, algorithm, aggregator, schedule, task, *, num_clients: int, max_count: int,
                    concurrency: int, buffer: int, staleness: str, systems, client_states: dict,
                    uplink=None, downlink=None, label_transform=None, platform: str = "cpu"):
    """``(fill(server_state, data) -> FedBuffState, flush(state, data) -> (state, RoundMetrics))``.

    ``client_states``: one client's (empty) state dict, ``one_client_states(...)(params)``.
    Both are traceable and host-free; ``flush`` is one FedBuff server step (module docstring).
    """
    N, C, K = num_clients, concurrency, buffer
    f = staleness_weight(staleness)
    train_client = make_train_client(model, algorithm, schedule, task, max_count=max_count, downlink=downlink,
                                     platform=platform, label_transform=label_transform)
    send_update = make_send_update(aggregator, uplink)
    generic_codec = uplink is not None and not aggregator.encodes_uplink
    gather = aggregator.reduction == "gather"
    two_phase = aggregator.statistics is not None
    spc_all = jnp.asarray(systems.seconds_per_step, jnp.float32)
    bw_all = jnp.asarray(systems.bandwidth, jnp.float32)

    def cohort_stats(t: TrainedClient, agg_state):
        """The statistics pre-pass over the clients of ``t`` (leading axis), or empty."""
        if not two_phase:
            return CohortStatistics()
        per = jax.vmap(lambda u: aggregator.statistics(
            u.update, u.weight, u.client_states["aggregator"], agg_state, u.info))(t)
        valid = jnp.ones(t.weight.shape, bool)
        return CohortStatistics(sums=masked_sum(per.sums, valid), maxes=masked_max(per.maxes, valid))

    def start_clients(message_of, ids, rkey, round_index, start, agg_state, data):
        """Train the clients ``ids`` (``message_of(j)``: client j's start message) and time their arrival."""

        def one(j, cid):
            t = train_client(message_of(j), cid, cid, jnp.asarray(True), client_states, data, rkey, round_index)
            return t

        trained = jax.vmap(one)(jnp.arange(ids.shape[0]), ids)
        # the upload's bits as send_update encodes it now (with the client's own statistics)
        stats = jax.vmap(lambda u: cohort_stats(jax.tree.map(lambda a: a[None], u), agg_state))(trained)
        up = jax.vmap(lambda u, st: send_update(u, u.client_states, agg_state, st).uplink_bits)(trained, stats)
        seconds = (trained.info.num_steps.astype(jnp.float32) * spc_all[ids]
                   + (trained.downlink_bits.astype(jnp.float32) + up.astype(jnp.float32)) / bw_all[ids])
        return trained, start + seconds

    def fill(server: ServerState, data) -> FedBuffState:
        rkey = keys.round_key(server.key, 0)
        ids = sample_cohort(rkey, N, C)
        message = algorithm.broadcast(server.params, server.algorithm_state)
        start = jnp.zeros((C,), jnp.float32)
        trained, finish = start_clients(lambda j: message, ids, rkey, jnp.int32(0), start,
                                        server.aggregator_state, data)
        flight = InFlight(ids, start, finish, jnp.zeros((C,), jnp.int32), trained)
        return FedBuffState(server._replace(client_states=(), round=jnp.int32(0)), flight, jnp.float32(0.0))

    def flush(state: FedBuffState, data):
        srv, fl = state.server, state.in_flight
        r = srv.round
        arrived = jnp.lexsort((fl.ids, fl.finish))[:K]  # [K] slots in arrival order: finish time, then id
        slots = jnp.sort(arrived)  # the buffer, in slot order
        T = fl.finish[arrived[K - 1]]
        ids = fl.ids[slots]
        stale = r - fl.version[slots]
        rkey = keys.round_key(srv.key, r)
        t = jax.tree.map(lambda a: a[slots], fl.trained)
        sent_info = t.info._replace(key=jax.vmap(keys.client_key, (None, 0))(rkey, ids),
                                    round=jnp.full((K,), r, jnp.int32))
        t = t._replace(weight=t.weight * f(stale), info=sent_info)

        # the buffer is the aggregator's cohort: send, reduce, server side, server update
        agg_state = srv.aggregator_state
        stats = cohort_stats(t, agg_state)
        sent = jax.vmap(lambda u: send_update(u, u.client_states, agg_state, stats))(t)
        valid = jnp.ones((K,), bool)
        reduced = sent.summand if gather else masked_sum(sent.summand, valid)
        weight_sum = jnp.sum(t.weight)
        aggregate, agg_state, agg_metrics = aggregator.server(reduced, agg_state, stats,
                                                              CohortInfo(ids=ids, valid=valid, key=rkey, round=r))
        if generic_codec:
            aggregate = uplink.finalize(aggregate)
        params, alg_state, alg_metrics = algorithm.server_update(
            srv.params, srv.algorithm_state, aggregate, ServerInfo(r, N, K, weight_sum))

        # replacements: K clients not in flight, with the keys of round r + 1
        next_key = keys.round_key(srv.key, r + 1)
        still = jnp.ones((C,), bool).at[slots].set(False)
        busy = jnp.zeros((N,), bool).at[fl.ids].set(still)
        u = jax.random.uniform(keys.purpose_key(next_key, keys.COHORT), (N,))
        new_ids = jax.lax.top_k(jnp.where(busy, -1.0, u), K)[1].astype(jnp.int32)
        start = fl.finish[slots]
        newer = start >= T  # arrived at the flush time: downloads the new version
        msg_new = algorithm.broadcast(params, alg_state)
        msg_old = algorithm.broadcast(srv.params, srv.algorithm_state)
        trained, finish = start_clients(lambda j: tree_select(newer[j], msg_new, msg_old), new_ids, next_key,
                                        r + 1, start, agg_state, data)
        put = lambda a, n: a.at[slots].set(n)
        flight = InFlight(put(fl.ids, new_ids), put(fl.start, start), put(fl.finish, finish),
                          put(fl.version, jnp.where(newer, r + 1, r).astype(jnp.int32)),
                          jax.tree.map(put, fl.trained, trained))

        order = jnp.searchsorted(slots, arrived)  # buffer position of each arrival, in arrival order
        by_arrival = lambda a: a[order]
        clients = {**t.metrics, **sent.metrics, "staleness": stale.astype(jnp.float32)}
        metrics = RoundMetrics(
            train_loss=jnp.sum(t.weight * t.loss) / jnp.maximum(weight_sum, 1e-30),
            total_weight=weight_sum,
            cohort=by_arrival(ids),
            uplink_bits=by_arrival(sent.uplink_bits),
            downlink_bits=by_arrival(t.downlink_bits),
            local_steps=by_arrival(t.info.num_steps),
            active=jnp.asarray(True),
            clients=jax.tree.map(by_arrival, clients),
            server={**agg_metrics, **alg_metrics, ROUND_SECONDS: (T - state.clock).astype(jnp.float32),
                    "staleness_mean": jnp.mean(stale.astype(jnp.float32))},
            joined=jnp.int32(K),
            overflow=jnp.int32(0),
        )
        server = ServerState(params, alg_state, agg_state, (), r + 1, srv.key)
        return FedBuffState(server, flight, T), metrics

    return fill, flush
