"""A round deadline inside the round program: the cohort's exact bits before it trains, and the plan.

``jaxqfl.systems.deadline`` states the semantics (drop or partial work against a
deadline ``D``, the round's simulated seconds). What it needs from the engine is
each cohort client's scheduled steps ``K_c`` and the exact bits it will receive
and send, *before* any client trains. They come from a dry run of the round's own
code paths, vmapped over the cohort's slots:

    receive(message, cstates_c, ckey_c)             -> downlink bits     (engine.client_update.make_receive)
    send_update(zero update, weight = sampled_c, ...) -> uplink bits       (aggregator, tier codec, protocol bits)

on a zero update of the structure the client's ``train_client`` returns (its shapes
from ``jax.eval_shape``) and zero cohort statistics. By the codec contract the
bit counts depend on static shapes only (and, for secure aggregation, on the
client's dropout draw and the sign of its weight), so they are the bits the round
then reports; only the counts are used, so XLA removes the dry encoders as dead
code. No host synchronisation, static shapes.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxqfl import keys
from jaxqfl.aggregate.base import CohortStatistics
from jaxqfl.algorithms.base import ClientInfo
from jaxqfl.engine.client_update import TrainedClient
from jaxqfl.engine.schedule import LocalSchedule
from jaxqfl.systems.deadline import DeadlinePlan, plan_round


def make_deadline_plan(train_client, receive, send_update, aggregator, schedule: LocalSchedule, *, max_count: int,
                       systems, deadline: float, stragglers: str) -> Callable:
    """``plan(message, ids, sampled, cstates, agg_state, data, rkey, round) -> DeadlinePlan`` over ``[slots]``.

    ``train_client`` is only traced abstractly (the structure of an update and of the
    statistics); ``data`` is the population on the devices (``DeviceData``), indexed by id.
    """
    if schedule.real_steps is not None:
        raise ValueError("a deadline needs every client's scheduled steps; a schedule padded for a sweep over "
                         "local steps (real_steps) is not supported")
    systems = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), systems)
    limit = (jnp.int32(0),) if stragglers == "partial" else ()  # train_client's step limit argument

    def plan(message, ids, sampled, cstates, agg_state, data, rkey, round_index) -> DeadlinePlan:
        first = jax.tree.map(lambda a: a[0], cstates)
        trained = jax.eval_shape(lambda: train_client(message, ids[0], ids[0], sampled[0], first, data, rkey,
                                                      round_index, *limit))
        zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)
        stats = CohortStatistics()
        if aggregator.statistics is not None:  # the reduced statistics have one client's shapes
            stats = zeros(jax.eval_shape(lambda t: aggregator.statistics(
                t.update, t.weight, t.client_states["aggregator"], agg_state, t.info), trained))

        def dry(cid, in_cohort, cs):
            ckey = keys.client_key(rkey, cid)
            count = data.counts[cid]
            _, _, down_bits = receive(message, cs, ckey)
            K = schedule.steps_taken(count, max_count).astype(jnp.int32)
            info = ClientInfo(cid, count, K, ckey, round_index)
            t = TrainedClient(update=zeros(trained.update), weight=in_cohort.astype(jnp.float32), info=info,
                              client_states=cs, loss=jnp.float32(0.0), downlink_bits=down_bits, metrics={})
            return K, send_update(t, cs, agg_state, stats).uplink_bits, down_bits

        K, up, down = jax.vmap(dry)(ids, sampled, cstates)
        return plan_round(systems, ids, sampled, K, up, down, deadline, stragglers)

    return plan
