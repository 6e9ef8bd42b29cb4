"""Per-FedAvg (first-order): FedAvg whose local steps are MAML steps, for a model one step from personal.

Round t (Fallah, Mokhtari, Ozdaglar 2020, "Personalized Federated Learning with
Theoretical Guarantees: A Model-Agnostic Meta-Learning Approach", NeurIPS,
Algorithm 1 with the first-order (FO) gradient estimate): client i starts from
w_t and repeats, each on fresh batches D and D',

    w_tmp = w - alpha grad F_i(w; D)          (inner step: the personalisation step)
    w     = w - beta grad F_i(w_tmp; D')      (outer step, at the adapted point)

then uploads Delta_i = w - w_t; the server steps as FedAvg does (``server_opt``
SGD 1: the mean of the clients' models). Here the K local steps alternate: even
steps are inner steps, odd steps outer ones (floor(K/2) meta-steps; an odd K's
last inner step is discarded). Per-FedAvg's personal model of client i is one
inner step from the global model on the client's data: evaluate it with the
per-client fine-tuning of ``jaxqfl.engine.client_evaluation`` (``--personal-eval 1``
at learning rate alpha).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxqfl.algorithms.base import Algorithm, check_weighting, tree_select
from jaxqfl.algorithms.fedavg import delta_algorithm
from jaxqfl.algorithms.hparams import check_number


class MetaLocal(NamedTuple):
    params: Any  # where the next gradient is taken: w on even steps, w_tmp on odd ones
    anchor: Any  # w, while params holds w_tmp
    step: jax.Array  # () int32 steps taken

    @property
    def model(self):
        """The meta-model w (what the client uploads), whichever step comes next."""
        return tree_select(self.step % 2 == 0, self.params, self.anchor)


def perfedavg(alpha: float, beta: float, server_optimizer: optax.GradientTransformation | None = None,
              weighting: str = "examples") -> Algorithm:
    """Per-FedAvg (FO) with inner step ``alpha`` and outer step ``beta`` (both > 0; the paper's alpha > beta)."""
    check_weighting(weighting)
    alpha = check_number("Per-FedAvg", "alpha", alpha, low=0.0, low_inclusive=False, describe="a number > 0")
    beta = check_number("Per-FedAvg", "beta", beta, low=0.0, low_inclusive=False, describe="a number > 0")
    server_optimizer = optax.sgd(1.0) if server_optimizer is None else server_optimizer

    def client_init(message, client_state, info):
        del client_state, info
        return MetaLocal(message.params, message.params, jnp.int32(0))

    def client_step(local, grads, message, info):
        del message, info
        inner = local.step % 2 == 0
        w_tmp = jax.tree.map(lambda w, g: w - alpha * g, local.params, grads)
        w_new = jax.tree.map(lambda w, g: w - beta * g, local.anchor, grads)
        return MetaLocal(tree_select(inner, w_tmp, w_new), tree_select(inner, local.params, local.anchor),
                         local.step + 1)

    algorithm = delta_algorithm(client_init, client_step, server_optimizer, weighting)

    def client_final(local, message, client_state, info):
        return algorithm.client_final(local._replace(params=local.model), message, client_state, info)

    return algorithm._replace(client_final=client_final)
