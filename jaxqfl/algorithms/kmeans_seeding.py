"""k-means++ seeding from a sample of the clients' rows drawn through one federated round.

The seeding round (``sample_rows``) is an ordinary round of the engine, so the
cohort, the uplink codec and the aggregator act on its uploads as on any other:

1. The server broadcasts all-zero centroids. Each sampled client takes ``s``
   local steps of batch size 1 (``LocalSchedule(local_steps=s, batch_size=1)``):
   step t reads one of its rows ``x_t`` drawn uniformly (with replacement) by the
   engine. At zero centroids every row is assigned to centroid 0 and the
   gradient of the clustering loss is ``-x_t`` exactly (``jaxqfl.models.centroids``),
   so the client reads the row from the gradient without rounding.
2. A sum-reducing aggregator cannot keep points apart, so each client writes
   ``x_t`` into one of ``R`` slots of a ``[R, d]`` buffer, drawn uniformly with
   ``fold_in(fold_in(client_key, SEEDING), t)``, and adds 1 to that slot's hit
   count ``[R]``. It uploads ``(buffer, hits)`` with weight 1.
3. The server reads the reduced buffer: a slot whose total hits round to exactly
   1 holds one point, ``buffer_r / hits_r`` (this ratio is the same for the mean
   and the sum of the uploads); empty slots and slots where points collided are
   dropped. With ``R = 4 M s`` slots for ``M s`` points, a point survives with
   probability ``(1 - 1/R)^(M s - 1) ~ e^{-1/4} ~ 0.78``; the survivors are a
   uniform sample of the drawn points (a collision does not depend on the point).

The server then runs k-means++ (``kmeans_plus_plus``, Arthur and Vassilvitskii
2007) on the surviving sample, keyed by the run key, and keeps the best of
several restarts refined on the sample (``best_of_restarts``). The whole buffer travels
(``R (d + 1)`` floats a client), once per run.

References:
    Arthur, Vassilvitskii. k-means++: the advantages of careful seeding. SODA 2007.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxqfl import keys
from jaxqfl.algorithms.base import Algorithm, ClientOutput, ServerMessage, no_client_state
from jaxqfl.algorithms.kmeans import batch_statistics

__all__ = ["RowSample", "SampleUpload", "sample_rows", "kmeans_plus_plus", "best_of_restarts"]


class SampleUpload(NamedTuple):
    """A client's seeding upload."""

    points: jax.Array  # [R, d] sum of the points written to each slot
    hits: jax.Array  # [R] how many points were written to each slot


class RowSample(NamedTuple):
    """The server's sample (the seeding algorithm's state after the round)."""

    points: jax.Array  # [R, d]
    valid: jax.Array  # [R] bool, slots that held exactly one point


class SampleLocal(NamedTuple):
    params: Any  # the all-zero centroids the gradient is taken at
    upload: SampleUpload
    step: jax.Array  # () int32


def sample_rows(num_slots: int) -> Algorithm:
    """The seeding round's algorithm: clients upload their local steps' rows in ``num_slots`` hashed slots.

    Run it for ONE round with ``LocalSchedule(local_steps=s, batch_size=1)``
    (``s`` points per client); the sample is the algorithm state afterwards
    (``RowSample``). The model's params are left unchanged.
    """
    if not isinstance(num_slots, int) or isinstance(num_slots, bool) or num_slots < 1:
        raise ValueError(f"num_slots must be an integer >= 1, got {num_slots!r}")

    def init(params):
        d = params["centroids"].shape[1]
        return RowSample(jnp.zeros((num_slots, d), jnp.float32), jnp.zeros((num_slots,), bool))

    def broadcast(params, state):
        del state
        return ServerMessage(jax.tree.map(jnp.zeros_like, params))

    def client_init(message, client_state, info):
        del client_state, info
        d = message.params["centroids"].shape[1]
        empty = SampleUpload(jnp.zeros((num_slots, d), jnp.float32), jnp.zeros((num_slots,), jnp.float32))
        return SampleLocal(message.params, empty, jnp.int32(0))

    def client_step(local, grads, message, info):
        del message
        x = jnp.sum(batch_statistics(grads, local.params["centroids"]).sums, axis=0)  # [d], the batch's one row
        slot_key = jax.random.fold_in(keys.purpose_key(info.key, keys.SEEDING), local.step)
        slot = jax.random.randint(slot_key, (), 0, num_slots)
        upload = SampleUpload(local.upload.points.at[slot].add(x), local.upload.hits.at[slot].add(1.0))
        return SampleLocal(local.params, upload, local.step + 1)

    def client_final(local, message, client_state, info):
        del message, info
        return ClientOutput(local.upload, jnp.float32(1.0), client_state, {})

    def server_update(params, state, aggregate: SampleUpload, info):
        total_hits = aggregate.hits * info.total_weight  # the mean's scale undone: hits per slot
        valid = jnp.round(total_hits) == 1.0
        points = aggregate.points / jnp.where(valid, aggregate.hits, 1.0)[:, None]
        points = jnp.where(valid[:, None], points, 0.0)
        metrics = {"sample_size": jnp.sum(valid).astype(jnp.float32)}
        return params, RowSample(points, valid), metrics

    return Algorithm(
        init=init,
        client_state_init=no_client_state,
        broadcast=broadcast,
        client_init=client_init,
        client_step=client_step,
        client_final=client_final,
        server_update=server_update,
    )


