"""Procedural populations (jaxqfl.data.procedural): a client's rows are a function of (seed, id) only.

Checked: client c's rows are the same alone, in a cohort, inside the round on 1 or 4 devices and
materialised eagerly; a run on the eager population equals the procedural run bit for bit; the
generator's laws against NumPy; the O(M) cohort sampler's distinctness and uniformity; the CLI.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxqfl import algorithms, engine, keys, models
from jaxqfl.cli.main import main
from jaxqfl.data.procedural import client_leaf, from_function, procedural_mixture, procedural_synthetic
from jaxqfl.engine.round import ProceduralData
from jaxqfl.engine.sampling import sample_distinct
from jaxqfl.engine.schedule import LocalSchedule
from cli_refusals import assert_refused_before_any_work

D_FEAT, K = 6, 4


@pytest.fixture(scope="module")
def population():
    return procedural_synthetic(1.0, 1.0, 24, seed=3, num_features=D_FEAT, num_classes=K, size_mean=1.0,
                                size_sigma=1.0, min_size=3, max_count=16, test_clients=8)


def test_a_clients_rows_are_the_same_alone_in_a_cohort_and_materialised(population):
    eager = population.materialize()
    rows = jax.jit(population.rows)
    x_all, y_all, n_all = jax.device_get(rows(jnp.arange(24)))
    x_few, y_few, n_few = jax.device_get(rows(jnp.array([17, 5, 5, 0])))
    for j, c in enumerate([17, 5, 5, 0]):
        alone_x, alone_y = population.client(c)
        n = int(n_all[c])
        assert len(alone_y) == n == int(n_few[j]) == int(eager.counts[c])
        np.testing.assert_array_equal(alone_x, x_all[c, :n])
        np.testing.assert_array_equal(alone_x, x_few[j, :n])
        np.testing.assert_array_equal(alone_y, y_few[j, :n])
        np.testing.assert_array_equal(eager.client(c)[0], alone_x)
        np.testing.assert_array_equal(eager.client(c)[1], alone_y)
    # the rows depend on the population seed, and the test clients lie outside [0, C)
    other = procedural_synthetic(1.0, 1.0, 24, seed=4, num_features=D_FEAT, num_classes=K, size_mean=1.0,
                                 size_sigma=1.0, min_size=3, max_count=16, test_clients=8)
    assert not np.array_equal(other.client(0)[0][:3], population.client(0)[0][:3])
    wider = procedural_synthetic(1.0, 1.0, 32, seed=3, num_features=D_FEAT, num_classes=K, size_mean=1.0,
                                 size_sigma=1.0, min_size=3, max_count=16, test_clients=8)
    np.testing.assert_array_equal(wider.client(24)[0], population.x_test[:len(wider.client(24)[0])])


def test_the_user_generator_gets_the_clients_own_key():
    def generate(c, key):
        x = jax.random.normal(key, (5, 2)) + c
        return x, jnp.zeros(5, jnp.int32), c % 5 + 1

    pop = from_function(generate, 10, seed=9, feature_shape=(2,), num_classes=2, max_count=5, test_clients=2)
    x, _ = pop.client(7)
    want = jax.random.normal(keys.purpose_key(keys.derive(jax.random.key(9), keys.CLIENT_TAG, 7), keys.POPULATION),
                             (5, 2)) + 7
    np.testing.assert_allclose(x, np.asarray(want)[:3], rtol=1e-6)  # eager vs jitted erfinv: 1 ulp
    with pytest.raises(ValueError, match="must return"):
        from_function(lambda c, k: (jnp.zeros((4, 2)), jnp.zeros(4), 1), 10, 0, feature_shape=(2,), num_classes=2,
                      max_count=5)


@pytest.mark.parametrize("generate, message", [
    (lambda c, k: (jnp.full((4, 2), jnp.nan), jnp.zeros(4, jnp.int32), 3), r"test rows x holds 12 NaN or Inf values \(the first in row 0\)"),
    (lambda c, k: (jnp.zeros((4, 2)), jnp.full(4, 99, jnp.int32), 3), r"test labels y has labels in \[99, 99\], outside the allowed range \[0, 3\)"),
    (lambda c, k: (jnp.zeros((4, 2)), jnp.full(4, -1, jnp.int32), 3), r"test labels y has labels in \[-1, -1\]"),
    (lambda c, k: (jnp.zeros((4, 2)), jax.random.uniform(k, (4,)) * 2.7, 3), "integer class labels y .* float32"),
    (lambda c, k: (None, jnp.zeros(4, jnp.int32), 3), r"must return \(x \(4, 2\), y \(4,\), count \(\)\)"),
    (5, "generate must be a function"),
])
def test_a_generator_of_bad_rows_is_refused_before_anything_trains(generate, message):
    """Bad labels, float labels or NaN features ran silently (NaN loss, or accuracy 1.0 with a NaN loss): the test
    clients, drawn eagerly by the same generator when the population is built for a run, are checked."""
    with pytest.raises(ValueError, match=message):
        pop = from_function(generate, 10, 0, feature_shape=(2,), num_classes=3, max_count=4, test_clients=2)
        pop.x_test


def test_synthetic_generator_follows_its_stated_law():
    """Per client, from the stated slices of one normal draw (NumPy from the docstring's formulas): the rows,
    labels argmax(x W + b) and counts; the within-client feature variance j^-1.2; the spread of feature means."""
    alpha, beta, d, k, n = 2.0, 0.5, 5, 3, 64
    pop = procedural_synthetic(alpha, beta, 400, seed=1, num_features=d, num_classes=k, size_mean=2.0,
                               size_sigma=0.5, min_size=10, max_count=n, test_clients=1)
    ids = np.arange(400)
    x, y, counts = jax.device_get(jax.jit(pop.rows)(ids))
    z = np.stack([np.asarray(jax.random.normal(client_leaf(1, c), (2 + d * k + k + d + n * d + 1,))) for c in ids[:50]])
    u = alpha * z[:, 0]
    w = u[:, None, None] + z[:, 1:1 + d * k].reshape(-1, d, k)
    b = u[:, None] + z[:, 1 + d * k:1 + d * k + k]
    v = beta * z[:, 1 + d * k + k][:, None] + z[:, 2 + d * k + k:2 + d * k + k + d]
    x_ref = v[:, None, :] + np.arange(1, d + 1) ** -0.6 * z[:, 2 + d * k + k + d:-1].reshape(-1, n, d)
    np.testing.assert_allclose(x[:50], x_ref, rtol=1e-5, atol=1e-5)
    logits = np.einsum("cnd,cdk->cnk", x[:50].astype(np.float64), w) + b[:, None, :]
    margin = np.sort(logits, -1)[..., -1] - np.sort(logits, -1)[..., -2]
    sure = margin > 1e-4
    np.testing.assert_array_equal(y[:50][sure], logits.argmax(-1)[sure])
    want_counts = np.minimum(np.floor(np.exp(2.0 + 0.5 * z[:, -1])) + 10, n)
    np.testing.assert_array_equal(counts[:50], want_counts)
    within = (x - x.mean(axis=1, keepdims=True)).var(axis=(0, 1)) * n / (n - 1)
    np.testing.assert_allclose(within, np.arange(1, d + 1) ** -1.2, rtol=0.05)
    # over all 400 clients: a client's feature mean v_j = B + z has variance beta^2 + 1 (plus Sigma_jj / n)
    client_means = x.mean(axis=1)  # [400, d]
    np.testing.assert_allclose(client_means.var(axis=0), beta ** 2 + 1 + np.arange(1, d + 1) ** -1.2 / n, rtol=0.25)


def test_mixture_generator_follows_its_stated_law():
    """Rows minus their component's mean are N(0, I); a client's labels follow its pi = Dirichlet draw of
    sub-key 0; the means are ``separation`` N(0, I) from the population's own leaf."""
    pop = procedural_mixture(5, 200, seed=2, num_features=3, concentration=0.5, separation=3.0, max_count=512,
                             min_size=10, test_clients=1)
    means = 3.0 * np.asarray(jax.random.normal(keys.purpose_key(jax.random.key(2), keys.POPULATION), (5, 3)))
    x, y, _ = jax.device_get(jax.jit(pop.rows)(jnp.arange(200)))
    assert y.min() >= 0 and y.max() < 5
    residual = (x - means[y]).reshape(-1, 3)
    np.testing.assert_allclose(residual.mean(0), 0.0, atol=0.01)
    np.testing.assert_allclose(residual.var(0), 1.0, rtol=0.02)
    pi = np.stack([np.asarray(jax.random.dirichlet(jax.random.fold_in(client_leaf(2, c), 0), jnp.full(5, 0.5)))
                   for c in range(20)])
    freq = np.stack([np.bincount(y[c], minlength=5) / 512 for c in range(20)])
    assert np.abs(freq - pi).mean() < 0.02


def test_distinct_sampler_is_distinct_and_uniform():
    C, M, trials = 7, 3, 6000
    rkeys = jax.vmap(lambda r: keys.round_key(jax.random.key(0), r))(jnp.arange(trials))
    ids = np.asarray(jax.jit(jax.vmap(lambda k: sample_distinct(k, C, M)))(rkeys))
    assert ids.min() >= 0 and ids.max() < C
    assert all(len(set(row)) == M for row in ids)
    # every one of the 35 subsets equally likely: chi-square against uniform (df 34; 99.9% point 65.2)
    codes = (np.sort(ids, 1) * np.array([C * C, C, 1])).sum(1)
    _, counts = np.unique(codes, return_counts=True)
    assert len(counts) == 35
    expected = trials / 35
    assert ((counts - expected) ** 2 / expected).sum() < 65.2
    big = np.asarray(sample_distinct(keys.round_key(jax.random.key(1), 0), 100_000_000, 50))
    assert len(set(big.tolist())) == 50 and big.min() >= 0 and big.max() < 100_000_000


def _run(pop, num_devices, chunk_size, rounds=2):
    sim = engine.build(pop, models.mlp(hidden=(8,), num_outputs=K), algorithms.fedavg(optax.sgd(0.2)),
                       LocalSchedule(local_steps=3, batch_size=4), cohort_size=6, num_devices=num_devices,
                       chunk_size=chunk_size, cohort_sampler="distinct")
    state, metrics = sim.run_block(sim.init(5), rounds)
    return jax.device_get(state.params), jax.device_get(metrics), sim


def test_procedural_run_equals_the_eager_run_and_is_layout_invariant(population):
    eager = population.materialize()
    p_params, p_metrics, sim = _run(population, 1, 2)
    e_params, e_metrics, _ = _run(eager, 1, 2)
    np.testing.assert_array_equal(p_metrics.cohort, e_metrics.cohort)
    for a, b in zip(jax.tree.leaves(p_params), jax.tree.leaves(e_params)):
        np.testing.assert_array_equal(a, b)
    assert sim.evaluate(p_params)["accuracy"] == pytest.approx(sim.evaluate(e_params)["accuracy"])
    q_params, q_metrics, _ = _run(population, 4, 1)
    np.testing.assert_array_equal(q_metrics.cohort, p_metrics.cohort)
    np.testing.assert_allclose(q_metrics.train_loss, p_metrics.train_loss, atol=1e-6)
    for a, b in zip(jax.tree.leaves(q_params), jax.tree.leaves(p_params)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert isinstance(ProceduralData(), tuple)


def test_per_client_state_and_what_reads_the_population_are_refused(population):
    model = models.mlp(hidden=(8,), num_outputs=K)
    with pytest.raises(ValueError, match="cannot keep per-client states"):
        engine.build(population, model, algorithms.scaffold(0.1), LocalSchedule(local_steps=1,
                     batch_size=4), cohort_size=4, num_devices=1, chunk_size=1)
    with pytest.raises(ValueError, match="does not support sampling='poisson'"):
        engine.build(population, model, algorithms.fedavg(optax.sgd(0.1)), LocalSchedule(local_steps=1,
                     batch_size=4), cohort_size=4, num_devices=1, chunk_size=1, sampling="poisson")
    with pytest.raises(ValueError, match="cohort_sampler='distinct' draws a fixed-size cohort"):
        engine.build(population.materialize(), model, algorithms.fedavg(optax.sgd(0.1)),
                     LocalSchedule(local_steps=1, batch_size=4), cohort_size=4, num_devices=1, chunk_size=1,
                     sampling="poisson", cohort_sampler="distinct")
    with pytest.raises(ValueError, match="nothing to stream"):
        engine.build_streaming(population, model, algorithms.fedavg(optax.sgd(0.1)),
                               LocalSchedule(local_steps=1, batch_size=4), cohort_size=4)


def test_cli_runs_a_hundred_million_procedural_clients(tmp_path):
    out = tmp_path / "run"
    rc = main(["run", "--population", "procedural", "--num-clients", "100000000", "--cohort-size", "4",
               "--rounds", "2", "--eval-every", "2", "--local-steps", "2", "--devices", "2", "--test-clients", "4",
               "--max-client-size", "64", "--out", str(out), "--no-progress"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_clients"] == 100_000_000 and summary["population_kind"] == "procedural"
    assert summary["num_examples"] is None and summary["rounds"] == 2


@pytest.mark.parametrize("argv,message", [
    (["--population", "procedural", "--dataset", "synthetic-regression"], "no procedural generator"),
    (["--population", "procedural", "--dataset", "gaussian-mixture"], "needs --task classification"),
    (["--population", "procedural", "--stream"], "does not support --stream"),
    (["--population", "procedural", "--sampling", "poisson"], "--sampling poisson"),
    (["--population", "procedural", "--min-client-size", "600"], "row cap 512"),
    # 100 test clients padded to 10^6 rows: a 100 GB allocation (traceback), 10^9 aborted the process
    (["--population", "procedural", "--max-client-size", "1000000"],
     "Dominant term: the test clients' rows (100 clients x 1,000,000 rows x 61 values"),
    (["--population", "procedural", "--max-client-size", "1000000000"], "a smaller --max-client-size"),
])
def test_cli_refuses_what_procedural_cannot_take(tmp_path, capsys, monkeypatch, argv, message):
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message)


@pytest.mark.parametrize("make, message", [
    (lambda: procedural_synthetic(1, 1, True, 0), "num_clients must be an integer >= 1, got True"),
    (lambda: procedural_synthetic(1, 1, 10.7, 0), "num_clients must be an integer >= 1, got 10.7"),
    (lambda: procedural_synthetic(1, 1, "10", 0), "num_clients must be an integer"),
    (lambda: procedural_synthetic(1, 1, None, 0), "num_clients must be an integer"),
    (lambda: procedural_synthetic(1, 1, 10, 1.5), "seed must be an integer >= 0, got 1.5"),
    (lambda: procedural_synthetic(1, 1, 10, 2**40), "seed must be at most 4294967295"),
    (lambda: procedural_mixture(3, 10, 2**40), "seed must be an integer in"),
    (lambda: procedural_synthetic(1, 1, 10, 0, num_features=2.5), "num_features must be a positive integer"),
    (lambda: procedural_synthetic(1, 1, 10, 0, num_features=0), "num_features must be a positive integer"),
    (lambda: procedural_mixture(3, 10, 0, num_features=-3), "num_features must be a positive integer"),
    (lambda: procedural_synthetic(1, 1, 10, 0, max_count=100.5), "max_count must be a positive integer"),
    (lambda: procedural_synthetic(1, 1, 10, 0, test_clients=2.5), "test_clients must be an integer"),
    (lambda: procedural_synthetic(1, 1, 10, 0, size_mean=float("nan")), "size_mean must be a finite number"),
    (lambda: procedural_mixture(3, 10, 0, size_sigma=float("nan")), "size_sigma must be a finite number >= 0"),
    (lambda: procedural_mixture(3, 10, 0, size_sigma=-5), "size_sigma must be a finite number >= 0"),
    (lambda: procedural_synthetic(1, 1, 10, 0, max_count=10**9), "must be below 2\\^31; lower max_count"),
])
def test_bad_procedural_arguments_are_refused_as_given_not_coerced(make, message):
    """int() used to take 10.7 clients as 10, True as 1 and a seed of 1.5 as 1; max_count 10^9 aborted the process
    at the first draw; a NaN size_sigma gave every client max_count rows."""
    with pytest.raises(ValueError, match=message):
        make()


def test_numpy_integers_are_taken_as_python_integers():
    pop = procedural_synthetic(1, 1, np.int64(10), np.int32(3), test_clients=np.int16(2))
    assert (pop.num_clients, pop.seed, pop.test_clients) == (10, 3, 2)
    assert all(type(v) is int for v in (pop.num_clients, pop.seed, pop.test_clients))


def test_the_memory_guards_test_chunk_is_the_generators():
    from jaxqfl.data import procedural
    from jaxqfl.experiment import memory_guard

    assert memory_guard.TEST_CHUNK == procedural.TEST_CHUNK
