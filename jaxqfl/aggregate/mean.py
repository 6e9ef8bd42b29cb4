"""The weighted mean, on the sum path and on the gather path.

    aggregate = sum_i p_i u_i / sum_i p_i        (p_i: the algorithm's client weight)

``mean()`` reduces ``(p_i u_i, p_i)`` with the engine's sum (a psum over
devices): memory per device is one chunk of clients. ``gather_mean()`` keeps
every client's ``(u_i, p_i)`` ([M_pad, ...] on every device) and averages on the
server side with padding slots masked out; it exists to prove the gather path
(robust rules build on it) equal to the sum path.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxqfl.aggregate.base import Aggregator, no_state
from jaxqfl.aggregate.sensitivity import no_bound

TINY = 1e-30
WEIGHTED_MEAN_UNBOUNDED = ("weighs clients by the algorithm's weights (example counts) and divides by the realised "
                           "weight sum, so one client can move it by more than C / D; use fixed_denominator_mean")


def weighted_summand(update, weight):
    """``(p u, p)``: what a client contributes to a weighted mean."""
    return jax.tree.map(lambda u: weight * u, update), weight


def divide_by_weight(reduced):
    """``sum p u / max(sum p, tiny)`` from a reduced ``(sum p u, sum p)``."""
    weighted, total = reduced
    return jax.tree.map(lambda s: s / jnp.maximum(total, TINY), weighted)


def mean() -> Aggregator:
    """Weighted mean on the sum path (the default aggregator)."""

    def client(update, weight, client_state, state, stats, info):
        del state, stats, info
        return weighted_summand(update, weight), client_state, {}

    def server(reduced, state, stats, cohort):
        del stats, cohort
        return divide_by_weight(reduced), state, {}

    return Aggregator(init=no_state, client_state_init=no_state, reduction="sum", client=client, server=server,
                      dp=no_bound("mean", WEIGHTED_MEAN_UNBOUNDED))


def gather_mean() -> Aggregator:
    """Weighted mean on the gather path: ``sum_{i valid} p_i u_i / sum_{i valid} p_i``."""

    def client(update, weight, client_state, state, stats, info):
        del state, stats, info
        return (update, weight), client_state, {}

    def server(stacked, state, stats, cohort):
        del stats
        updates, weights = stacked
        w = jnp.where(cohort.valid, weights, 0.0)

        def avg(u):
            u = jnp.where(cohort.valid.reshape((-1,) + (1,) * (u.ndim - 1)), u, 0.0)
            return jnp.tensordot(w, u, 1) / jnp.maximum(jnp.sum(w), TINY)

        return jax.tree.map(avg, updates), state, {}

    return Aggregator(init=no_state, client_state_init=no_state, reduction="gather", client=client, server=server,
                      dp=no_bound("gather_mean", WEIGHTED_MEAN_UNBOUNDED))
