"""One client's round, traceable and vmapped by the round program.

    receive:  params_i = decode(encode(message.params))   (downlink codec, when there is one)
    train:    local = algorithm.client_init(message_i, client_state_i, info)
              lax.scan over the S scheduled steps: batch rows (drawn before the scan) ->
              task loss at local.params -> grads -> algorithm.client_step (masked steps skipped)
    finish:   algorithm.client_final -> ClientOutput(update, weight, client_state, metrics)
    send:     aggregator.prepare -> uplink codec (unless the aggregator encodes) -> aggregator.client

``train_client`` covers receive/train/finish and ``send_update`` the rest, so a
round whose aggregator needs a cohort pre-pass can run the two halves apart.
A client's keys come from its id (``info.key = keys.client_key(round_key, id)``), never
from its slot, so results do not depend on the layout.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxqfl import keys
from jaxqfl.algorithms.base import ClientInfo
from jaxqfl.compress.base import FLOAT_BITS
from jaxqfl.compress.switch import switch as switch_codec
from jaxqfl.engine.conv_layout import canonical_convolutions
from jaxqfl.engine.schedule import LocalSchedule, make_batch_fn
from jaxqfl.engine.state import num_params, tree_where
from jaxqfl.models import stats
from jaxqfl.models.core import bound
from jaxqfl.models.switch import switch as switch_model



class TrainedClient(NamedTuple):
    update: Any
    weight: jax.Array  # () float32, 0 for padding slots
    info: ClientInfo
    client_states: dict  # the client's new states (algorithm's and downlink codec's updated)
    loss: jax.Array  # () mean local loss over its steps
    downlink_bits: jax.Array  # () int32
    metrics: dict  # the algorithm's per-client metrics


def float_bits(tree) -> int:
    return FLOAT_BITS * num_params(tree)


def make_receive(downlink) -> Callable:
    """``receive(message, cstates, ckey) -> (message as the client gets it, its new cstates, downlink bits)``.

    The downlink codec on the message's params (when there is one) plus the message's
    float32 extras; the bits depend only on static shapes (the codec contract).
    """

    def receive(message, cstates, ckey):
        new_cstates = dict(cstates)
        extras_bits = float_bits(message.extras)
        if downlink is not None:
            sent, new_cstates["downlink"] = downlink.encode(
                message.params, cstates["downlink"], keys.purpose_key(ckey, keys.DOWNLINK))
            message = message._replace(params=downlink.decode(sent))
            down_bits = jnp.asarray(downlink.bits(sent), jnp.int32) + extras_bits
        else:
            down_bits = jnp.int32(float_bits(message.params) + extras_bits)
        return message, new_cstates, down_bits

    return receive


def make_train_client(model, algorithm, schedule: LocalSchedule, task, *, max_count: int, downlink, platform: str,
                      label_transform=None, tiers=None, step_limits: bool = False):
    """``train_client(message, cid, slot, valid, cstates, data, rkey, round[, limit]) -> TrainedClient``.

    ``label_transform(y, info) -> y``, when given, maps each batch's labels before the loss.
    ``tiers`` (``engine.tiers.Tiers``): client ``cid`` trains ``tiers.models[tier of cid]`` (through
    ``tiers.model_at(tier)``, one pass, when the tiers give it; a ``lax.switch`` over the T models otherwise).
    ``step_limits``: ``train_client`` takes a traced int32 ``limit`` and does at most that many of its
    scheduled steps (steps ``s >= limit`` masked like a schedule's masked steps; ``info.num_steps =
    min(K, limit)``): a deadline's partial work (``jaxqfl.systems.deadline``).
    """
    tier_of = None if tiers is None else jnp.asarray(tiers.of_client)
    S = schedule.num_steps(max_count)
    prepare_plan, step_batch = make_batch_fn(schedule, max_count)
    every_step_active = schedule.every_step_active and not step_limits  # no masked steps: skip the select
    receive = make_receive(downlink)
    stateful = stats.has_stats(model)  # running statistics (jaxqfl.models.stats): set after each step
    local_stats = stateful and model.local_stats
    rows_pad = schedule.batch_size is None or schedule.local_epochs is not None  # batches may hold padding rows
    if platform == "cpu":  # convolutions in a scan: keep XLA:CPU's fast layout (conv_layout)
        value_and_grad = lambda f: canonical_convolutions(jax.value_and_grad(f, has_aux=True))
    else:
        value_and_grad = lambda f: jax.value_and_grad(f, has_aux=True)

    def train_client(message, cid, slot, valid, cstates, data, rkey, round_index, limit=None) -> TrainedClient:
        reading = bound(model, data.frozen)  # the frozen part (a LoRA base) from the program's data
        if tier_of is not None:  # the client's tier's model (a QAT preset), selected by its id
            reading = switch_model(tiers.models, tier_of[cid], at=tiers.model_at)
        ckey = keys.client_key(rkey, cid)
        count, offset = data.counts[slot], data.offsets[slot]
        message, new_cstates, down_bits = receive(message, cstates, ckey)
        num_steps = schedule.steps_taken(count, max_count).astype(jnp.int32)
        if step_limits:
            num_steps = jnp.minimum(num_steps, jnp.maximum(limit, 0))
        info = ClientInfo(cid, count, num_steps, ckey, round_index)
        # SiloBN / FedBN: the client trains from its own statistics (and BatchNorm layers); its update is still
        # taken against the server's model (jaxqfl.models.stats)
        start = message._replace(params=stats.with_local(message.params, cstates["model"])) if local_stats else message
        local = algorithm.client_init(start, cstates["algorithm"], info)
        plan = prepare_plan(ckey, count)

        def local_step(local, step):
            s, sb = step
            if step_limits:
                sb = sb._replace(active=sb.active & (s < limit))
            rows = offset + sb.rows
            xb, yb = data.x[rows], data.y[rows]
            if label_transform is not None:
                yb = label_transform(yb, info)
            qkey = keys.purpose_key(keys.step_key(ckey, s), keys.QUANT)
            m = sb.mask.astype(jnp.float32)

            def loss_fn(p):
                if stateful:
                    out, new_stats = reading.train_apply(p, xb, key=qkey, mask=sb.mask if rows_pad else None)
                else:
                    out, new_stats = reading.apply(p, xb, key=qkey), None
                per_example = task.loss(out, yb)
                return jnp.sum(per_example * m) / jnp.maximum(jnp.sum(m), 1.0), new_stats

            (loss, new_stats), grads = value_and_grad(loss_fn)(local.params)
            stepped = algorithm.client_step(local, grads, start, info._replace(step_loss=loss))
            if stateful:  # statistics are state: set, not stepped
                stepped = stepped._replace(params=stats.with_stats(stepped.params, new_stats))
            if every_step_active:
                return stepped, (loss, sb.active)
            return tree_where(sb.active, stepped, local), (jnp.where(sb.active, loss, 0.0), sb.active)

        # every step's batch rows and masks at once (vectorised), then a scan over the steps
        steps = jnp.arange(S, dtype=jnp.int32)
        batches = (steps, jax.vmap(lambda s: step_batch(plan, ckey, count, s))(steps))
        local, (losses, active) = jax.lax.scan(local_step, local, batches)
        out = algorithm.client_final(local, message, cstates["algorithm"], info)
        new_cstates["algorithm"] = out.client_state
        if local_stats:
            new_cstates["model"] = stats.local_part(model, local.params)
        taken = jnp.sum(active.astype(jnp.int32))
        return TrainedClient(
            update=out.update,
            weight=jnp.where(valid, jnp.asarray(out.weight, jnp.float32), 0.0),
            info=info,
            client_states=new_cstates,
            loss=jnp.sum(losses) / jnp.maximum(taken, 1),
            downlink_bits=down_bits,
            metrics=dict(out.metrics),
        )

    return train_client


class SentUpdate(NamedTuple):
    summand: Any
    client_states: dict  # the aggregator's and uplink codec's states updated
    uplink_bits: jax.Array  # () int32
    metrics: dict  # the aggregator's per-client metrics


def make_send_update(aggregator, uplink, tiers=None) -> Callable:
    """``send_update(trained, cstates, agg_state, stats) -> SentUpdate``: prepare, encode, summand.

    ``tiers``: client ``i`` encodes with ``tiers.uplinks[tier of i]`` (``compress.switch``), not ``uplink``.
    """
    generic_codec = (uplink is not None or tiers is not None) and not aggregator.encodes_uplink
    tier_of = None if tiers is None else jnp.asarray(tiers.of_client)

    def send_update(t: TrainedClient, cstates, agg_state, stats) -> SentUpdate:
        new_cstates = dict(cstates)
        update, weight, agg_cstate, m1 = aggregator.prepare(
            t.update, t.weight, cstates["aggregator"], agg_state, stats, t.info)
        codec = uplink if tier_of is None else switch_codec(tiers.uplinks, tier_of[t.info.client_id])
        if generic_codec:
            msg, new_cstates["uplink"] = codec.encode(
                update, cstates["uplink"], keys.purpose_key(t.info.key, keys.UPLINK))
            update, bits = codec.decode(msg), jnp.asarray(codec.bits(msg), jnp.int32)
        elif aggregator.encodes_uplink:
            bits = jnp.int32(0)
        else:
            bits = jnp.int32(float_bits(update))
        summand, new_cstates["aggregator"], m2 = aggregator.client(update, weight, agg_cstate, agg_state, stats, t.info)
        metrics = {**m1, **m2}
        bits = bits + jnp.asarray(metrics.pop("uplink_bits", 0), jnp.int32)
        return SentUpdate(summand, new_cstates, bits, metrics)

    return send_update
