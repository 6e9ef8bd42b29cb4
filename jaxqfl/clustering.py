"""Federated k-means end to end: the seeding round, k-means++ on the server, then Lloyd or mini-batch rounds.

    round 0        sample_rows: each sampled client uploads s of its rows in hashed
                   slots (jaxqfl.algorithms.kmeans_seeding), through the aggregator
    server         k-means++ on the surviving sample, best of 10 restarts (each refined by Lloyd on
                   the sample), key fold_in(round_key(run_key, 0), SEEDING)
    rounds 1, ...  lloyd() or minibatch_kmeans() (jaxqfl.algorithms.kmeans) from those seeds

``seed`` builds and runs the seeding round (its own one-round program: its
schedule and upload differ from the clustering rounds'), ``start_state`` puts
the seeds into the clustering simulation's initial state at round 1, and
``scores`` measures centroids on the test rows on the host (inertia in float64,
ARI and NMI against the test labels; ``jaxqfl.metrics``).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxqfl import keys, metrics, tasks
from jaxqfl.algorithms.kmeans_seeding import best_of_restarts, sample_rows
from jaxqfl.data.population import Population

__all__ = ["Seeds", "seed", "start_state", "scores", "default_points_per_client", "seeding_bytes"]

#: Slots per sampled point in the seeding round (a point survives with probability ~ e^{-1/SLOTS_PER_POINT}).
SLOTS_PER_POINT = 4


class Seeds(NamedTuple):
    centroids: np.ndarray  # [K, d] float32, the k-means++ seeds
    sample_size: int  # points that survived the seeding round
    uplink_bits: int  # the seeding round's uplink traffic, all clients
    downlink_bits: int


def default_points_per_client(num_clusters: int, cohort_size: int) -> int:
    """Rows each sampled client sends in the seeding round: about 50 K sampled points in all (at least 1 each)."""
    return max(1, math.ceil(50 * num_clusters / cohort_size))


def seeding_bytes(num_clusters: int, cohort_size: int, points_per_client: int | None = None,
                  restarts: int = 10) -> int:
    """Lower bound on the server's memory for seeding: ``restarts x R x K x 12`` bytes.

    ``R = SLOTS_PER_POINT x cohort_size x s`` sample slots (``s`` points per
    client); each of the vmapped restarts of ``best_of_restarts`` holds an
    ``[R, K]`` float32 distance matrix, its one-hot assignment and the argmin
    (3 x 4 bytes per entry), even when XLA fuses the ``[R, K, d]`` differences
    away. Used to refuse a seeding that cannot fit before any of it runs.
    """
    s = default_points_per_client(num_clusters, cohort_size) if points_per_client is None else points_per_client
    return int(restarts) * SLOTS_PER_POINT * int(cohort_size) * int(s) * int(num_clusters) * 12


def seed(population: Population, model, num_clusters: int, *, cohort_size: int, run_seed: int,
         points_per_client: int | None = None, restarts: int = 10, lloyd_iterations: int = 20, build=None,
         should_stop=None, **build_kwargs) -> Seeds | None:
    """Run the seeding round (round 0 of run ``run_seed``) and k-means++ on its sample.

    The server keeps the best of ``restarts`` k-means++ runs on the sample, each
    refined by ``lloyd_iterations`` Lloyd iterations on the sample
    (``kmeans_seeding.best_of_restarts``); ``restarts=1, lloyd_iterations=0`` is
    plain k-means++.

    Args:
      model: the centroids model (``jaxqfl.models.centroids(num_clusters)``).
      build: ``engine.build`` (default) or ``engine.build_streaming``.
      should_stop: ``() -> bool``, checked after the seeding round and between the bounded
        pieces of the server's k-means++ (``best_of_restarts``); True returns ``None`` there.
      build_kwargs: passed to ``build`` (``aggregator``, ``uplink``, ``downlink``,
        ``num_devices``, ``chunk_size``, ``client_state``): the seeding round's
        uploads go through them like any round's.

    Raises:
      ValueError: when fewer than ``num_clusters`` points survive (raise ``points_per_client``).
    """
    from jaxqfl import engine

    build = engine.build if build is None else build
    s = default_points_per_client(num_clusters, cohort_size) if points_per_client is None else points_per_client
    if not isinstance(s, int) or isinstance(s, bool) or s < 1:
        raise ValueError(f"points_per_client must be an integer >= 1, got {s!r}")
    slots = SLOTS_PER_POINT * cohort_size * s
    sim = build(population, model, sample_rows(slots), engine.LocalSchedule(local_steps=s, batch_size=1),
                cohort_size=cohort_size, task=tasks.clustering(), **build_kwargs)
    state, round_metrics = sim.run_block(sim.init(run_seed), 1)
    if should_stop is not None and should_stop():
        return None
    sample = jax.device_get(state.algorithm_state)
    valid = np.asarray(sample.valid)
    if int(valid.sum()) < num_clusters:
        raise ValueError(
            f"the seeding round kept {int(valid.sum())} sampled points, fewer than the {num_clusters} clusters; "
            f"send more points per client (points_per_client={s}) or sample more clients")
    key = keys.purpose_key(keys.round_key(state.key, 0), keys.SEEDING)
    centroids = best_of_restarts(jnp.asarray(sample.points), jnp.asarray(valid), num_clusters, key,
                                 restarts=restarts, lloyd_iterations=lloyd_iterations, should_stop=should_stop)
    if centroids is None:
        return None
    up = int(np.sum(np.asarray(round_metrics.uplink_bits), dtype=np.int64))
    down = int(np.sum(np.asarray(round_metrics.downlink_bits), dtype=np.int64))
    return Seeds(np.asarray(centroids, np.float32), int(valid.sum()), up, down)


def start_state(sim, run_seed: int, centroids, first_round: int = 1):
    """``sim``'s initial state for run ``run_seed`` with the given centroids, at round ``first_round``.

    Round 0 of a run is its seeding round, so the clustering rounds start at 1 and
    never reuse its keys.
    """
    state = sim.init(run_seed)
    c = jnp.asarray(centroids, jnp.float32)
    if c.shape != state.params["centroids"].shape:
        raise ValueError(f"centroids of shape {c.shape}; the model has {state.params['centroids'].shape}")
    params = {**state.params, "centroids": c, "probe": jnp.zeros_like(state.params["probe"])}
    return state._replace(params=params, round=jnp.int32(first_round))


def scores(population: Population, centroids) -> dict:
    """``{"inertia", "ari", "nmi"}`` of ``centroids`` on the test rows (ARI / NMI None without labels)."""
    c = np.asarray(centroids, np.float64)
    x = population.x_test.reshape(population.x_test.shape[0], -1)
    out = {"inertia": metrics.inertia(x, c), "ari": None, "nmi": None}
    if population.num_classes > 0 and population.y_test.shape[0] > 0:
        pred = metrics.nearest_centroid(x, c)
        out["ari"] = metrics.adjusted_rand_index(population.y_test, pred)
        out["nmi"] = metrics.normalized_mutual_info(population.y_test, pred)
    return out
