"""FedDyn: federated learning with a dynamic regularizer.

Round t (Acar et al. 2021, "Federated Learning Based on Dynamic Regularization",
ICLR, Algorithm 1):

    server holds theta and h (0 at start); client k holds g_k = grad L_k(theta_k), 0 at start.
    client k receives theta and approximately minimises
        L_k(w) - <g_k, w> + alpha/2 ||w - theta||^2
    by local steps on the gradient  grad L_k(w; batch) - g_k + alpha (w - theta);
    with theta_k its result it updates and keeps
        g_k <- g_k - alpha (theta_k - theta)
    and uploads Delta_k = theta_k - theta.
    server, over the cohort P of a population of m clients:
        h     <- h - alpha (|P| / m) mean_{k in P} Delta_k
        theta <- mean_{k in P} theta_k - h / alpha  =  theta + mean_{k in P} Delta_k - h / alpha

The mean is uniform over the cohort (p_k = 1), as in the paper: with it
``h = (1/m) sum_k g_k`` holds after every round (both start at 0 and move by the
same amounts), which makes the minimiser of the AVERAGE objective
``(1/m) sum_k L_k`` the fixed point. ``theta`` on the client side is the model
the client RECEIVED (after a downlink codec, when there is one). The local
optimizer is any optax transformation of the regularized gradient (the paper
uses SGD).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxqfl.algorithms.base import Algorithm, ClientOutput, broadcast_params
from jaxqfl.algorithms.hparams import check_number


class FedDynLocal(NamedTuple):
    params: Any
    opt_state: Any
    client_grad: Any  # g_k, fixed during the round


class FedDynState(NamedTuple):
    """The server's state: ``h`` (a pytree like the params)."""

    h: Any


def feddyn(client_optimizer: optax.GradientTransformation, alpha: float = 0.01) -> Algorithm:
    """FedDyn with regularization strength ``alpha``.

    Args:
      client_optimizer: the clients' local optimizer, applied to the regularized gradient.
      alpha: the dynamic regularizer's coefficient (> 0; the paper uses 0.01 to 0.1); a Python
        number or a traced scalar (sweeps).

    Returns:
      An :class:`~jaxqfl.algorithms.base.Algorithm`; server state :class:`FedDynState`,
      client state g_k (params-shaped, zeros at start), update Delta_k, weight 1.
    """
    alpha = check_number("FedDyn", "alpha", alpha, low=0.0, low_inclusive=False, describe="a number > 0")
    zeros = lambda params: jax.tree.map(jnp.zeros_like, params)

    def client_init(message, client_grad, info):
        del info
        return FedDynLocal(message.params, client_optimizer.init(message.params), client_grad)

    def client_step(local, grads, message, info):
        del info
        grads = jax.tree.map(lambda g, gk, w, t: g - gk + alpha * (w - t), grads, local.client_grad,
                             local.params, message.params)
        updates, opt_state = client_optimizer.update(grads, local.opt_state, local.params)
        return FedDynLocal(optax.apply_updates(local.params, updates), opt_state, local.client_grad)

    def client_final(local, message, client_grad, info):
        del info
        delta = jax.tree.map(jnp.subtract, local.params, message.params)
        new_grad = jax.tree.map(lambda gk, d: gk - alpha * d, client_grad, delta)
        return ClientOutput(delta, jnp.float32(1.0), new_grad, {})

    def server_update(params, state, mean_delta, info):
        frac = info.cohort_size / info.num_clients
        h = jax.tree.map(lambda h, d: h - alpha * frac * d, state.h, mean_delta)
        params = jax.tree.map(lambda w, d, hh: w + d - hh / alpha, params, mean_delta, h)
        return params, FedDynState(h), {}

    return Algorithm(
        init=lambda params: FedDynState(zeros(params)),
        client_state_init=zeros,
        broadcast=broadcast_params,
        client_init=client_init,
        client_step=client_step,
        client_final=client_final,
        server_update=server_update,
    )
