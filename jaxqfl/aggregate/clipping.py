"""Clipping rules on the sum path: norm bounding (Sun et al. 2019) and centered clipping (Karimireddy et al. 2021).

Both need only a weighted sum over the cohort, so they stay on the engine's sum
path (a psum; memory one chunk of clients). ``||.||`` is the Euclidean norm of a
client's whole update, ``clip_r(z) = z min(1, r / ||z||)``, ``p_i`` the weights.

Norm bounding:     aggregate = sum_i p_i clip_M(u_i) / sum_i p_i
Centered clipping: aggregate = v + sum_i p_i clip_tau(u_i - v) / sum_i p_i,    v <- aggregate

Centered clipping runs one clipping iteration (the paper's L = 1) around the
previous round's aggregate ``v``, kept in the aggregator's state (zeros at the
start, so the first round is norm bounding at ``tau``). Keeping ``v`` in the
state is what makes it a sum-path rule: every client knows the centre before it
sends. The state has the model's structure, so the rule needs updates shaped
like the parameters (model deltas); any other update raises a ValueError.

References:
  Sun, Kairouz, Suresh, McMahan. "Can You Really Backdoor Federated Learning?" 2019.
  Karimireddy, He, Jaggi. "Learning from History for Byzantine Robust Optimization." ICML 2021.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxqfl.aggregate.base import Aggregator, no_state
from jaxqfl.aggregate.mean import divide_by_weight, weighted_summand
from jaxqfl.aggregate.sensitivity import no_bound


def global_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in jax.tree.leaves(tree)))


def clip_to_norm(tree, radius):
    """``tree * min(1, radius / ||tree||)``."""
    factor = jnp.minimum(1.0, radius / jnp.maximum(global_norm(tree), 1e-30))
    return jax.tree.map(lambda a: (a * factor).astype(a.dtype), tree)


def check_radius(radius):
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not radius > 0 or radius == float("inf"):
        raise ValueError(f"the clipping radius must be a finite positive number, got {radius!r}")
    return float(radius)


def norm_bound(radius: float = 1.0) -> Aggregator:
    """Norm bounding (Sun et al. 2019): the weighted mean of the updates clipped to norm ``radius``."""
    radius = check_radius(radius)

    def client(update, weight, client_state, state, stats, info):
        clipped = clip_to_norm(update, radius)
        norm = global_norm(update)
        return weighted_summand(clipped, weight), client_state, {"clipped": (norm > radius).astype(jnp.float32)}

    def server(reduced, state, stats, cohort):
        return divide_by_weight(reduced), state, {}

    return Aggregator(init=no_state, client_state_init=no_state, reduction="sum", client=client, server=server,
                      dp=no_bound("norm_bound", "clips the updates itself and divides by the realised weight sum; "
                                  "use clip_updates(C, fixed_denominator_mean())", clips_itself=True))


def centered_clip(radius: float = 1.0) -> Aggregator:
    """Centered clipping (Karimireddy et al. 2021), one iteration around the previous aggregate.

    Args:
      radius: ``tau`` > 0.
    """
    radius = check_radius(radius)

    def init(params):
        return {"center": jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)}

    def check_structure(update, center):
        if jax.tree.structure(update) != jax.tree.structure(center):
            raise ValueError("centered_clip keeps the previous aggregate, shaped like the model's parameters; "
                             f"this algorithm's update has another structure: {jax.tree.structure(update)}")

    def client(update, weight, client_state, state, stats, info):
        check_structure(update, state["center"])
        offset = jax.tree.map(lambda u, v: u.astype(jnp.float32) - v, update, state["center"])
        norm = global_norm(offset)
        return (weighted_summand(clip_to_norm(offset, radius), weight), client_state,
                {"clipped": (norm > radius).astype(jnp.float32)})

    def server(reduced, state, stats, cohort):
        aggregate = jax.tree.map(jnp.add, state["center"], divide_by_weight(reduced))
        return aggregate, {"center": aggregate}, {}

    return Aggregator(init=init, client_state_init=no_state, reduction="sum", client=client, server=server,
                      dp=no_bound("centered_clip", "clips around the previous aggregate and divides by the realised "
                                  "weight sum; no sensitivity bound is derived for it", clips_itself=True))
