"""MimeLite: clients apply the server optimizer with its statistics frozen.

Round t (Karimireddy et al. 2021, "Breaking the centralized barrier for
cross-device federated learning" (Mime), NeurIPS, Algorithm 1 without the SVRG
correction, i.e. MimeLite):

    a base optimizer with update U(g, s) and statistics update V(g, s)
    (momentum: s = m; Adam: s = (m, v, count)); the server holds x and s.
    client i receives (x, s), sets y_i = x and takes K local steps
        y_i <- y_i - U(g_i(y_i; batch), s)           (s frozen: never updated on clients)
    and uploads Delta_i = y_i - x and g_i(x), a gradient at the received model.
    server, with weights p_i (1, as in the paper, or n_i):
        s <- V(mean_i g_i(x), s)
        x <- x + mean_i Delta_i                      (= mean_i y_i)

The base optimizer is an optax transformation whose learning rate is the
clients' step size: ``U(g, s)`` is ``-update(g, s, y)[0]`` (the new state it also
returns is dropped), ``V(g, s)`` is ``update(g, s, x)[1]``. For
``optax.sgd(lr, momentum=beta)`` a client step is ``y <- y - lr (g + beta m)``
with the server's ``m`` fixed; for ``optax.adam`` the client uses the server's
first and second moments, folded with its own gradient as one Adam step would.

The gradient at the received model, g_i(x): the gradient of the FIRST local step,
which the engine evaluates at ``y_i = x`` on that step's batch. With full-batch
local steps (``batch_size=None``) it is the full local gradient the paper uses;
with minibatches it is an unbiased one-batch estimate of it, at no extra cost
(no additional forward/backward pass). It rides in the upload, so the upload
is twice the model's size, as in the paper.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxqfl.algorithms.base import (
    Algorithm,
    ClientOutput,
    ServerMessage,
    check_weighting,
    client_weight,
    no_client_state,
)


class MimeLiteLocal(NamedTuple):
    params: Any  # y_i
    grad_at_received: Any  # g_i(x): the first local step's gradient
    step: jax.Array  # () int32, local steps taken so far


class MimeLiteUpdate(NamedTuple):
    delta: Any  # y_i - x
    grad_at_received: Any  # g_i(x)


def mimelite(optimizer: optax.GradientTransformation, weighting: str = "uniform") -> Algorithm:
    """MimeLite with base optimizer ``optimizer`` (its learning rate is the clients' step size).

    Args:
      optimizer: the base optimizer, e.g. ``optax.sgd(0.05, momentum=0.9)`` or ``optax.adam(1e-3)``.
      weighting: ``"uniform"`` (p_i = 1, the paper's) or ``"examples"`` (p_i = n_i); both the
        deltas and the gradients are averaged with it.

    Returns:
      An :class:`~jaxqfl.algorithms.base.Algorithm`; server state: the optimizer's state s,
      broadcast in ``ServerMessage.extras``; no per-client state; update :class:`MimeLiteUpdate`.
    """
    check_weighting(weighting)
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"MimeLite needs an optax.GradientTransformation, got {type(optimizer).__name__}")

    def broadcast(params, opt_state):
        return ServerMessage(params, opt_state)

    def client_init(message, client_state, info):
        del client_state, info
        zeros = jax.tree.map(jnp.zeros_like, message.params)
        return MimeLiteLocal(message.params, zeros, jnp.int32(0))

    def client_step(local, grads, message, info):
        del info
        updates, _ = optimizer.update(grads, message.extras, local.params)  # statistics frozen
        first = local.step == 0
        grad0 = jax.tree.map(lambda g, g0: jnp.where(first, g, g0), grads, local.grad_at_received)
        return MimeLiteLocal(optax.apply_updates(local.params, updates), grad0, local.step + 1)

    def client_final(local, message, client_state, info):
        delta = jax.tree.map(jnp.subtract, local.params, message.params)
        return ClientOutput(MimeLiteUpdate(delta, local.grad_at_received), client_weight(weighting, info),
                            client_state, {})

    def server_update(params, opt_state, mean_update, info):
        del info
        _, opt_state = optimizer.update(mean_update.grad_at_received, opt_state, params)
        params = jax.tree.map(jnp.add, params, mean_update.delta)
        return params, opt_state, {}

    return Algorithm(
        init=optimizer.init,
        client_state_init=no_client_state,
        broadcast=broadcast,
        client_init=client_init,
        client_step=client_step,
        client_final=client_final,
        server_update=server_update,
    )
