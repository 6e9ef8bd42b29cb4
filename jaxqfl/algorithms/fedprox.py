"""FedProx: FedAvg whose clients add a proximal term to their local objective.

Round t (Li et al. 2020, "Federated Optimization in Heterogeneous Networks", MLSys):

    client i receives w_t and approximately minimises
        h_i(w) = F_i(w) + mu/2 ||w - w_t||^2
    with its local optimizer: every local step uses the gradient
        grad F_i(w; batch) + mu (w - w_t)
    and reports Delta_i = w_i - w_t; the server steps as FedAvg does,
        w_{t+1} = w_t + server_opt(-sum_i p_i Delta_i / sum_i p_i).

``w_t`` is the model the client RECEIVED (after a downlink codec, when there is
one): the proximal anchor and the delta share one reference point. With
``mu = 0`` the local gradient is ``g + 0 * (w - w_t) = g`` exactly, so FedProx
then equals FedAvg bit for bit.
"""
from __future__ import annotations

import jax
import optax

from jaxqfl.algorithms.base import Algorithm, check_weighting
from jaxqfl.algorithms.fedavg import ClientLocalState, delta_algorithm
from jaxqfl.algorithms.hparams import check_number


def proximal_gradient(grads, params, anchor, mu: float):
    """``g + mu (w - w_t)``: the gradient of ``F_i(w) + mu/2 ||w - w_t||^2``."""
    return jax.tree.map(lambda g, w, a: g + mu * (w - a), grads, params, anchor)


def fedprox(
    client_optimizer: optax.GradientTransformation,
    mu: float = 0.01,
    server_optimizer: optax.GradientTransformation | None = None,
    weighting: str = "examples",
) -> Algorithm:
    """FedProx with proximal coefficient ``mu``.

    Args:
      client_optimizer: the clients' local optimizer, applied to the proximal gradient.
      mu: proximal coefficient, ``>= 0`` (Li et al. try 0.001 to 1; 0 is FedAvg); a Python
        number or a traced scalar (sweeps).
      server_optimizer: applied to ``-Delta``; ``None`` means ``optax.sgd(1.0)``.
      weighting: ``"examples"`` (p_i = n_i) or ``"uniform"`` (p_i = 1).

    Returns:
      An :class:`~jaxqfl.algorithms.base.Algorithm` whose server state is the server
      optimizer's state; no per-client state.
    """
    check_weighting(weighting)
    mu = check_number("FedProx", "mu", mu, low=0.0, low_inclusive=True, describe="a number >= 0")
    server_optimizer = optax.sgd(1.0) if server_optimizer is None else server_optimizer

    def client_init(message, client_state, info):
        del client_state, info
        return ClientLocalState(message.params, client_optimizer.init(message.params))

    def client_step(local, grads, message, info):
        del info
        grads = proximal_gradient(grads, local.params, message.params, mu)
        updates, opt_state = client_optimizer.update(grads, local.opt_state, local.params)
        return ClientLocalState(optax.apply_updates(local.params, updates), opt_state)

    return delta_algorithm(client_init, client_step, server_optimizer, weighting)