def _default_trials(num_clusters: int) -> int:
    import math

    return 2 + int(math.log(num_clusters))


def _draw(key, k, weights, validf, shape=()):
    """Row index drawn with probability ``weights / sum`` (uniform over valid rows when all are 0), key ``fold_in(key, k)``."""
    w = jnp.where(jnp.sum(weights) > 0, weights, validf)
    return jax.random.categorical(jax.random.fold_in(key, k), jnp.where(w > 0, jnp.log(w), -jnp.inf), shape=shape)


def _first_centre(points, validf, num_clusters: int, key):
    """``(centres [K, d] with centre 0 set, D^2 [R])``: k-means++'s uniform first draw."""
    first = points[_draw(key, 0, validf, validf)]
    centres = jnp.zeros((num_clusters, points.shape[1]), jnp.float32).at[0].set(first)
    return centres, jnp.sum((points - first) ** 2, axis=-1) * validf


def _next_centres(points, validf, key, centres, d2, lo, hi, trials: int):
    """Greedy k-means++ draws ``k = lo .. hi-1`` (``lo``, ``hi`` may be traced): the loop of ``kmeans_plus_plus``."""

    def distances(c):
        return jnp.sum((points - c) ** 2, axis=-1) * validf

    def body(k, carry):
        centres, d2 = carry
        candidates = _draw(key, k, d2, validf, (trials,))  # [trials] row indices
        new_d2 = jnp.minimum(d2[None, :], jax.vmap(lambda i: distances(points[i]))(candidates))  # [trials, R]
        best = jnp.argmin(jnp.sum(new_d2, axis=1))
        return centres.at[k].set(points[candidates[best]]), new_d2[best]

    return jax.lax.fori_loop(lo, hi, body, (centres, d2))


def kmeans_plus_plus(points: jax.Array, valid: jax.Array, num_clusters: int, key: jax.Array,
                     trials: int | None = None) -> jax.Array:
    """Greedy k-means++ seeds ``[K, d]`` from the valid rows of ``points [R, d]`` (Arthur and Vassilvitskii 2007).

    The first centre is a uniform valid row. Each next one: draw ``trials``
    candidates, each a valid row with probability ``D(x)^2 / sum D^2`` (``D(x)``:
    the distance to the nearest centre so far; uniform over the valid rows when
    every ``D`` is 0), and keep the candidate that leaves the smallest potential
    ``sum_x min(D(x)^2, ||x - candidate||^2)``. ``trials = 1`` is plain k-means++;
    the default ``2 + floor(ln K)`` is the greedy variant the paper's section 6
    suggests (also scikit-learn's default). Draw ``k`` uses ``fold_in(key, k)``.
    Pure ``jnp``; needs at least one valid row.
    """
    trials = _default_trials(num_clusters) if trials is None else int(trials)
    points = jnp.asarray(points, jnp.float32)
    validf = jnp.asarray(valid).astype(jnp.float32)
    centres, d2 = _first_centre(points, validf, num_clusters, key)
    return _next_centres(points, validf, key, centres, d2, 1, num_clusters, trials)[0]


