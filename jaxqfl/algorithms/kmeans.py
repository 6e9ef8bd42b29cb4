"""Federated k-means on the round protocol: Lloyd's algorithm and mini-batch k-means.

Both run the centroids model (``jaxqfl.models.centroids``: params ``{"centroids":
C [K, d], "probe": 0 [K]}``) under the clustering task (``jaxqfl.tasks.clustering``).
A client never looks at its rows directly: the engine hands it the gradient of
the batch's mean k-means loss, from which the batch's sufficient statistics
follow exactly (``batch_statistics``). With ``B`` the batch's row count,
``n_j`` the rows assigned to centroid j and ``S_j`` their sum,

    grads["probe"][j]     = n_j / B
    grads["centroids"][j] = (n_j c_j - S_j) / B
    =>  n_j / B = grads["probe"][j],   S_j / B = (n_j / B) c_j - grads["centroids"][j]

A client's upload is ``KMeansUpdate(sums, counts)`` with weight 1, reduced by the
aggregator like any update (uplink codecs, integer / secure sums and DP apply).
Both server rules below are ratios of the reduced sums and counts (homogeneous
of degree 0 in them), so an aggregator that returns their mean gives the same
centroids as one that returned the totals.

Lloyd's algorithm (Lloyd 1982), one round = one Lloyd iteration over the
cohort's union of rows. Run it with ``LocalSchedule(local_steps=1,
batch_size=None)``: one full-batch step, so ``B = n_i`` (the client's example
count, ``info.num_examples``) and the client uploads its absolute ``S_j`` and
``n_j``. The server sets

    c_j <- sum_i S_ij / sum_i n_ij     when the cohort assigned a point to j,
    c_j unchanged                      otherwise (an empty cluster keeps its centroid).

With every client in every round this equals centralised Lloyd on the pooled
rows, iteration for iteration.

Mini-batch k-means (Sculley 2010, "Web-scale k-means clustering"): each client
runs Sculley's per-centroid learning rate ``1/v_j`` over its local steps, from
the server's centroids and running counts ``V``:

    v_j <- v_j + n_j,    c_j <- c_j + (S_j - n_j c_j) / v_j     (v_j > 0; else c_j stays)

which is Sculley's point-by-point update ``c <- (1 - 1/v) c + x / v`` applied to
every point of the batch (the assignments cached at the batch's start, as in
his Algorithm 1). It telescopes: ``v_T c_T = V c + T`` with ``T_j`` the sum of
the points the client assigned to j over its steps, so the client uploads
``sums = T`` and ``counts = N`` (their number), and the server combines the
cohort as the per-centroid count-weighted mean of the clients' final centroids:

    c_j <- (V_j c_j + mean_i T_ij) / (V_j + mean_i N_ij),    V_j <- V_j + mean_i N_ij

(c_j unchanged while V_j + mean N_ij = 0). With one client per round this is
exactly Sculley's sequential algorithm over that client's batches. Counts are
kept in units of one batch (``n_j / B``): the learning rate ``1/v_j`` is
unchanged by that scale as long as every step reads ``B`` rows, which holds for
``LocalSchedule(local_steps=K, batch_size=B)``. Each client contributes ``K B``
rows a round, hence weight 1.

References:
    Lloyd. Least squares quantization in PCM. IEEE Trans. Inf. Theory 28, 1982.
    Sculley. Web-scale k-means clustering. WWW 2010.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxqfl.algorithms.base import Algorithm, ClientOutput, ServerMessage, no_client_state

__all__ = ["KMeansUpdate", "batch_statistics", "lloyd", "minibatch_kmeans"]

#: A centroid whose total count (in rows) is below this is empty.
EMPTY_BELOW = 0.5


class KMeansUpdate(NamedTuple):
    """A client's upload: per-centroid sums of its assigned points and their counts."""

    sums: jax.Array  # [K, d]
    counts: jax.Array  # [K]


class LloydLocal(NamedTuple):
    params: Any  # the received centroids (never moved by the client)
    stats: KMeansUpdate


class MinibatchLocal(NamedTuple):
    params: Any  # the client's moving centroids
    v: jax.Array  # [K] running counts (batch units), from the server's V
    stats: KMeansUpdate  # T and N so far


