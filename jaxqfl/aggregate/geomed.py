"""Geometric median by the smoothed Weiszfeld algorithm (RFA, Pillutla et al. 2022), gather path.

    v* = argmin_v sum_i a_i max(nu, ||v - x_i||)          (a_i: the clients' weights, valid rows only)

Smoothed Weiszfeld iterates, from the coordinate-wise median ``v_0`` of the valid
rows, a fixed number ``T`` of times:

    b_i = a_i / max(nu, ||v_t - x_i||),      v_{t+1} = sum_i b_i x_i / sum_i b_i

``||.||`` is the Euclidean norm of a client's whole update (all leaves). A fixed
``T`` keeps the program static; the paper reports that a few iterations suffice.
RFA starts from the mean; starting from the (robust) coordinate-wise median
instead means a few iterations suffice even when outliers are huge, where from
the mean they would take many more.
The geometric median's breakdown point is 1/2: with fewer than half of the
weight adversarial it stays in a ball around the honest points, however far the
others are.

References:
  Pillutla, Kakade, Harchaoui. "Robust Aggregation for Federated Learning."
  IEEE Transactions on Signal Processing 70, 2022.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxqfl.aggregate.coordinatewise import coordinate_median
from jaxqfl.aggregate.sensitivity import no_bound
from jaxqfl.aggregate.stacked import flatten_rows, gather_rule


def weiszfeld(x, a, valid, num_iters: int, nu: float):
    """Smoothed Weiszfeld from the coordinate-wise median: ``x`` [M, P], ``a`` [M] (0 for padding rows) -> [P]."""
    a = a / jnp.maximum(jnp.sum(a), 1e-30)
    v0 = coordinate_median(x, valid)

    def step(v, _):
        b = a / jnp.maximum(nu, jnp.sqrt(jnp.sum((x - v) ** 2, axis=1)))
        return (b @ x) / jnp.maximum(jnp.sum(b), 1e-30), None

    return jax.lax.scan(step, v0, None, length=num_iters)[0]


def geometric_median(num_iters: int = 8, smoothing: float = 1e-6):
    """The weighted geometric median of the updates (RFA), ``num_iters`` smoothed Weiszfeld steps.

    Args:
      num_iters: ``T`` >= 1.
      smoothing: ``nu`` > 0, the floor on distances (avoids dividing by zero at a data point).
    """
    if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 1:
        raise ValueError(f"num_iters must be a positive integer, got {num_iters!r}")
    if not (isinstance(smoothing, (int, float)) and smoothing > 0):
        raise ValueError(f"smoothing must be a positive number, got {smoothing!r}")

    def server(stacked, state, stats, cohort):
        updates, weights = stacked
        x, unravel = flatten_rows(updates)
        x = jnp.where(cohort.valid[:, None], x, 0.0)
        a = jnp.where(cohort.valid, weights.astype(jnp.float32), 0.0)
        return unravel(weiszfeld(x, a, cohort.valid, num_iters, float(smoothing))), state, {}

    return gather_rule(server, dp=no_bound(
        "geometric_median", "weighs clients by the algorithm's weights and runs Weiszfeld iterations from the "
                            "coordinate-wise median; no sensitivity bound is derived for it"))
