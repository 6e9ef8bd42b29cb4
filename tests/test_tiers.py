"""Client tiers (issue 26): per-client QAT presets and uplink codecs in one program; tier-aware weights."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxqfl import aggregate, algorithms, compress, engine, models
from jaxqfl.aggregate.base import CohortInfo, CohortStatistics
from jaxqfl.algorithms.base import ClientInfo
from populations import classification_population

SCHEDULE = engine.LocalSchedule(local_steps=2, batch_size=3)
C = 12


@pytest.fixture(scope="module")
def population():
    rng = np.random.default_rng(5)
    return classification_population(rng.integers(3, 12, size=C).tolist(), num_features=5, num_classes=3, seed=5)


def _model(preset):
    return models.mlp(hidden=(6,), num_outputs=3, policy=None if preset == "none" else preset)


def _run(population, model, rounds=3, **kw):
    sim = engine.build(population, model, algorithms.fedavg(optax.sgd(0.2)), SCHEDULE, cohort_size=4,
                       num_devices=2, chunk_size=2, **kw)
    state, metrics = jax.device_get(sim.run_block(sim.init(0), rounds))
    return sim, state, metrics


def test_identical_tiers_equal_the_untiered_run(population):
    m, codec = _model("w4a8"), compress.from_spec("qsgd:4")
    _, plain, pm = _run(population, m, uplink=codec)
    tiers = engine.Tiers(engine.draw_tiers([0.25, 0.75], C, 3), (m, m), (codec, compress.from_spec("qsgd:4")))
    sim, tiered, tm = _run(population, m, tiers=tiers)
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(tiered.params), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(pm.uplink_bits, tm.uplink_bits)
    ev = sim.evaluate(tiered.params)
    assert ev["tier0_accuracy"] == ev["tier1_accuracy"] == ev["accuracy"]


def test_each_client_sends_its_tiers_exact_bits_and_trains_its_tiers_model(population):
    specs = ["qsgd:2", "uniform:8", "none"]
    presets = ["w4a8", "full", "none"]
    of_client = engine.draw_tiers([0.3, 0.5, 0.2], C, 1)
    codecs = tuple(None if s == "none" else compress.from_spec(s) for s in specs)
    tiers = engine.Tiers(of_client, tuple(_model(p) for p in presets), codecs)
    sim, state, metrics = _run(population, _model("none"), rounds=4, tiers=tiers)
    params = jax.eval_shape(_model("none").init, jax.random.key(0), jnp.zeros((1, 5)))
    exact = [32 * sum(math.prod(a.shape) for a in jax.tree.leaves(params)) if c is None
             else compress.bits_per_message(c, params) for c in codecs]
    tier_of_slot = of_client[np.asarray(metrics.cohort)]
    np.testing.assert_array_equal(metrics.uplink_bits, np.asarray(exact)[tier_of_slot])
    # the per-tier totals the driver keeps equal a count over the drawn cohorts (the same seed: the same cohorts)
    result = engine.run(sim, rounds=4, eval_every=4, seed=0)
    cohorts = np.asarray(metrics.cohort)
    assert result.tier_clients == [int(np.sum(of_client[cohorts] == t)) for t in range(3)]
    assert result.tier_uplink_bits == [int(np.sum(np.asarray(metrics.uplink_bits)[of_client[cohorts] == t]))
                                       for t in range(3)]
    assert sum(result.tier_uplink_bits) == result.uplink_bits_total
    # a 4-bit tier's model is not the float model: the per-tier evaluations differ
    ev = sim.evaluate(result.state.params)
    assert ev["tier2_loss"] == ev["loss"] and ev["tier0_loss"] != ev["loss"]


def test_tier_draws_are_exact_counts_a_function_of_the_seed():
    assert engine.tiers.tier_counts([0.3, 0.5, 0.2], 7) == [2, 4, 1]  # 2.1, 3.5, 1.4: one left, to the 0.5 remainder
    a = engine.draw_tiers([0.3, 0.5, 0.2], 1000, 4)
    assert np.bincount(a).tolist() == [300, 500, 200]
    np.testing.assert_array_equal(a, engine.draw_tiers([0.3, 0.5, 0.2], 1000, 4))
    assert not np.array_equal(a, engine.draw_tiers([0.3, 0.5, 0.2], 1000, 5))
    for bad in ([0.5, 0.6], [0.0, 1.0], [1.2, -0.2]):
        with pytest.raises(ValueError, match="tier fractions"):
            engine.draw_tiers(bad, 10, 0)


def test_precision_factors_are_one_over_one_plus_the_papers_variance_bound():
    q = {"qsgd:4:512": min(512 / 16, math.sqrt(512) / 4),  # Alistarh et al. 2017, Lemma 3.1
         "uniform:8:256": 256 / (2 * 255**2),  # Suresh et al. 2017: d step^2 / 4, (hi - lo)^2 <= 2 ||v||^2
         "natural": 1 / 8, "randk:0.25": 3.0, "none": 0.0, "hadamard+qsgd:2:64": min(64 / 4, 8 / 2)}
    got = aggregate.precision_factors(list(q))
    np.testing.assert_allclose(got, [1 / (1 + v) for v in q.values()], rtol=1e-12)
    assert aggregate.precision_factors(["qsgd:4:none"], largest_tensor=100) == [1 / (1 + min(100 / 16, 10 / 4))]
    for biased in ("topk:0.1", "sign", "qsgd:4+ef", "randk:0.1:unbiased=false"):
        with pytest.raises(ValueError, match=biased.replace("+", "\\+")):
            aggregate.precision_factors([biased])


def test_tier_weighted_mean_equals_the_reweighted_average():
    """Sum_i f_t(i) n_i u_i / Sum_i f_t(i) n_i, against NumPy; equal factors give the plain mean."""
    rng = np.random.default_rng(0)
    updates, counts = rng.standard_normal((5, 3)).astype(np.float32), np.array([3.0, 1.0, 4.0, 1.0, 5.0])
    of_client, factors = np.array([0, 1, 1, 0, 2]), [1.0, 0.25, 2.0]

    def aggregate_with(agg):
        summed = None
        for i in range(5):
            info = ClientInfo(jnp.int32(i), jnp.int32(counts[i]), jnp.int32(1), jax.random.key(i), jnp.int32(0))
            u, w, cs, _ = agg.prepare(jnp.asarray(updates[i]), jnp.float32(counts[i]), (), (), CohortStatistics(),
                                      info)
            s, _, _ = agg.client(u, w, cs, (), CohortStatistics(), info)
            summed = s if summed is None else jax.tree.map(jnp.add, summed, s)
        cohort = CohortInfo(jnp.arange(5), jnp.ones(5, bool), jax.random.key(0), jnp.int32(0))
        return np.asarray(agg.server(summed, (), CohortStatistics(), cohort)[0])

    w = np.asarray(factors)[of_client] * counts
    np.testing.assert_allclose(aggregate_with(aggregate.tier_weighted(aggregate.mean(), of_client, factors)),
                               (w[:, None] * updates).sum(0) / w.sum(), rtol=1e-6)
    np.testing.assert_allclose(aggregate_with(aggregate.tier_weighted(aggregate.mean(), of_client, [2.0] * 3)),
                               aggregate_with(aggregate.mean()), rtol=1e-6)


def test_tiers_that_cannot_share_a_program_are_refused(population):
    m = _model("none")
    with pytest.raises(ValueError, match="other parameters"):
        _run(population, m, tiers=engine.Tiers(np.zeros(C, int), (_model("lsq4"),), (None,)))
    with pytest.raises(ValueError, match="majority vote"):
        _run(population, m, tiers=engine.Tiers(np.zeros(C, int), (m,), (compress.from_spec("sign"),)))
    with pytest.raises(ValueError, match="pass uplink=None"):
        _run(population, m, uplink=compress.from_spec("qsgd:4"), tiers=engine.Tiers(np.zeros(C, int), (m,), (None,)))
    with pytest.raises(ValueError, match="holds tier 2"):
        _run(population, m, tiers=engine.Tiers(np.full(C, 2), (m, m), (None, None)))
