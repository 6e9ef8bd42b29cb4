"""Federated k-means: Lloyd equals centralised Lloyd step for step; Sculley's mini-batch rule; seeding; codecs."""
import jax
import numpy as np
import pytest

from jaxqfl import aggregate, clustering, compress, data, engine, metrics, models, tasks
from jaxqfl.algorithms import kmeans, kmeans_seeding

FULL_BATCH = engine.LocalSchedule(local_steps=1, batch_size=None)


def _blobs(sizes=(7, 13, 4, 11, 9, 6), d=3, seed=0):
    """Uneven natural clients drawing from 4 loose blobs (assignments change over Lloyd's iterations)."""
    rng = np.random.default_rng(seed)
    means = 3.0 * rng.normal(size=(4, d))
    n = sum(sizes)
    z = rng.integers(0, 4, n)
    x = (means[z] + rng.normal(size=(n, d))).astype(np.float32)
    zt = rng.integers(0, 4, 40)
    xt = (means[zt] + rng.normal(size=(40, d))).astype(np.float32)
    return data.from_arrays(x, z, client_ids=np.repeat(np.arange(len(sizes)), sizes), x_test=xt, y_test=zt,
                            task="clustering")


def _numpy_lloyd_step(x, c):
    """One centralised Lloyd iteration in float64; an empty cluster keeps its centroid."""
    a = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
    new = c.copy()
    for j in range(len(c)):
        if np.any(a == j):
            new[j] = x[a == j].mean(0)
    return new


@pytest.mark.parametrize("num_devices", [1, 4])
def test_federated_lloyd_with_every_client_equals_centralised_lloyd_step_for_step(num_devices):
    pop = _blobs()
    x = pop.x.astype(np.float64)
    # 3 data rows and one far-away centroid that stays empty (it must not move)
    c0 = np.concatenate([x[[0, 5, 20]], np.full((1, x.shape[1]), 100.0)]).astype(np.float32)
    sim = engine.build(pop, models.centroids(4), kmeans.lloyd(), FULL_BATCH, cohort_size=pop.num_clients,
                       task=tasks.clustering(), num_devices=num_devices, chunk_size=2)
    state = clustering.start_state(sim, 0, c0)
    ref = c0.astype(np.float64)
    for _ in range(6):
        state, m = sim.run_block(state, 1)
        ref = _numpy_lloyd_step(x, ref)
        np.testing.assert_allclose(np.asarray(state.params["centroids"]), ref, rtol=0, atol=2e-5)
        assert float(m.server["empty_clusters"][0]) == 1.0
    np.testing.assert_array_equal(np.asarray(state.params["centroids"])[3], c0[3])
    assert np.all(np.asarray(state.params["probe"]) == 0)
    # the engine's test inertia (float32 on the devices) is the host's float64 one
    ev = sim.evaluate(state.params)
    assert ev["inertia"] == pytest.approx(metrics.inertia(pop.x_test, ref), rel=1e-5)


def test_a_sampled_cohort_through_the_gathered_mean_is_lloyd_on_the_cohorts_rows():
    pop = _blobs(seed=1)
    c = pop.x[[2, 9, 17, 33]].astype(np.float64)
    sim = engine.build(pop, models.centroids(4), kmeans.lloyd(), FULL_BATCH, cohort_size=4,
                       aggregator=aggregate.gather_mean(), task=tasks.clustering(), num_devices=2)
    state = clustering.start_state(sim, 5, c)
    for _ in range(3):
        state, m = sim.run_block(state, 1)
        rows = np.concatenate([pop.x[pop.offsets[i]:pop.offsets[i] + pop.counts[i]] for i in m.cohort[0]])
        c = _numpy_lloyd_step(rows.astype(np.float64), c)
        np.testing.assert_allclose(np.asarray(state.params["centroids"]), c, atol=2e-5)


def _numpy_sculley(x, c, v, steps):
    """Sculley's mini-batch k-means, point by point, with a full batch every step (assignments cached per batch)."""
    c, v = c.copy(), v.copy()
    for _ in range(steps):
        a = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
        for xi, j in zip(x, a):
            v[j] += 1
            c[j] = (1 - 1 / v[j]) * c[j] + xi / v[j]
    return c, v


