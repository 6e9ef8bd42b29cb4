"""q-FFL by q-FedAvg: clients with a larger loss weigh more, for a fairer spread of accuracy.

q-FFL minimises ``f_q(w) = sum_k p_k F_k(w)^{q+1} / (q+1)`` (Li, Sanjabi, Beirami,
Smith 2020, "Fair Resource Allocation in Federated Learning", ICLR); q-FedAvg
(their Algorithm 2) solves it. Round t, client k runs local SGD (step eta) from
w_t to w_k and sends

    Delta w_k = L (w_t - w_k),            L = 1 / eta (the Lipschitz estimate of the paper)
    Delta_k   = F_k(w_t)^q Delta w_k
    h_k       = q F_k(w_t)^{q-1} ||Delta w_k||^2 + L F_k(w_t)^q

and the server steps  w_{t+1} = w_t - sum_k Delta_k / sum_k h_k  (the aggregator's
uniform means of Delta_k and h_k give the same ratio). ``F_k(w_t)`` is the task
loss of the client's first local step, at w_t on that step's batch (the whole
local data set with a full-batch schedule, as the paper evaluates it; a
minibatch estimate otherwise). With q = 0: Delta_k = L (w_t - w_k), h_k = L and
``w_{t+1} = mean_k w_k``, FedAvg with uniform weights. Clients are weighted 1 (the
paper samples clients in proportion to p_k and averages them uniformly).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxqfl.algorithms.base import Algorithm, ClientOutput, broadcast_params, no_client_state
from jaxqfl.algorithms.hparams import check_number


class QLocal(NamedTuple):
    params: Any
    start_loss: jax.Array  # () F_k(w_t): the first step's loss
    step: jax.Array  # () int32 steps taken


class QUpdate(NamedTuple):
    delta: Any  # F^q Delta w_k
    h: jax.Array  # () q F^{q-1} ||Delta w_k||^2 + L F^q


def qffl(local_lr: float, q: float = 1.0) -> Algorithm:
    """q-FedAvg with local SGD step ``local_lr`` (> 0) and fairness ``q`` (>= 0; the paper tries 0.001 to 15)."""
    local_lr = check_number("q-FFL", "local_lr", local_lr, low=0.0, low_inclusive=False, describe="a number > 0")
    q = check_number("q-FFL", "q", q, low=0.0, low_inclusive=True, high=float("inf"), describe="a finite number >= 0")
    lipschitz = 1.0 / local_lr

    def client_init(message, client_state, info):
        del client_state, info
        return QLocal(message.params, jnp.float32(0.0), jnp.int32(0))

    def client_step(local, grads, message, info):
        del message
        params = jax.tree.map(lambda w, g: w - local_lr * g, local.params, grads)
        start = jnp.where(local.step == 0, info.step_loss, local.start_loss)
        return QLocal(params, start, local.step + 1)

    def client_final(local, message, client_state, info):
        del info
        loss = jnp.maximum(local.start_loss, 1e-10)  # F_k > 0 (a zero loss would make F^{q-1} infinite)
        dw = jax.tree.map(lambda w0, w: lipschitz * (w0 - w), message.params, local.params)
        fq = loss ** q
        sq = sum(jnp.sum(jnp.square(a)) for a in jax.tree.leaves(dw))
        h = q * loss ** (q - 1.0) * sq + lipschitz * fq
        return ClientOutput(QUpdate(jax.tree.map(lambda a: fq * a, dw), h), jnp.float32(1.0), client_state, {})

    def server_update(params, state, mean, info):
        del info
        return jax.tree.map(lambda w, d: w - d / mean.h, params, mean.delta), state, {}

    return Algorithm(
        init=lambda params: (),
        client_state_init=no_client_state,
        broadcast=broadcast_params,
        client_init=client_init,
        client_step=client_step,
        client_final=client_final,
        server_update=server_update,
    )
