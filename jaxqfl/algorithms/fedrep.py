"""FedRep and FedPer: a body shared by the federation, a head kept by each client.

The model's leaves matching a path pattern are the head (``jaxqfl.algorithms.head``);
client i keeps its head h_i in its persistent state (the initial model's head at
start) and never sends it. Round t, client i receives the body phi_t:

FedRep (Collins et al. 2021, "Exploiting Shared Representations for Personalized
Federated Learning", ICML, Algorithm 1): of its K local steps, the first
``head_steps`` update the head alone (body fixed at phi_t), the rest the body
alone (head fixed at the one just trained):

    h_i <- h_i - opt(grad_h F_i(phi_t, h_i))         (head_steps steps)
    phi_i <- phi_i - opt(grad_phi F_i(phi_i, h_i))    (K - head_steps steps, from phi_t)

FedPer (Arivazhagan et al. 2019, "Federated Learning with Personalization Layers",
arXiv:1912.00818): all K steps update body and head together, from (phi_t, h_i).

Both upload the body's delta  Delta_i = phi_i - phi_t  (the head's leaves are not
in the update, so uplink bits count the body only), keep the trained head, and
the server steps the body as FedAvg does,
``phi_{t+1} = phi_t + server_opt(-sum_i p_i Delta_i / sum_i p_i)``; the global
model's head stays the initial one (it is never trained on the server). A client
uses ``(phi, h_i)`` on its own data (``personalize``). A step's update is masked,
not its gradient, so a frozen part does not move under any optax optimizer (its
optimizer state still sees the zero update).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxqfl.algorithms.base import Algorithm, ClientOutput, broadcast_params, check_weighting, client_weight
from jaxqfl.algorithms.fedavg import apply_server_optimizer
from jaxqfl.algorithms.head import check_pattern, last_module, split_by_pattern


class HeadLocal(NamedTuple):
    params: Any  # (phi_i, h_i) as one model
    opt_state: Any
    step: jax.Array  # () int32 steps taken


def _head_algorithm(name, client_optimizer, head, head_steps, server_optimizer, weighting, *,
                    phases: bool) -> Algorithm:
    """FedRep (``phases``: head steps, then body steps) or FedPer (joint steps)."""
    check_weighting(weighting)
    if head is not None and (not isinstance(head, str) or not head):
        raise ValueError(f"{name} head must be a regular expression over parameter paths (or None: the model's "
                         f"last layer), got {head!r}")
    if head is not None:
        check_pattern(head)
    if head_steps is not None and (not isinstance(head_steps, int) or isinstance(head_steps, bool) or head_steps < 0):
        raise ValueError(f"{name} head_steps must be a non-negative integer or None, got {head_steps!r}")
    server_optimizer = optax.sgd(1.0) if server_optimizer is None else server_optimizer
    split = lambda params: split_by_pattern(params, last_module(params) if head is None else head)

    def init(params):
        return server_optimizer.init(split(params).body(params))

    def client_state_init(params):
        return split(params).head(params)

    def personalize(params, client_head):
        s = split(params)
        return s.merge(s.body(params), client_head)

    def client_init(message, client_head, info):
        del info
        params = personalize(message.params, client_head)
        return HeadLocal(params, client_optimizer.init(params), jnp.int32(0))

    def client_step(local, grads, message, info):
        del message
        updates, opt_state = client_optimizer.update(grads, local.opt_state, local.params)
        if phases:
            s = split(local.params)
            first = (info.num_steps + 1) // 2 if head_steps is None else head_steps
            on_head = local.step < first  # FedRep: the head's steps first, then the body's
            keep = lambda u, moving: jnp.where(moving, u, jnp.zeros_like(u))
            updates = s.merge([keep(u, ~on_head) for u in s.body(updates)],
                              [keep(u, on_head) for u in s.head(updates)])
        return HeadLocal(optax.apply_updates(local.params, updates), opt_state, local.step + 1)

    def client_final(local, message, client_head, info):
        s = split(local.params)
        delta = tuple(jax.tree.map(jnp.subtract, s.body(local.params), s.body(message.params)))
        return ClientOutput(delta, client_weight(weighting, info), s.head(local.params), {})

    def server_update(params, opt_state, mean_delta, info):
        del info
        s = split(params)
        body, opt_state = apply_server_optimizer(server_optimizer, s.body(params), opt_state, tuple(mean_delta))
        return s.merge(body, s.head(params)), opt_state, {}

    return Algorithm(init, client_state_init, broadcast_params, client_init, client_step, client_final,
                     server_update, personalize)


def fedrep(client_optimizer: optax.GradientTransformation, head: str | None = None, head_steps: int | None = None,
           server_optimizer: optax.GradientTransformation | None = None, weighting: str = "examples") -> Algorithm:
    """FedRep: ``head_steps`` local steps on the client's head, the rest on the shared body.

    Args:
      client_optimizer: the local optimizer (the paper uses SGD).
      head: regular expression over parameter paths naming the head (e.g. ``"^Dense_2/"``); None: the
        model's last layer (the last entry of its params dict, ``jaxqfl.algorithms.head.last_module``).
      head_steps: local steps spent on the head each round; None: the first half,
        ``ceil(K_i / 2)`` of the client's K_i steps.
      server_optimizer: applied to the body's ``-Delta``; None means ``optax.sgd(1.0)`` (the mean body).
      weighting: ``"examples"`` (p_i = n_i) or ``"uniform"`` (p_i = 1, the paper's).
    """
    return _head_algorithm("FedRep", client_optimizer, head, head_steps, server_optimizer, weighting, phases=True)


def fedper(client_optimizer: optax.GradientTransformation, head: str | None = None,
           server_optimizer: optax.GradientTransformation | None = None, weighting: str = "examples") -> Algorithm:
    """FedPer: every local step trains body and head together; the body is averaged, the head stays.

    Arguments as :func:`fedrep`'s (no ``head_steps``).
    """
    return _head_algorithm("FedPer", client_optimizer, head, None, server_optimizer, weighting, phases=False)
