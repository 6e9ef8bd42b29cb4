"""FedNova: normalized averaging, so that unequal local work does not bias the fixed point.

Round t (Wang et al. 2020, "Tackling the Objective Inconsistency Problem in
Heterogeneous Federated Optimization", NeurIPS, Section 4 and Appendix):

    client i receives x, takes tau_i local SGD steps (step size eta, heavy-ball
    momentum rho >= 0), so that its delta is a weighted sum of its gradients,
        Delta_i = y_i - x = -eta sum_k a_{i,k} g_{i,k},
    with ||a_i||_1 = tau_i for plain SGD (rho = 0) and, for momentum rho,
        ||a_i||_1 = (tau_i - rho (1 - rho^tau_i) / (1 - rho)) / (1 - rho).
    It uploads the normalized delta  Delta_i / ||a_i||_1  and  ||a_i||_1.
    server, with weights p_i (n_i, or 1):
        tau_eff = sum_i p_i ||a_i||_1 / sum_i p_i
        Delta   = tau_eff * sum_i p_i (Delta_i / ||a_i||_1) / sum_i p_i
        x <- x + server_opt(-Delta)            (server SGD lr 1: x + Delta)

With tau_i = tau for every client this is FedAvg's ``x + mean Delta_i``; when
tau is a power of two the division and the multiplication are exact in floating
point, so FedNova then equals FedAvg bit for bit (otherwise to rounding).
Local momentum is supported (``momentum``: optax's heavy ball
``m <- rho m + g; y <- y - eta m``, whose coefficients give the norm above);
the momentum buffer restarts at zero every round. ``tau_i`` is the number of
local steps the client took (``info.num_steps``).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxqfl.algorithms.base import (
    Algorithm,
    ClientOutput,
    broadcast_params,
    check_weighting,
    client_weight,
    no_client_state,
)
from jaxqfl.algorithms.fedavg import apply_server_optimizer, local_sgd
from jaxqfl.algorithms.hparams import check_number, is_traced


class NormalizedUpdate(NamedTuple):
    """What a client uploads; the aggregator's weighted mean of each leaf is what the server needs."""

    normalized_delta: Any  # Delta_i / ||a_i||_1
    norm: jax.Array  # () ||a_i||_1


def local_step_norm(num_steps: jax.Array, momentum: float) -> jax.Array:
    """``||a_i||_1`` of ``num_steps`` local SGD steps with heavy-ball momentum ``momentum``."""
    tau = num_steps.astype(jnp.float32)
    if not is_traced(momentum) and momentum == 0.0:
        return tau
    rho = momentum
    return (tau - rho * (1.0 - rho**tau) / (1.0 - rho)) / (1.0 - rho)


def fednova(
    local_lr: float,
    momentum: float = 0.0,
    server_optimizer: optax.GradientTransformation | None = None,
    weighting: str = "examples",
) -> Algorithm:
    """FedNova with local (momentum) SGD.

    Args:
      local_lr: the clients' step size eta (> 0).
      momentum: local heavy-ball momentum rho in [0, 1); 0 is plain SGD. ``local_lr`` and
        ``momentum`` may be Python numbers or traced scalars (sweeps).
      server_optimizer: applied to ``-Delta``; ``None`` means ``optax.sgd(1.0)``.
      weighting: ``"examples"`` (p_i = n_i, the paper's) or ``"uniform"`` (p_i = 1).
    """
    check_weighting(weighting)
    local_lr = check_number("FedNova", "local_lr", local_lr, low=0.0, low_inclusive=False, describe="a number > 0")
    momentum = check_number("FedNova", "momentum", momentum, low=0.0, low_inclusive=True, high=1.0,
                            describe="a number in [0, 1)")
    server_optimizer = optax.sgd(1.0) if server_optimizer is None else server_optimizer
    plain = not is_traced(momentum) and momentum == 0.0  # then no momentum buffer at all
    client_optimizer = optax.sgd(local_lr, momentum=None if plain else momentum)
    client_init, client_step = local_sgd(client_optimizer)

    def client_final(local, message, client_state, info):
        norm = local_step_norm(jnp.maximum(info.num_steps, 1), 0.0 if plain else momentum)
        normalized = jax.tree.map(lambda y, x: (y - x) / norm, local.params, message.params)
        return ClientOutput(NormalizedUpdate(normalized, norm), client_weight(weighting, info), client_state, {})

    def server_update(params, opt_state, mean_update, info):
        del info
        tau_eff = mean_update.norm
        delta = jax.tree.map(lambda d: tau_eff * d, mean_update.normalized_delta)
        params, opt_state = apply_server_optimizer(server_optimizer, params, opt_state, delta)
        return params, opt_state, {"tau_eff": tau_eff}

    return Algorithm(
        init=server_optimizer.init,
        client_state_init=no_client_state,
        broadcast=broadcast_params,
        client_init=client_init,
        client_step=client_step,
        client_final=client_final,
        server_update=server_update,
    )
