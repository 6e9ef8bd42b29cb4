"""The adaptive server optimizers of Reddi et al. 2021, Algorithm 2, as optax transformations.

Reddi, Charles, Zaheer, Garrett, Rush, Konecny, Kumar, McMahan. "Adaptive
Federated Optimization." ICLR 2021, Algorithm 2 (FedAdagrad, FedYogi, FedAdam).
With the round's mean client delta ``Delta_t`` (``x_{t+1} = x_t + Delta_t`` is
plain FedAvg) the server keeps ``m`` and ``v`` per coordinate and applies

    m_t = b1 m_{t-1} + (1 - b1) Delta_t                          (all three)
    v_t = v_{t-1} + Delta_t^2                                    (FedAdagrad)
    v_t = v_{t-1} - (1 - b2) Delta_t^2 sign(v_{t-1} - Delta_t^2)  (FedYogi)
    v_t = b2 v_{t-1} + (1 - b2) Delta_t^2                        (FedAdam)
    x_{t+1} = x_t + eta m_t / (sqrt(v_t) + tau)

with no bias correction. ``tau`` (the adaptivity constant) enters twice: in the
denominator, outside the square root, and as the initial second moment.

Exactly what is implemented, where the paper leaves a choice:
  * initialisation: Algorithm 2 states ``v_{-1} >= tau^2``; here ``v_{-1} = tau^2``
    (its smallest allowed value). ``m_{-1}`` is not stated; here ``m_{-1} = 0``.
  * FedAdagrad keeps the momentum line ``m_t`` of Algorithm 2 as written (its
    analysis takes ``b1 = 0``; pass ``b1=0`` for that variant).
  * defaults ``b1 = 0.9``, ``b2 = 0.99``, ``tau = 1e-3`` (the paper's experiments).

The transformations follow optax's convention: they receive the pseudo-gradient
``g_t = -Delta_t`` (what ``jaxqfl.algorithms.fedavg`` hands its server optimizer)
and return the update ``-eta m(g)_t / (sqrt(v_t) + tau)``, which with
``m(g)_t = -m_t`` is the paper's ``+eta m_t / (sqrt(v_t) + tau)``; ``v`` only
sees ``g^2 = Delta^2``. They differ from ``optax.adam`` / ``optax.yogi`` (bias
correction by the step count) and ``optax.adagrad`` (no momentum, ``eps``
inside the square root): those stay available as ``optax-adam`` etc. in
``jaxqfl.algorithms.fedavg.server_optimizer``.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxqfl.algorithms.hparams import check_number

ADAPTIVE_KINDS = ("adagrad", "yogi", "adam")


class FedOptState(NamedTuple):
    m: Any  # first moment of the pseudo-gradient, m_{t-1} (of -Delta)
    v: Any  # second moment v_{t-1}


def _second_moment(kind: str, v, g2, b2):
    if kind == "adagrad":
        return v + g2
    if kind == "yogi":
        return v - (1.0 - b2) * g2 * jnp.sign(v - g2)
    return b2 * v + (1.0 - b2) * g2


def fedopt_adaptive(kind: str, learning_rate=1e-2, *, b1: float = 0.9, b2: float = 0.99,
                    tau: float = 1e-3) -> optax.GradientTransformation:
    """Reddi et al. 2021 Algorithm 2's server step for ``kind`` in ``("adagrad", "yogi", "adam")``.

    Args:
      kind: which second-moment update (module docstring).
      learning_rate: the server step ``eta`` > 0 (a traced value passes unchecked, as in a sweep).
      b1: momentum ``beta_1`` in [0, 1).
      b2: second-moment decay ``beta_2`` in [0, 1) (unused by FedAdagrad).
      tau: adaptivity ``tau`` > 0; also ``v_{-1} = tau^2``.
    """
    if kind not in ADAPTIVE_KINDS:
        raise ValueError(f"unknown adaptive server optimizer {kind!r}; choose one of {ADAPTIVE_KINDS}")
    owner = f"Fed{kind.capitalize()}"
    learning_rate = check_number(owner, "learning_rate", learning_rate, low=0.0, low_inclusive=False,
                                 describe="> 0")
    b1 = check_number(owner, "b1", b1, low=0.0, low_inclusive=True, high=1.0, describe="in [0, 1)")
    b2 = check_number(owner, "b2", b2, low=0.0, low_inclusive=True, high=1.0, describe="in [0, 1)")
    tau = check_number(owner, "tau", tau, low=0.0, low_inclusive=False, describe="> 0")

    def init(params):
        zeros = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=jnp.result_type(p, jnp.float32)), params)
        return FedOptState(m=zeros, v=jax.tree.map(lambda z: jnp.full_like(z, tau * tau), zeros))

    def update(grads, state, params=None):
        del params
        m = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, state.m, grads)
        v = jax.tree.map(lambda v, g: _second_moment(kind, v, g * g, b2), state.v, grads)
        updates = jax.tree.map(lambda m, v, g: (-learning_rate * m / (jnp.sqrt(v) + tau)).astype(g.dtype),
                               m, v, grads)
        return updates, FedOptState(m, v)

    return optax.GradientTransformation(init, update)


def fedadam(learning_rate=1e-2, *, b1: float = 0.9, b2: float = 0.99, tau: float = 1e-3):
    """FedAdam's server step (Reddi et al. 2021, Algorithm 2; no bias correction)."""
    return fedopt_adaptive("adam", learning_rate, b1=b1, b2=b2, tau=tau)


def fedyogi(learning_rate=1e-2, *, b1: float = 0.9, b2: float = 0.99, tau: float = 1e-3):
    """FedYogi's server step (Reddi et al. 2021, Algorithm 2; no bias correction)."""
    return fedopt_adaptive("yogi", learning_rate, b1=b1, b2=b2, tau=tau)


def fedadagrad(learning_rate=1e-2, *, b1: float = 0.9, tau: float = 1e-3):
    """FedAdagrad's server step (Reddi et al. 2021, Algorithm 2, with its momentum line)."""
    return fedopt_adaptive("adagrad", learning_rate, b1=b1, tau=tau)