def test_minibatch_kmeans_with_one_client_is_sculleys_algorithm():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(size=(9, 2)) + 4, rng.normal(size=(8, 2)) - 4]).astype(np.float32)
    pop = data.from_arrays(x, np.zeros(17, int), client_ids=np.zeros(17, int), x_test=x[:3], y_test=np.zeros(3, int),
                           task="clustering")
    c0 = x[[0, 1, 12]]
    sim = engine.build(pop, models.centroids(3), kmeans.minibatch_kmeans(),
                       engine.LocalSchedule(local_steps=3, batch_size=None), cohort_size=1, task=tasks.clustering(),
                       num_devices=1)
    state = clustering.start_state(sim, 0, c0)
    c, v = c0.astype(np.float64), np.zeros(3)
    for _ in range(2):  # two rounds of three full-batch steps
        state, _ = sim.run_block(state, 1)
        c, v = _numpy_sculley(x.astype(np.float64), c, v, 3)
        np.testing.assert_allclose(np.asarray(state.params["centroids"]), c, atol=2e-5)
        np.testing.assert_allclose(np.asarray(state.algorithm_state) * len(x), v, rtol=1e-5)  # V in batch units


def _mixture():
    return data.build("gaussian-mixture", num_clients=30, seed=1, components=5, num_features=10, separation=5.0,
                      size_mean=3.0, size_sigma=0.5, min_size=20)


def test_seeded_federated_lloyd_recovers_a_well_separated_mixture():
    pop = _mixture()
    model = models.centroids(5)
    # plain k-means++ (one restart, no refinement): the seeds are sampled rows
    seeds = clustering.seed(pop, model, 5, cohort_size=10, run_seed=0, num_devices=2, restarts=1,
                            lloyd_iterations=0)
    assert seeds.sample_size >= 5
    # every seed is one of the clients' rows (read from a gradient at zero centroids; the mean's 1/M undone)
    rows = pop.x.astype(np.float32)
    for c in seeds.centroids:
        assert np.min(np.abs(rows - c).max(1)) <= 1e-6 * np.abs(c).max()
    sim = engine.build(pop, model, kmeans.lloyd(), FULL_BATCH, cohort_size=10, task=tasks.clustering(),
                       num_devices=2)
    state, _ = sim.run_block(clustering.start_state(sim, 0, seeds.centroids), 10)
    s = clustering.scores(pop, state.params["centroids"])
    assert s["ari"] >= 0.95 and s["nmi"] >= 0.9
    assert s["inertia"] < clustering.scores(pop, seeds.centroids)["inertia"]


def test_minibatch_kmeans_decreases_inertia():
    pop = _mixture()
    c0 = pop.x[:5]  # the first rows (one client's): a poor start
    sim = engine.build(pop, models.centroids(5), kmeans.minibatch_kmeans(),
                       engine.LocalSchedule(local_steps=5, batch_size=8), cohort_size=6, task=tasks.clustering(),
                       num_devices=2)
    state = clustering.start_state(sim, 0, c0)
    before = clustering.scores(pop, c0)["inertia"]
    inertias = []
    for _ in range(3):
        state, _ = sim.run_block(state, 4)
        inertias.append(clustering.scores(pop, state.params["centroids"])["inertia"])
    assert inertias[0] < 0.7 * before and inertias[-1] <= inertias[0] * 1.02


@pytest.mark.slow
def test_an_uplink_codec_applies_to_the_seeding_and_lloyd_uploads():
    pop = _mixture()
    model = models.centroids(5)
    codec = compress.from_spec("uniform:8")
    M, s = 10, clustering.default_points_per_client(5, 10)
    seeds = clustering.seed(pop, model, 5, cohort_size=M, run_seed=0, num_devices=2, uplink=codec)
    float_bits = M * 32 * (clustering.SLOTS_PER_POINT * M * s) * (pop.x.shape[1] + 1)
    assert 0 < seeds.uplink_bits < float_bits / 3  # 8-bit codes instead of 32-bit floats
    sim = engine.build(pop, model, kmeans.lloyd(), FULL_BATCH, cohort_size=pop.num_clients,
                       task=tasks.clustering(), num_devices=2, uplink=codec)
    state, m = sim.run_block(clustering.start_state(sim, 0, seeds.centroids), 8)
    assert np.all(np.asarray(m.uplink_bits) < 32 * (5 * 10 + 5) / 2)  # 8-bit codes for the sums and counts
    c = seeds.centroids.astype(np.float64)
    for _ in range(8):
        c = _numpy_lloyd_step(pop.x.astype(np.float64), c)
    quantised = np.asarray(state.params["centroids"])
    assert clustering.scores(pop, quantised)["ari"] >= 0.95
    np.testing.assert_allclose(quantised, c, atol=0.1)  # 8-bit sums: centroids within quantisation
    assert np.abs(quantised - c).max() > 1e-4  # the codec did act


