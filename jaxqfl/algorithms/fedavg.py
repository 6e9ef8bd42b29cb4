"""The FedAvg family as one algorithm with two optax optimizers.

Round t (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks
from Decentralized Data"; Reddi et al. 2021, "Adaptive Federated Optimization"):

    each sampled client i starts from the global model w_t and runs local SGD
        w_i <- w_i - client_opt(grad F_i(w_i))          (K steps or E epochs)
    and reports the delta  Delta_i = w_i - w_t.
    The server averages  Delta = sum_i p_i Delta_i / sum_i p_i
    (p_i = number of examples of client i, or 1 for uniform weighting)
    and treats -Delta as a pseudo-gradient for its own optimizer:
        w_{t+1} = w_t + server_opt(-Delta).

Server SGD with learning rate 1 is plain FedAvg; server momentum is FedAvgM (Hsu
et al. 2019); server adam / yogi / adagrad are FedAdam / FedYogi / FedAdagrad.
FedSGD is the case of one full-batch local step (see ``fedsgd``).

The client side is a triple of pure functions the engine scans over local steps
(``client_init``, ``client_step``, ``client_final``); the server side is
``server_init`` / ``server_update``. None of them knows about devices.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

WEIGHTINGS = ("examples", "uniform")


class ClientLocalState(NamedTuple):
    params: Any
    opt_state: Any


class Algorithm(NamedTuple):
    """An FL algorithm as pure functions (see module docstring).

    client_init(global_params) -> local_state
    client_step(local_state, grads) -> local_state
    client_final(local_state, global_params) -> delta
    server_init(params) -> server_opt_state
    server_update(params, server_opt_state, mean_delta) -> (params, server_opt_state)
    weighting: "examples" (p_i = n_i) or "uniform" (p_i = 1)
    """

    client_init: Callable
    client_step: Callable
    client_final: Callable
    server_init: Callable
    server_update: Callable
    weighting: str


def fedavg(
    client_optimizer: optax.GradientTransformation,
    server_optimizer: optax.GradientTransformation | None = None,
    weighting: str = "examples",
) -> Algorithm:
    """FedAvg with an optax client optimizer and an optax server optimizer on the mean delta.

    ``server_optimizer=None`` means ``optax.sgd(1.0)``: the new global model is
    the weighted mean of the clients' models.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    server_optimizer = optax.sgd(1.0) if server_optimizer is None else server_optimizer

    def client_init(global_params):
        return ClientLocalState(global_params, client_optimizer.init(global_params))

    def client_step(local, grads):
        updates, opt_state = client_optimizer.update(grads, local.opt_state, local.params)
        return ClientLocalState(optax.apply_updates(local.params, updates), opt_state)

    def client_final(local, global_params):
        return jax.tree.map(jnp.subtract, local.params, global_params)

    def server_init(params):
        return server_optimizer.init(params)

    def server_update(params, opt_state, mean_delta):
        pseudo_grad = jax.tree.map(jnp.negative, mean_delta)
        updates, opt_state = server_optimizer.update(pseudo_grad, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return Algorithm(client_init, client_step, client_final, server_init, server_update, weighting)


def fedsgd(client_lr: float, server_optimizer=None, weighting: str = "examples") -> Algorithm:
    """FedSGD: FedAvg whose clients take one full-batch gradient step of size ``client_lr``.

    Run it with ``LocalSchedule(local_steps=1, batch_size=None)`` (full batch); with
    server SGD lr 1 the round equals one step of centralized full-batch gradient
    descent on the weighted union of the cohort's data.
    """
    return fedavg(optax.sgd(client_lr), server_optimizer, weighting)


SERVER_OPTIMIZERS = ("sgd", "momentum", "adam", "yogi", "adagrad")


def server_optimizer(name: str, learning_rate: float = 1.0, *, momentum: float = 0.9, tau: float = 1e-3):
    """The server optimizers of FedAvg / FedAvgM / FedAdam / FedYogi / FedAdagrad.

    ``tau`` is the adaptivity constant of Reddi et al. 2021 (their recommended 1e-3),
    passed as the optimizers' epsilon.
    """
    if not learning_rate > 0:
        raise ValueError(f"server learning rate must be > 0, got {learning_rate}")
    if name == "sgd":
        return optax.sgd(learning_rate)
    if name == "momentum":
        return optax.sgd(learning_rate, momentum=momentum)
    if name == "adam":
        return optax.adam(learning_rate, b1=0.9, b2=0.99, eps=tau)
    if name == "yogi":
        return optax.yogi(learning_rate, b1=0.9, b2=0.99, eps=tau)
    if name == "adagrad":
        return optax.adagrad(learning_rate, initial_accumulator_value=tau**2, eps=tau)
    raise ValueError(f"unknown server optimizer {name!r}; choose one of {SERVER_OPTIMIZERS}")
