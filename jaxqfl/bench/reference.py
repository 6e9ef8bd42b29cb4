"""The per-client loop a jaxqfl round is compared against (FedJAX's ``for_each_client`` shape).

One round of the reference:

    cohort = the same ids the engine samples (``jax.random.choice`` under the
             ``purpose_key(round_key(run_key, round), COHORT)`` key of ``jaxqfl.keys``)
    for i in cohort:                                   # a Python loop, one dispatch per client
        acc <- train_client(acc, params, i, round_key) # one jitted program per call
    params, opt_state <- server_update(params, opt_state, acc.update_sum / acc.weight_sum)

``train_client`` is as good as a per-client program gets: the client's local
steps are one ``lax.scan`` inside one ``jit``, the population stays on the
device and the client's batches are gathered inside the program, and the
weighted delta is accumulated into a donated buffer, so each client costs one
dispatch and no host transfer. On CPU its gradient gets the engine's layout fix
for convolutions inside a scan (``jaxqfl.engine.conv_layout``), so the
comparison is about batching clients, not about that fix. It uses the engine's own batch schedule and key
folding, so for float codecs its result equals the engine's to float tolerance:
the comparison times the same arithmetic with and without jaxqfl's batching.

An uplink codec without per-client state (QSGD, uniform, ...) is applied as the
engine applies it: ``encode`` with the client's ``UPLINK`` key, ``decode``,
weighted mean, ``finalize``. What it leaves out: codecs with per-client state
(error feedback), downlink codecs, several devices. It runs on
``jax.devices()[0]`` with XLA's intra-op threads.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxqfl import keys
from jaxqfl.algorithms.base import Algorithm, ClientInfo, ServerInfo
from jaxqfl.data.population import Population
from jaxqfl.engine.conv_layout import canonical_convolutions
from jaxqfl.engine.schedule import LocalSchedule, make_batch_fn
from jaxqfl.engine.evaluation import label_dtype
from jaxqfl.engine.round import sample_cohort as sample_cohort_ids
from jaxqfl.tasks import Task, default_for


class LoopState(NamedTuple):
    params: Any
    opt_state: Any
    round: int
    key: jax.Array


class LoopReference(NamedTuple):
    """``init(seed) -> LoopState``; ``run_round(state) -> (state, train_loss)``; ``warm_up(state)``."""

    init: Callable
    run_round: Callable
    warm_up: Callable


def per_client_loop(
    population: Population,
    model,
    algorithm: Algorithm,
    schedule: LocalSchedule,
    *,
    cohort_size: int,
    task: Task | None = None,
    uplink=None,
    device=None,
) -> LoopReference:
    """Build the Python-loop reference round for the same workload as ``engine.build``."""
    task = task or default_for(population)
    device = device or jax.devices()[0]
    C, M = population.num_clients, cohort_size
    y_dtype = label_dtype(population)
    put = lambda a: jax.device_put(a, device)
    x = put(population.x.astype(np.float32, copy=False))
    y = put(population.y.astype(y_dtype, copy=False))
    offsets = put(population.offsets.astype(np.int32))
    counts = put(population.counts.astype(np.int32))
    max_count = population.max_count
    num_steps = schedule.num_steps(max_count)
    prepare_plan, step_batch = make_batch_fn(schedule, max_count)
    sample_x = jnp.zeros((1,) + population.feature_shape, jnp.float32)
    if uplink is not None:
        params_shape = jax.eval_shape(model.init, jax.random.key(0), sample_x)
        if jax.tree.leaves(jax.eval_shape(uplink.init, params_shape)):  # (updates shaped like params)
            raise ValueError("the loop reference supports uplink codecs without per-client state only")

    if device.platform == "cpu":  # the engine's own fix for convolutions in a scan (jaxqfl.engine.conv_layout)
        value_and_grad = lambda f: canonical_convolutions(jax.value_and_grad(f))
    else:
        value_and_grad = jax.value_and_grad

    def train_client(acc, message, cid, rkey, round_index, x, y, offsets, counts):
        """One client's local training (a scan over its steps); adds p_i * update_i into ``acc``."""
        ckey = keys.client_key(rkey, cid)
        count, offset = counts[cid], offsets[cid]
        plan = prepare_plan(ckey, count)
        info = ClientInfo(cid, count, schedule.steps_taken(count, max_count).astype(jnp.int32), ckey, round_index)

        def local_step(local, s):
            sb = step_batch(plan, ckey, count, s)
            rows = offset + sb.rows
            xb, yb = x[rows], y[rows]
            m = sb.mask.astype(jnp.float32)
            qkey = keys.purpose_key(keys.step_key(ckey, s), keys.QUANT)

            def loss_fn(p):
                per_example = task.loss(model.apply(p, xb, key=qkey), yb)
                return jnp.sum(per_example * m) / jnp.maximum(jnp.sum(m), 1.0)

            loss, grads = value_and_grad(loss_fn)(local.params)
            stepped = algorithm.client_step(local, grads, message, info._replace(step_loss=loss))
            local = jax.tree.map(lambda a, b: jnp.where(sb.active, a, b), stepped, local)
            return local, (jnp.where(sb.active, loss, 0.0), sb.active)

        start = algorithm.client_init(message, (), info)
        local, (losses, active) = jax.lax.scan(local_step, start, jnp.arange(num_steps))
        out = algorithm.client_final(local, message, (), info)
        delta = out.update
        if uplink is not None:
            sent, _ = uplink.encode(delta, uplink.init(delta), keys.purpose_key(ckey, keys.UPLINK))
            delta = uplink.decode(sent)
        w = out.weight
        steps = jnp.maximum(jnp.sum(active.astype(jnp.int32)), 1)
        delta_sum, weight_sum, loss_sum = acc
        return (
            jax.tree.map(lambda s, d: s + w * d, delta_sum, delta),
            weight_sum + w,
            loss_sum + w * jnp.sum(losses) / steps,
        )

    train_client_raw = train_client
    train_client = jax.jit(train_client, donate_argnums=(0,))

    @jax.jit
    def sample_cohort(run_key, round_index):
        rkey = keys.round_key(run_key, round_index)
        return rkey, sample_cohort_ids(rkey, C, M)

    @jax.jit
    def server_step(params, opt_state, acc, round_index):
        delta_sum, weight_sum, loss_sum = acc
        mean = jax.tree.map(lambda d: d / jnp.maximum(weight_sum, 1e-30), delta_sum)
        if uplink is not None:
            mean = uplink.finalize(mean)
        params, opt_state, _ = algorithm.server_update(params, opt_state, mean,
                                                       ServerInfo(round_index, C, M, weight_sum))
        return params, opt_state, loss_sum / jnp.maximum(weight_sum, 1e-30)

    def zeros_acc(message, rkey, cohort, round_index):
        shapes = jax.eval_shape(train_client_raw, (jax.tree.map(jnp.zeros_like, message.params), 0.0, 0.0),
                                message, cohort[0], rkey, round_index, x, y, offsets, counts)[0]
        return (jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes), jnp.float32(0.0), jnp.float32(0.0))

    def init(seed: int) -> LoopState:
        run_key = jax.random.key(seed)
        params = model.init(keys.purpose_key(run_key, keys.INIT), sample_x)
        params = jax.device_put(params, device)
        if jax.tree.leaves(jax.eval_shape(algorithm.client_state_init, params)):
            raise ValueError("the loop reference supports algorithms without per-client state only")
        return LoopState(params, algorithm.init(params), 0, run_key)

    def run_round(state: LoopState):
        rkey, cohort = sample_cohort(state.key, jnp.int32(state.round))
        r = jnp.int32(state.round)
        message = algorithm.broadcast(state.params, state.opt_state)
        acc = zeros_acc(message, rkey, cohort, r)
        for cid in np.asarray(cohort):  # the per-client Python loop being measured
            acc = train_client(acc, message, cid, rkey, r, x, y, offsets, counts)
        params, opt_state, loss = server_step(state.params, state.opt_state, acc, r)
        return LoopState(params, opt_state, state.round + 1, state.key), loss

    def warm_up(state: LoopState) -> float:
        """Compile the per-client and server programs; returns seconds."""
        import time

        t0 = time.perf_counter()
        rkey, cohort = sample_cohort(state.key, jnp.int32(state.round))
        r = jnp.int32(state.round)
        message = algorithm.broadcast(state.params, state.opt_state)
        acc = zeros_acc(message, rkey, cohort, r)
        acc = train_client(acc, message, cohort[0], rkey, r, x, y, offsets, counts)
        jax.block_until_ready(server_step(state.params, state.opt_state, acc, r))
        return time.perf_counter() - t0

    return LoopReference(init, run_round, warm_up)