def test_kmeans_plus_plus_draws_distinct_valid_rows_and_spreads_them():
    pts = np.array([[0.0, 0], [0, 0.1], [10, 10], [10, 10.1], [-10, 5], [99, 99]], np.float32)
    valid = np.array([True, True, True, True, True, False])
    seeds = jax.jit(jax.vmap(lambda k: kmeans_seeding.kmeans_plus_plus(pts, valid, 3, k, trials=1)))
    for c in np.asarray(seeds(jax.random.split(jax.random.key(0), 8))):
        picked = {int(np.argmin(np.abs(pts - ci).sum(1))) for ci in c}
        assert 5 not in picked
        # D^2 sampling: the three far-apart groups each get a seed (up to a negligible probability)
        assert {0 if i < 2 else 1 if i < 4 else 2 for i in picked} == {0, 1, 2}


def test_too_small_a_seeding_sample_is_refused():
    pop = _blobs()
    with pytest.raises(ValueError, match="fewer than the 9 clusters"):
        clustering.seed(pop, models.centroids(9), 9, cohort_size=2, run_seed=0, points_per_client=1,
                        num_devices=1)


@pytest.mark.parametrize("num_devices", [1, 4])
def test_federated_lloyd_with_sparse_clusters_equals_centralised_lloyd(num_devices):
    """Clusters holding fewer rows than the cohort has clients (1 and 2 rows, 8 clients) move as in NumPy Lloyd.

    Their per-client mean counts are 1/8 and 2/8 of a row: the server must still see them as occupied and
    divide the summed rows by the true count, not by the number of clients or a rounded count.
    """
    rng = np.random.default_rng(7)
    sizes = np.array([5, 6, 4, 7, 5, 6, 3, 4])
    n = int(sizes.sum())
    x = rng.normal(size=(n, 2))
    x[3] = (40.0, 40.0)  # a lone row far away: a one-row cluster
    x[[11, 30]] = ((-40.0, 35.0), (-41.0, 36.5))  # two far rows held by different clients
    x = x.astype(np.float32)
    pop = data.from_arrays(x, np.zeros(n, np.int32), client_ids=np.repeat(np.arange(8), sizes),
                           x_test=x[:5], y_test=np.zeros(5, np.int32), task="clustering")
    xs = pop.x.astype(np.float64)
    far = [int(np.flatnonzero((pop.x[:, 0] > 30))[0]), int(np.flatnonzero(pop.x[:, 0] < -30)[0])]
    c0 = np.concatenate([xs[far], xs[np.flatnonzero(np.abs(pop.x[:, 0]) < 30)[:2]]]).astype(np.float32)
    sim = engine.build(pop, models.centroids(4), kmeans.lloyd(), FULL_BATCH, cohort_size=pop.num_clients,
                       task=tasks.clustering(), num_devices=num_devices)
    state = clustering.start_state(sim, 0, c0)
    ref = c0.astype(np.float64)
    for _ in range(4):
        state, m = sim.run_block(state, 1)
        ref = _numpy_lloyd_step(xs, ref)
        np.testing.assert_allclose(np.asarray(state.params["centroids"]), ref, rtol=0, atol=2e-5)
        assert float(m.server["empty_clusters"][0]) == 0.0
    sizes_ref = np.bincount(np.argmin(((xs[:, None] - ref[None]) ** 2).sum(-1), axis=1), minlength=4)
    assert sorted(sizes_ref)[:2] == [1, 2], "the test exercises clusters sparser than the cohort"
