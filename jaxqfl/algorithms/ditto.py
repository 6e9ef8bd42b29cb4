"""Ditto: a global model trained as FedAvg trains it, and a personal model per client pulled toward it.

Round t (Li, Hu, Beirami, Smith 2021, "Ditto: Fair and Robust Federated Learning
Through Personalization", ICML, Algorithm 1): client k receives w_t and

    global part:    w_k <- w_k - opt(grad F_k(w_k))                          from w_k = w_t
    personal part:  v_k <- argmin_u ||u - (v_k - eta grad F_k(v_k))||^2 / (2 eta) + lambda/2 ||u - w_t||^2
                         = (v_k - eta grad F_k(v_k) + eta lambda w_t) / (1 + eta lambda)

then uploads Delta_k = w_k - w_t (the server steps as FedAvg does) and keeps v_k
(its persistent state; the initial global model at start). Here the client's K
local steps alternate, each on its own batch: steps 0, 2, 4, ... train w_k and
steps 1, 3, ... train v_k (ceil(K/2) and floor(K/2) steps).

The paper writes the personal step explicitly, ``v - eta (grad F + lambda (v - w_t))``;
we take the proximal term implicitly (the closed form above), which agrees with
it to first order in ``eta lambda`` and is stable for every lambda: lambda = 0 is
plain local SGD on the client's own data (no pull), and lambda -> infinity gives
v_k = w_t, the global model (Ditto reduces to FedAvg). A client uses v_k on its
own data (``personalize``).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxqfl.algorithms.base import Algorithm, check_weighting, tree_select
from jaxqfl.algorithms.fedavg import delta_algorithm
from jaxqfl.algorithms.hparams import check_number


class DittoLocal(NamedTuple):
    params: Any  # where the next gradient is taken: w_k on even steps, v_k on odd ones
    other: Any  # the other model
    opt_state: Any  # the global part's optimizer state
    step: jax.Array  # () int32 steps taken


def personal_step(v, grads, anchor, lr, lam):
    """``(v - lr g + lr lam w_t) / (1 + lr lam)``: an SGD step on F_k, the pull toward ``w_t`` taken implicitly."""
    return jax.tree.map(lambda p, g, a: (p - lr * g + (lr * lam) * a) / (1.0 + lr * lam), v, grads, anchor)


def ditto(client_optimizer: optax.GradientTransformation, personal_lr: float, lam: float = 0.1,
          server_optimizer: optax.GradientTransformation | None = None, weighting: str = "examples") -> Algorithm:
    """Ditto with pull ``lam`` (lambda) toward the global model.

    Args:
      client_optimizer: the global part's local optimizer (FedAvg's).
      personal_lr: the personal model's SGD step eta (> 0).
      lam: lambda >= 0 (finite); the paper tunes it in {0.05, 0.1, 0.2, 0.5, 1, 2}.
        Python numbers or traced scalars (sweeps).
      server_optimizer: applied to ``-Delta``; None means ``optax.sgd(1.0)``.
      weighting: ``"examples"`` (p_i = n_i) or ``"uniform"`` (p_i = 1).

    Returns:
      An :class:`~jaxqfl.algorithms.base.Algorithm` whose client state is the personal model v_k.
    """
    check_weighting(weighting)
    personal_lr = check_number("Ditto", "personal_lr", personal_lr, low=0.0, low_inclusive=False,
                               describe="a number > 0")
    lam = check_number("Ditto", "lambda", lam, low=0.0, low_inclusive=True, high=float("inf"),
                       describe="a finite number >= 0")
    server_optimizer = optax.sgd(1.0) if server_optimizer is None else server_optimizer

    def client_init(message, personal, info):
        del info
        return DittoLocal(message.params, personal, client_optimizer.init(message.params), jnp.int32(0))

    def client_step(local, grads, message, info):
        del info
        on_global = local.step % 2 == 0
        updates, opt_state = client_optimizer.update(grads, local.opt_state, local.params)
        stepped = tree_select(on_global, optax.apply_updates(local.params, updates),
                             personal_step(local.params, grads, message.params, personal_lr, lam))
        opt_state = tree_select(on_global, opt_state, local.opt_state)
        return DittoLocal(local.other, stepped, opt_state, local.step + 1)  # the other model steps next

    fedavg_shape = delta_algorithm(client_init, client_step, server_optimizer, weighting)

    def client_final(local, message, personal, info):
        even = local.step % 2 == 0  # an even count ends with w_k back in params
        w = tree_select(even, local.params, local.other)
        v = tree_select(even, local.other, local.params)
        return fedavg_shape.client_final(local._replace(params=w), message, v, info)  # Delta_k = w_k - w_t; keep v_k

    return fedavg_shape._replace(client_state_init=lambda params: params, client_final=client_final,
                                 personalize=lambda params, personal: personal)
