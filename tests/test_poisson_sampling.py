"""Poisson cohort sampling: join frequencies, the masked mean, invariance, overflow reports, DP accounting."""
import json
import math

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from jaxqfl import aggregate, algorithms, engine, keys, models
from jaxqfl.engine.sampling import default_max_cohort, overflow_probability, sample_poisson_cohort
from populations import classification_population, regression_population


def test_each_client_joins_with_probability_q():
    """Over R rounds each client's join count is Binomial(R, q), independently: chi-square over the clients
    of the standardised counts, and every round's true joined count agrees with its slots."""
    C, q, M_max, R = 40, 0.15, 40, 3000
    run_key = jax.random.key(11)

    @jax.jit
    def draws(r):
        return sample_poisson_cohort(keys.round_key(run_key, r), C, q, M_max)

    ids, joined, num_joined = jax.device_get(jax.vmap(draws)(jnp.arange(R)))
    counts = np.zeros(C)
    for i, j in zip(ids, joined):
        assert len(set(i.tolist())) == M_max  # distinct clients in the slots
        assert not np.any(j[1:] & ~j[:-1])  # joiners fill a prefix of the slots
        np.add.at(counts, i[j], 1)
    np.testing.assert_array_equal(joined.sum(1), num_joined)  # M_max = C: no overflow, every joiner kept
    chi2 = np.sum((counts - R * q) ** 2 / (R * q * (1 - q)))
    assert stats.chi2.sf(chi2, C) > 1e-4, (chi2, counts)
    # the cohort size is Binomial(C, q) (mean and variance within sampling error)
    assert abs(num_joined.mean() - C * q) < 5 * math.sqrt(C * q * (1 - q) / R)
    assert num_joined.var() == pytest.approx(C * q * (1 - q), rel=0.15)


def test_default_max_cohort_is_the_binomial_tail_bound():
    C, q = 1000, 0.1
    m = default_max_cohort(C, q)
    assert stats.binom.sf(m, C, q) <= 1e-9 < stats.binom.sf(m - 1, C, q)
    assert overflow_probability(C, q, m) <= 1e-9
    assert default_max_cohort(10, 1.0) == 10


SIZES = [5, 9, 7, 12, 6, 8, 10, 4, 11, 7, 9, 5]


def _wb(params):
    d = params["Dense_0"]
    return np.asarray(d["kernel"], np.float64)[:, 0], np.asarray(d["bias"], np.float64)


def test_poisson_round_equals_numpy_masked_mean():
    """FedSGD (one full-batch step, server SGD lr 1): the new model is the old one plus the example-weighted
    NumPy mean of the JOINED clients' deltas; the joined set is the clients with u_i < q for the round's
    cohort uniforms; masked slots report no bits and cohort id -1."""
    pop = regression_population(SIZES, num_features=5, seed=3)
    C, expected, M_max, lr = len(SIZES), 4, 8, 0.05
    sim = engine.build(pop, models.linear_regression(1),
                       algorithms.fedavg(optax.sgd(lr), algorithms.server_optimizer("sgd", 1.0)),
                       engine.LocalSchedule(local_steps=1, batch_size=None), cohort_size=expected,
                       num_devices=2, chunk_size=2, sampling="poisson", max_cohort=M_max)
    state = sim.init(4)
    for r in range(3):
        w, b = _wb(state.params)
        state, metrics = sim.run_block(state, 1)
        m = jax.tree.map(lambda a: np.asarray(a)[0], jax.device_get(metrics))
        u = np.asarray(jax.random.uniform(keys.purpose_key(keys.round_key(jax.random.key(4), r), keys.COHORT), (C,)))
        joined = np.flatnonzero(u < expected / C)
        assert 0 < len(joined) <= M_max
        assert sorted(m.cohort[m.cohort >= 0].tolist()) == joined.tolist()
        assert int(m.joined) == len(joined) and int(m.overflow) == 0
        assert np.all(m.uplink_bits[m.cohort < 0] == 0) and np.all(m.uplink_bits[m.cohort >= 0] > 0)
        deltas_w, deltas_b = [], []
        for i in joined:
            x, y = (a.astype(np.float64) for a in pop.client(int(i)))
            res = x @ w + b - y
            deltas_w.append(-lr * 2 * x.T @ res / len(y))
            deltas_b.append(-lr * 2 * res.mean())
        weights = np.asarray(SIZES, np.float64)[joined]
        ref_w = w + np.average(np.stack(deltas_w), axis=0, weights=weights)
        ref_b = b + np.average(np.stack(deltas_b), axis=0, weights=weights)
        got_w, got_b = _wb(state.params)
        np.testing.assert_allclose(got_w, ref_w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got_b, ref_b, rtol=1e-5, atol=1e-6)
        assert float(m.total_weight) == pytest.approx(weights.sum())


@pytest.fixture(scope="module")
def population():
    rng = np.random.default_rng(5)
    return classification_population(rng.integers(2, 12, size=24).tolist(), num_features=5, num_classes=3, seed=5)