#: Work (multiply-adds) of one piece of ``best_of_restarts`` between two ``should_stop`` checks.
PIECE_WORK = 2 ** 30


@functools.partial(jax.jit, static_argnums=(2,))
def _restarts_first(points, validf, num_clusters: int, keys_r):
    return jax.vmap(lambda k: _first_centre(points, validf, num_clusters, k))(keys_r)


@functools.partial(jax.jit, static_argnums=(7,))
def _restarts_next(points, validf, keys_r, centres, d2, lo, hi, trials: int):
    return jax.vmap(lambda k, c, d: _next_centres(points, validf, k, c, d, lo, hi, trials))(keys_r, centres, d2)


def _sq_distances(points, c):
    return jnp.sum((points[:, None, :] - c[None]) ** 2, axis=-1)  # [R, K]


@jax.jit
def _restarts_lloyd(points, validf, centres):
    """One Lloyd iteration of every restart on the valid sample rows (an empty cluster keeps its centroid)."""

    def refine(c):
        num_clusters = c.shape[0]
        a = jax.nn.one_hot(jnp.argmin(_sq_distances(points, c), axis=1), num_clusters) * validf[:, None]  # [R, K]
        n = jnp.sum(a, axis=0)
        return jnp.where((n > 0)[:, None], (a.T @ points) / jnp.where(n > 0, n, 1.0)[:, None], c)

    return jax.vmap(refine)(centres)


@jax.jit
def _restarts_best(points, validf, centres):
    cost = jax.vmap(lambda c: jnp.sum(jnp.min(_sq_distances(points, c), axis=1) * validf))(centres)
    return centres[jnp.argmin(cost)]


def best_of_restarts(points: jax.Array, valid: jax.Array, num_clusters: int, key: jax.Array, *,
                     restarts: int = 10, lloyd_iterations: int = 20,
                     should_stop: Callable[[], bool] | None = None) -> jax.Array | None:
    """The server's seeds: the best of ``restarts`` k-means++ runs, each refined by Lloyd on the sample.

    Restart ``r`` seeds with ``kmeans_plus_plus(..., fold_in(key, r))`` and runs
    ``lloyd_iterations`` Lloyd iterations over the valid sample rows (an empty
    cluster keeps its centroid); the restart with the smallest sample inertia
    ``sum_x min_k ||x - c_k||^2`` wins (scikit-learn's ``n_init``, on the sample
    only: no extra round). Bahmani et al. 2012 (k-means||) likewise recluster a
    sample on the server.

    The restarts run side by side (``vmap``) in bounded pieces, each its own call:
    as many k-means++ draws as fit in ``PIECE_WORK`` multiply-adds, then one Lloyd
    iteration at a time. ``should_stop()`` is checked between pieces; when it says
    True the seeding returns ``None`` at once (with thousands of clusters a seeding
    takes minutes, and a process must not stay deaf to Ctrl-C that long). Each piece
    is waited for before the next check (JAX dispatches asynchronously: without the
    wait, the loop would queue every piece at once and check nothing). The
    pieces draw exactly the numbers one call would: draw ``k`` of restart ``r`` is
    keyed ``fold_in(fold_in(key, r), k)`` whatever the piece.
    """
    stop = should_stop or (lambda: False)
    points = jnp.asarray(points, jnp.float32)
    validf = jnp.asarray(valid).astype(jnp.float32)
    trials = _default_trials(num_clusters)
    keys_r = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(restarts))
    centres, d2 = _restarts_first(points, validf, num_clusters, keys_r)
    per_draw = max(1, restarts * trials * points.shape[0] * points.shape[1])
    piece = max(1, PIECE_WORK // per_draw)
    for lo in range(1, num_clusters, piece):
        if stop():
            return None
        centres, d2 = jax.block_until_ready(_restarts_next(points, validf, keys_r, centres, d2, jnp.int32(lo),
                                                           jnp.int32(min(lo + piece, num_clusters)), trials))
    for _ in range(lloyd_iterations):
        if stop():
            return None
        centres = jax.block_until_ready(_restarts_lloyd(points, validf, centres))
    return None if stop() else _restarts_best(points, validf, centres)