def batch_statistics(grads, centroids) -> KMeansUpdate:
    """``(S_j / B, n_j / B)`` from the gradient of the batch's mean k-means loss at ``centroids`` (module docstring)."""
    counts = grads["probe"]  # [K]
    sums = counts[:, None] * centroids - grads["centroids"]  # [K, d]
    return KMeansUpdate(sums, counts)


def _zero_stats(params) -> KMeansUpdate:
    c = params["centroids"]
    return KMeansUpdate(jnp.zeros_like(c), jnp.zeros(c.shape[:1], c.dtype))


def _with_centroids(params, centroids):
    return {**params, "centroids": centroids, "probe": jnp.zeros_like(params["probe"])}


def _add(a: KMeansUpdate, b: KMeansUpdate) -> KMeansUpdate:
    return KMeansUpdate(a.sums + b.sums, a.counts + b.counts)


def lloyd() -> Algorithm:
    """Federated Lloyd's algorithm (module docstring). Needs one full-batch local step per round."""

    def client_init(message, client_state, info):
        del client_state, info
        return LloydLocal(message.params, _zero_stats(message.params))

    def client_step(local, grads, message, info):
        del message
        n = info.num_examples.astype(jnp.float32)  # the full batch's row count B
        s = batch_statistics(grads, local.params["centroids"])
        return LloydLocal(local.params, _add(local.stats, KMeansUpdate(n * s.sums, n * s.counts)))

    def client_final(local, message, client_state, info):
        del message, info
        return ClientOutput(local.stats, jnp.float32(1.0), client_state, {})

    def server_update(params, state, aggregate: KMeansUpdate, info):
        c = params["centroids"]
        occupied = aggregate.counts * info.total_weight >= EMPTY_BELOW  # [K]
        mean = aggregate.sums / jnp.where(occupied, aggregate.counts, 1.0)[:, None]
        new_c = jnp.where(occupied[:, None], mean, c)
        metrics = {"empty_clusters": jnp.sum(~occupied).astype(jnp.float32),
                   "centroid_shift": jnp.sqrt(jnp.sum((new_c - c) ** 2))}
        return _with_centroids(params, new_c), state, metrics

    return Algorithm(
        init=lambda params: (),
        client_state_init=no_client_state,
        broadcast=lambda params, state: ServerMessage(params),
        client_init=client_init,
        client_step=client_step,
        client_final=client_final,
        server_update=server_update,
    )


def minibatch_kmeans() -> Algorithm:
    """Federated mini-batch k-means (Sculley 2010; module docstring). Needs a fixed batch size B per step.

    The server state is ``V [K]``, the running per-centroid counts in units of one
    client batch, broadcast to clients as ``message.extras``.
    """

    def init(params):
        return jnp.zeros(params["probe"].shape, jnp.float32)

    def client_init(message, client_state, info):
        del client_state, info
        return MinibatchLocal(message.params, message.extras, _zero_stats(message.params))

    def client_step(local, grads, message, info):
        del message, info
        c = local.params["centroids"]
        s = batch_statistics(grads, c)
        v = local.v + s.counts
        step = (s.sums - s.counts[:, None] * c) / jnp.where(v > 0, v, 1.0)[:, None]
        new_c = jnp.where((v > 0)[:, None], c + step, c)
        return MinibatchLocal(_with_centroids(local.params, new_c), v, _add(local.stats, s))

    def client_final(local, message, client_state, info):
        del message, info
        return ClientOutput(local.stats, jnp.float32(1.0), client_state, {})

    def server_update(params, v, aggregate: KMeansUpdate, info):
        del info
        c = params["centroids"]
        new_v = jnp.maximum(v + aggregate.counts, 0.0)
        moved = new_v > 0
        new_c = jnp.where(moved[:, None], (v[:, None] * c + aggregate.sums) / jnp.where(moved, new_v, 1.0)[:, None],
                          c)
        metrics = {"centroid_shift": jnp.sqrt(jnp.sum((new_c - c) ** 2))}
        return _with_centroids(params, new_c), new_v, metrics

    return Algorithm(
        init=init,
        client_state_init=no_client_state,
        broadcast=lambda params, v: ServerMessage(params, v),
        client_init=client_init,
        client_step=client_step,
        client_final=client_final,
        server_update=server_update,
    )