def _run(population, *, num_devices, chunk_size, max_cohort=12, aggregator=None, rounds=3, cohort=6):
    sim = engine.build(population, models.logistic_regression(num_outputs=3), algorithms.fedavg(optax.sgd(0.1)),
                       engine.LocalSchedule(local_steps=2, batch_size=3), cohort_size=cohort,
                       num_devices=num_devices, chunk_size=chunk_size, aggregator=aggregator,
                       sampling="poisson", max_cohort=max_cohort)
    state, metrics = sim.run_block(sim.init(2), rounds)
    return jax.device_get(state), jax.device_get(metrics)


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow
def test_poisson_round_invariant_to_devices_and_chunks(population):
    """Same keys, same cohort, same model on 1, 2, 4 and 8 devices and chunks of 1, 2, 3 and 12 (with DP noise)."""
    agg = lambda: aggregate.dp_mean(clip=0.5, noise_multiplier=0.7, denominator=6.0)
    ref_state, ref_m = _run(population, num_devices=1, chunk_size=12, aggregator=agg())
    assert len(set(ref_m.joined.tolist())) > 1  # the cohort size varies from round to round
    for D, chunk in ((2, 3), (4, 1), (8, 2)):
        s, m = _run(population, num_devices=D, chunk_size=chunk, aggregator=agg())
        np.testing.assert_array_equal(m.cohort, ref_m.cohort)
        np.testing.assert_array_equal(m.uplink_bits, ref_m.uplink_bits)
        assert _max_diff(s.params, ref_state.params) < 1e-5, (D, chunk)


def test_overflow_is_reported_never_silent(population):
    """With 3 slots and 6 expected joiners most rounds overflow: RoundMetrics.joined is the true count,
    overflow = joined - 3, only 3 clients take part (weights, bits), and the server metrics carry it."""
    state, m = _run(population, num_devices=1, chunk_size=3, max_cohort=3, rounds=6)
    over = np.maximum(m.joined - 3, 0)
    assert over.sum() > 0
    np.testing.assert_array_equal(m.overflow, over)
    np.testing.assert_array_equal(m.server["cohort_overflow"], over)
    np.testing.assert_array_equal(m.server["cohort_joined"], m.joined)
    np.testing.assert_array_equal((m.cohort >= 0).sum(1), np.minimum(m.joined, 3))


def test_poisson_refused_where_unsupported(population):
    build = lambda **kw: engine.build(population, models.mlp(hidden=(6,), num_outputs=3),
                                      algorithms.fedavg(optax.sgd(0.1)), engine.LocalSchedule(local_steps=1),
                                      cohort_size=4, num_devices=1, **kw)
    with pytest.raises(ValueError, match="host"):
        build(sampling="poisson", client_state="host")
    with pytest.raises(ValueError, match="max_cohort"):
        build(sampling="poisson", max_cohort=0)
    with pytest.raises(ValueError, match="sampling"):
        build(sampling="bernoulli")


def test_cli_poisson_dp_epsilon_matches_accounting_and_reports_overflow(tmp_path, capsys):
    """DP-FedAvg under Poisson sampling from the CLI: dp_epsilon equals dp-accounting on
    PoissonSampledDpEvent(q, Gaussian(z)) composed over the rounds (PLD, add/remove); the summary
    names the sampling, and a tiny --max-cohort's overflowing rounds are counted and warned about."""
    from jaxqfl.cli.main import main

    out = tmp_path / "run"
    rc = main(["run", "--dataset", "synthetic", "--num-clients", "60", "--cohort-size", "6", "--rounds", "4",
               "--local-steps", "2", "--eval-every", "2", "--no-progress", "--out", str(out), "--devices", "2",
               "--sampling", "poisson", "--max-cohort", "4", "--dp-clip", "1.0", "--dp-noise", "1.1",
               "--dp-delta", "1e-5"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    acc = dp_accounting.pld.PLDAccountant(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    acc.compose(dp_accounting.PoissonSampledDpEvent(6 / 60, dp_accounting.GaussianDpEvent(1.1)), 4)
    assert summary["dp_epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert summary["sampling"] == "poisson" and summary["sampling_rate"] == pytest.approx(0.1)
    assert summary["max_cohort"] == 4 and "PoissonSampled" in summary["dp_event"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_round = [x for r in records for x in r["server_cohort_overflow_per_round"]]
    assert summary["overflow_rounds"] == sum(x > 0 for x in per_round)
    assert summary["overflow_rounds"] > 0  # P(Binomial(60, 0.1) > 4) ~ 0.28 a round; this seed has some
    assert "cohort overflow" in capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--max-cohort", "5"], "--max-cohort applies to --sampling poisson"),
    (["--sampling", "poisson", "--stream"], "--stream"),
    (["--sampling", "poisson", "--client-state", "host"], "--client-state host"),
    (["--sampling", "poisson", "--seeds", "0-1"], "--seeds"),
    (["--sampling", "poisson", "--max-cohort", "500"], "exceeds --num-clients"),
])
def test_cli_refuses_bad_sampling_flags_before_running(tmp_path, capsys, flags, message):
    from jaxqfl.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["run", "--dataset", "synthetic", "--num-clients", "60", "--cohort-size", "6", "--rounds", "1",
              "--no-progress", "--out", str(tmp_path / "r"), *flags])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
