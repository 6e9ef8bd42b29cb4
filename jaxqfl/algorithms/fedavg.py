"""The FedAvg family as one algorithm with two optax optimizers.

Round t (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks
from Decentralized Data"; Reddi et al. 2021, "Adaptive Federated Optimization"):

    each sampled client i starts from the model it received, w_t, and runs local SGD
        w_i <- w_i - client_opt(grad F_i(w_i))          (K steps or E epochs)
    and reports the delta  Delta_i = w_i - w_t  (relative to the model it RECEIVED,
    which differs from the server's w_t when a downlink codec compresses it).
    The aggregator averages  Delta = sum_i p_i Delta_i / sum_i p_i
    (p_i = number of examples of client i, or 1 for uniform weighting)
    and the server treats -Delta as a pseudo-gradient for its own optimizer:
        w_{t+1} = w_t + server_opt(-Delta).

Server SGD with learning rate 1 is plain FedAvg; server momentum is FedAvgM (Hsu
et al. 2019); server adam / yogi / adagrad are FedAdam / FedYogi / FedAdagrad
(Reddi et al. 2021, Algorithm 2: ``jaxqfl.algorithms.fedopt``; optax's own Adam /
Yogi / Adagrad, which are not the paper's, are ``optax-adam`` etc.).
FedSGD is the case of one full-batch local step (see ``fedsgd``).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxqfl.choices import SERVER_OPTIMIZERS
from jaxqfl.algorithms.fedopt import ADAPTIVE_KINDS, fedopt_adaptive
from jaxqfl.algorithms.base import (
    Algorithm,
    ClientOutput,
    broadcast_params,
    check_weighting,
    client_weight,
    no_client_state,
)


class ClientLocalState(NamedTuple):
    params: Any
    opt_state: Any


def local_sgd(client_optimizer: optax.GradientTransformation):
    """``(client_init, client_step)`` of plain local training with an optax optimizer."""

    def client_init(message, client_state, info):
        del client_state, info
        return ClientLocalState(message.params, client_optimizer.init(message.params))

    def client_step(local, grads, message, info):
        del message, info
        updates, opt_state = client_optimizer.update(grads, local.opt_state, local.params)
        return ClientLocalState(optax.apply_updates(local.params, updates), opt_state)

    return client_init, client_step


def apply_server_optimizer(server_optimizer: optax.GradientTransformation, params, opt_state, mean_delta):
    """``w + server_opt(-Delta)``: the server step on the pseudo-gradient ``-Delta``."""
    pseudo_grad = jax.tree.map(jnp.negative, mean_delta)
    updates, opt_state = server_optimizer.update(pseudo_grad, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def fedavg(
    client_optimizer: optax.GradientTransformation,
    server_optimizer: optax.GradientTransformation | None = None,
    weighting: str = "examples",
) -> Algorithm:
    """FedAvg with an optax client optimizer and an optax server optimizer on the mean delta.

    Args:
      client_optimizer: the clients' local optimizer (e.g. ``optax.sgd(0.05)``).
      server_optimizer: applied to ``-Delta``; ``None`` means ``optax.sgd(1.0)``: the
        new global model is the weighted mean of the clients' models.
      weighting: ``"examples"`` (p_i = n_i) or ``"uniform"`` (p_i = 1).
    """
    check_weighting(weighting)
    server_optimizer = optax.sgd(1.0) if server_optimizer is None else server_optimizer
    return delta_algorithm(*local_sgd(client_optimizer), server_optimizer, weighting)


def delta_algorithm(client_init, client_step, server_optimizer, weighting: str) -> Algorithm:
    """FedAvg's shape around a given local step: clients upload ``Delta_i = w_i - received``
    with weight ``p_i``; the server applies ``w + server_opt(-sum p_i Delta_i / sum p_i)``.

    Shared by the algorithms that change only the local step (FedAvg, FedProx; Ditto and Per-FedAvg
    around their alternating steps).
    """

    def client_final(local, message, client_state, info):
        delta = jax.tree.map(jnp.subtract, local.params, message.params)
        return ClientOutput(delta, client_weight(weighting, info), client_state, {})

    def server_update(params, opt_state, mean_delta, info):
        del info
        params, opt_state = apply_server_optimizer(server_optimizer, params, opt_state, mean_delta)
        return params, opt_state, {}

    return Algorithm(
        init=server_optimizer.init,
        client_state_init=no_client_state,
        broadcast=broadcast_params,
        client_init=client_init,
        client_step=client_step,
        client_final=client_final,
        server_update=server_update,
    )


def fedsgd(client_lr: float, server_optimizer=None, weighting: str = "examples") -> Algorithm:
    """FedSGD: FedAvg whose clients take one full-batch gradient step of size ``client_lr``.

    Run it with ``LocalSchedule(local_steps=1, batch_size=None)`` (full batch); with
    server SGD lr 1 the round equals one step of centralized full-batch gradient
    descent on the weighted union of the cohort's data.
    """
    return fedavg(optax.sgd(client_lr), server_optimizer, weighting)




def server_optimizer(name: str, learning_rate: float = 1.0, *, momentum: float = 0.9, tau: float = 1e-3):
    """The server optimizers of FedAvg / FedAvgM / FedAdam / FedYogi / FedAdagrad, by name.

    ``sgd`` and ``momentum`` are ``optax.sgd`` (FedAvg, and FedAvgM with ``momentum``).
    ``adam`` / ``yogi`` / ``adagrad`` are Reddi et al. 2021's Algorithm 2 (FedAdam /
    FedYogi / FedAdagrad, ``jaxqfl.algorithms.fedopt``): ``b1 = 0.9``, ``b2 = 0.99``,
    ``v_{-1} = tau^2``, ``x <- x + eta m_t / (sqrt(v_t) + tau)``, no bias correction.
    ``optax-adam`` / ``optax-yogi`` / ``optax-adagrad`` are optax's own optimizers on the
    pseudo-gradient: ``optax.adam`` and ``optax.yogi`` (``b1 = 0.9``, ``b2 = 0.99``,
    ``eps = tau``, with bias correction) and ``optax.adagrad`` (accumulator from
    ``tau^2``, ``eps = tau`` inside the square root, no momentum): not the paper's.
    """
    if isinstance(learning_rate, (int, float)) and not learning_rate > 0:  # (a sweep passes traced values)
        raise ValueError(f"server learning rate must be > 0, got {learning_rate}")
    if name == "sgd":
        return optax.sgd(learning_rate)
    if name == "momentum":
        return optax.sgd(learning_rate, momentum=momentum)
    if name in ADAPTIVE_KINDS:
        return fedopt_adaptive(name, learning_rate, b1=0.9, b2=0.99, tau=tau)
    if name == "optax-adam":
        return optax.adam(learning_rate, b1=0.9, b2=0.99, eps=tau)
    if name == "optax-yogi":
        return optax.yogi(learning_rate, b1=0.9, b2=0.99, eps=tau)
    if name == "optax-adagrad":
        return optax.adagrad(learning_rate, initial_accumulator_value=tau**2, eps=tau)
    raise ValueError(f"unknown server optimizer {name!r}; choose one of {SERVER_OPTIMIZERS}")
