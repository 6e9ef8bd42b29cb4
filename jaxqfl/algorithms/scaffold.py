"""SCAFFOLD: local steps corrected by control variates (option II).

Round t (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning", ICML, Algorithm 1 with option II):

    server holds x and the server control c; client i holds its control c_i (0 at start).
    client i receives (x, c), sets y_i = x and takes K_i local steps of size eta_l:
        y_i <- y_i - eta_l (g_i(y_i) - c_i + c)
    then (option II)
        c_i^+ = c_i - c + (x - y_i) / (K_i eta_l)
    and uploads (Delta y_i, Delta c_i) = (y_i - x, c_i^+ - c_i), keeping c_i^+.
    server, over the cohort S of a population of N clients:
        x <- x + eta_g  mean_{i in S} Delta y_i
        c <- c + (|S| / N) mean_{i in S} Delta c_i

The mean is uniform over the cohort (p_i = 1), as in the paper: the server
control then stays the mean of all N client controls, ``c = (1/N) sum_i c_i``,
which a weighted mean would break. ``K_i`` is the number of local steps the
client actually took (``info.num_steps``, so epoch schedules with unequal client
sizes are handled), and ``x`` is the model the client RECEIVED (after a
downlink codec, when there is one). Local steps are plain SGD: option II's
control estimate ``(x - y_i) / (K_i eta_l)`` is the mean corrected gradient
only for that optimizer.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxqfl.algorithms.base import Algorithm, ClientOutput, ServerMessage
from jaxqfl.algorithms.hparams import check_number


class ScaffoldState(NamedTuple):
    """The server's state: its control variate ``c`` (a pytree like the params)."""

    control: Any


class ScaffoldLocal(NamedTuple):
    params: Any  # y_i
    correction: Any  # c - c_i, fixed during the round


class ScaffoldUpdate(NamedTuple):
    """What a client uploads: both deltas, averaged leaf by leaf by the aggregator."""

    delta_params: Any  # y_i - x
    delta_control: Any  # c_i^+ - c_i


def scaffold(local_lr: float, global_lr: float = 1.0) -> Algorithm:
    """SCAFFOLD with option II control variates.

    Args:
      local_lr: the clients' SGD step size eta_l (> 0).
      global_lr: the server step size eta_g (> 0); 1 makes x the mean of the y_i.
      Both may be Python numbers or traced scalars (sweeps).

    Returns:
      An :class:`~jaxqfl.algorithms.base.Algorithm`; server state :class:`ScaffoldState`
      (c, sent to clients in ``ServerMessage.extras``), client state c_i (a params-shaped
      pytree, zeros at start), update :class:`ScaffoldUpdate`, weight 1.
    """
    local_lr = check_number("SCAFFOLD", "local_lr", local_lr, low=0.0, low_inclusive=False, describe="a number > 0")
    global_lr = check_number("SCAFFOLD", "global_lr", global_lr, low=0.0, low_inclusive=False,
                             describe="a number > 0")
    zeros = lambda params: jax.tree.map(jnp.zeros_like, params)

    def init(params):
        return ScaffoldState(zeros(params))

    def broadcast(params, state):
        return ServerMessage(params, state.control)

    def client_init(message, client_control, info):
        del info
        correction = jax.tree.map(jnp.subtract, message.extras, client_control)
        return ScaffoldLocal(message.params, correction)

    def client_step(local, grads, message, info):
        del message, info
        params = jax.tree.map(lambda y, g, k: y - local_lr * (g + k), local.params, grads, local.correction)
        return ScaffoldLocal(params, local.correction)

    def client_final(local, message, client_control, info):
        x, c = message.params, message.extras
        scale = 1.0 / (jnp.maximum(info.num_steps, 1).astype(jnp.float32) * local_lr)
        new_control = jax.tree.map(lambda ci, cc, xx, y: ci - cc + (xx - y) * scale, client_control, c, x, local.params)
        update = ScaffoldUpdate(
            delta_params=jax.tree.map(jnp.subtract, local.params, x),
            delta_control=jax.tree.map(jnp.subtract, new_control, client_control),
        )
        return ClientOutput(update, jnp.float32(1.0), new_control, {})

    def server_update(params, state, mean_update, info):
        frac = info.cohort_size / info.num_clients
        params = jax.tree.map(lambda x, d: x + global_lr * d, params, mean_update.delta_params)
        control = jax.tree.map(lambda c, d: c + frac * d, state.control, mean_update.delta_control)
        return params, ScaffoldState(control), {}

    return Algorithm(
        init=init,
        client_state_init=zeros,
        broadcast=broadcast,
        client_init=client_init,
        client_step=client_step,
        client_final=client_final,
        server_update=server_update,
    )
