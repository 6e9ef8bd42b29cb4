"""The k-means "model": K centroids and a zero probe vector, as a plain ``Model(init, apply)`` pair.

    params = {"centroids": C [K, d], "probe": p [K]}          (p is always 0)
    apply(params, x) = D [B, K],   D_bk = 1/2 ||x_b - c_k||^2 + p_k

The clustering task (``jaxqfl.tasks.clustering``) takes, per example, the row of
``D`` at its nearest centroid ``a(x) = argmin_k D_xk`` (the assignment is held
constant under differentiation), so a batch's loss is the k-means objective

    f(C, p) = sum_x [ 1/2 ||x - c_{a(x)}||^2 + p_{a(x)} ]

whose gradient carries the batch's sufficient statistics exactly:

    df/dp_j = n_j                   (points assigned to centroid j)
    df/dc_j = n_j c_j - S_j         (S_j: the sum of those points)

(the engine divides both by the batch's row count; ``jaxqfl.algorithms.kmeans``
undoes it). The probe costs K numbers and is what lets the federated k-means
algorithms read counts from a gradient; it never moves from 0.

Distances are computed from direct differences ``x - c`` (no ``|x|^2 - 2 x.c +
|c|^2`` cancellation), like ``jaxqfl.metrics.inertia``.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxqfl.models.core import Model


def half_squared_distances(centroids: jax.Array, x: jax.Array) -> jax.Array:
    """``[B, K]`` ``1/2 ||x_b - c_k||^2`` for rows ``x [B, *F]`` (flattened) and ``centroids [K, d]``."""
    x = x.reshape((x.shape[0], -1)).astype(centroids.dtype)
    return 0.5 * jnp.sum((x[:, None, :] - centroids[None, :, :]) ** 2, axis=-1)


def centroids(num_clusters: int, scale: float = 1.0) -> Model:
    """K centroids in the flattened feature space; ``init`` draws them i.i.d. ``N(0, scale^2)``.

    The draw is a placeholder: federated k-means starts from k-means++ seeds
    (``jaxqfl.clustering``) or from centroids the caller puts in the state.

    Args:
      num_clusters: K >= 1.
      scale: standard deviation of the initial draw.
    """
    if not isinstance(num_clusters, int) or isinstance(num_clusters, bool) or num_clusters < 1:
        raise ValueError(f"num_clusters must be an integer >= 1, got {num_clusters!r}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 0):
        raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")

    def init(key, sample_x):
        d = math.prod(sample_x.shape[1:])
        return {"centroids": scale * jax.random.normal(key, (num_clusters, d), jnp.float32),
                "probe": jnp.zeros((num_clusters,), jnp.float32)}

    def apply(params, x, *, key=None):
        del key
        return half_squared_distances(params["centroids"], x) + params["probe"][None, :]

    return Model(init=init, apply=apply)
