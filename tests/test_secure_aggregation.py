"""Secure aggregation (SecAgg / SecAgg+) equals the plain integer sum of the survivors, bit for bit."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats as scipy_stats

from jaxqfl import aggregate, algorithms, compress, engine, keys, models
from jaxqfl.aggregate import secagg_graph as secure
from jaxqfl.aggregate import shamir
from jaxqfl.aggregate.base import CohortStatistics
from jaxqfl.aggregate.secure import to_signed
from jaxqfl.algorithms.base import ClientInfo
from aggregator_rounds import aggregator_round
from populations import classification_population

C, M = 30, 12
CODEC = compress.from_spec("qsgd:8")


def test_shamir_reconstructs_from_any_t_shares_only():
    secret, poly = jnp.array([123, 32000]), jnp.array([[5, 7], [11, 13], [17, 19]])  # t = 4
    xs = jnp.array([3, 9, 12, 20, 31])
    shares = shamir.evaluate_shares(secret, poly, xs)
    np.testing.assert_array_equal(shamir.reconstruct(shares[:4], xs[:4]), secret)
    np.testing.assert_array_equal(shamir.reconstruct(shares[1:], xs[1:]), secret)
    assert not np.array_equal(shamir.reconstruct(shares[:3], xs[:3]), secret)  # t - 1 shares: wrong
    a, b = jnp.array([77, 1234]), jnp.array([999, 31])
    np.testing.assert_array_equal(shamir.agree(a, shamir.public_key(b)), shamir.agree(b, shamir.public_key(a)))
    np.testing.assert_array_equal(shamir.public_key(a), [pow(2, 77, shamir.PRIME), pow(2, 1234, shamir.PRIME)])


def _cohort(seed=0):
    rng = np.random.default_rng(seed)
    ids = jnp.asarray(rng.choice(C, M, replace=False), jnp.int32)
    updates = {"w": jnp.asarray(rng.normal(size=(M, 5, 3)), jnp.float32),
               "b": jnp.asarray(rng.normal(size=(M, 4)), jnp.float32)}
    return ids, updates


def _round(agg, ids, updates, rkey):
    return jax.jit(_round_impl, static_argnums=0)(agg, ids, updates, rkey)


def _round_impl(agg, ids, updates, rkey):
    """One round by hand: pre-pass (max over the cohort), vmapped clients, sum, server."""
    out, new_state, sm, m, stats, infos, reduced = aggregator_round(agg, ids, updates, rkey)
    # reference: the plain integer sum of the survivors' codes on the same scale with the same keys
    isum, scale = CODEC.integer_sum, stats.maxes["scale"]
    codes = jax.vmap(lambda u, inf: isum.quantize(u, scale, keys.purpose_key(inf.key, keys.UPLINK)))(updates, infos)
    alive = (1 - m["secagg_dropped"]).astype(jnp.int32)
    code_sum = jax.tree.map(lambda c: jnp.tensordot(alive, c.astype(jnp.int32), 1), codes)
    W = jnp.sum(alive)
    ref = jax.tree.map(lambda s: s / jnp.maximum(W, 1), isum.dequantize_sum(code_sum, scale, W))
    return out, ref, sm, m, reduced, code_sum, new_state


@pytest.mark.parametrize("protocol,dropout", [
    ("secagg+", 0.0), ("secagg+", 0.1), ("secagg+", 0.3), pytest.param("secagg", 0.3, marks=pytest.mark.slow)])
def test_secure_sum_equals_plain_integer_sum_with_dropouts(protocol, dropout):
    ids, updates = _cohort()
    bits = aggregate.secure.modulus_bits(M, CODEC.integer_sum.max_abs_code)
    agg = aggregate.secure_sum(CODEC, num_clients=C, cohort_size=M, protocol=protocol, neighbours=8,
                               threshold=0.3, dropout=dropout)
    dropped = []
    for r in range(3):
        out, ref, sm, m, reduced, code_sum, _ = _round(agg, ids, updates, jax.random.key(10 + r))
        assert float(sm["secagg_failed"]) == 0.0
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
            np.testing.assert_array_equal(a, b)
        # mutation check: the masked sum decoded WITHOUT removing the masks is wrong
        raw = jax.tree.map(lambda w: to_signed(w, bits), reduced["masked"])
        assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(raw), jax.tree.leaves(code_sum)))
        dropped.append(float(np.sum(m["secagg_dropped"])))
    if dropout == 0.0:
        assert sum(dropped) == 0
    else:
        assert sum(dropped) > 0  # dropouts really happened (3 rounds x 12 clients)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_weighted_secure_sum_equals_the_weighted_integer_domain_mean(dropout):
    """Weights 1..40: the mask carries w_i c_i and w_i; the server's mean is sum_surv w_i c_i decoded / sum_surv w_i,
    equal bit for bit to the reference computed from the survivors' codes (and, without dropouts, to
    ``integer_mean``, the weighted integer-domain aggregator)."""
    ids, updates = _cohort(4)
    weights = jnp.asarray(np.random.default_rng(5).integers(1, 41, size=M), jnp.float32)
    agg = aggregate.secure_sum(CODEC, num_clients=C, cohort_size=M, protocol="secagg+", neighbours=8,
                               threshold=0.3, dropout=dropout, max_weight=40)
    rkey = jax.random.key(17)
    out, _, sm, m, stats, infos, reduced = jax.jit(aggregator_round, static_argnums=0)(agg, ids, updates, rkey,
                                                                                       weights)
    isum, scale = CODEC.integer_sum, stats.maxes["scale"]
    codes = jax.vmap(lambda u, inf: isum.quantize(u, scale, keys.purpose_key(inf.key, keys.UPLINK)))(updates, infos)
    alive = (1 - m["secagg_dropped"]).astype(jnp.int32) * weights.astype(jnp.int32)  # w_i for survivors, else 0
    code_sum = jax.tree.map(lambda c: jnp.tensordot(alive, c.astype(jnp.int32), 1), codes)
    W = jnp.sum(alive)
    ref = jax.tree.map(lambda x: x / jnp.maximum(W, 1), isum.dequantize_sum(code_sum, scale, W))
    assert float(sm["secagg_failed"]) == 0.0 and float(sm["secagg_weight_sum"]) == float(W)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(a, b)
    if dropout == 0.0:
        plain = aggregator_round(aggregate.integer_mean(CODEC), ids, updates, rkey, weights)[0]
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(plain)):
            np.testing.assert_array_equal(a, b)
    else:
        assert float(np.sum(m["secagg_dropped"])) > 0
    # the weight travels masked: the raw sum of its words is not the weight sum
    raw = to_signed(reduced["masked"]["weight"], aggregate.secure.modulus_bits(M * 40, isum.max_abs_code))
    assert int(raw[0]) != int(W)


def test_a_weight_above_max_weight_fails_the_round_instead_of_wrapping():
    ids, updates = _cohort(4)
    weights = jnp.ones(M, jnp.float32).at[3].set(41.0)
    agg = aggregate.secure_sum(CODEC, num_clients=C, cohort_size=M, protocol="secagg+", neighbours=8, max_weight=40)
    out, state, sm, *_ = jax.jit(aggregator_round, static_argnums=0)(agg, ids, updates, jax.random.key(2), weights)
    assert float(sm["secagg_failed"]) == 1.0 and float(sm["secagg_weight_overflow"]) == 1.0
    assert int(state.failed_rounds) == 1 and all(np.all(np.asarray(a) == 0) for a in jax.tree.leaves(out))
    with pytest.raises(ValueError, match="max_weight must be a positive integer"):
        aggregate.secure_sum(CODEC, num_clients=C, cohort_size=M, max_weight=0)
    with pytest.raises(ValueError, match="weighted up to 100000000 needs"):
        aggregate.secure_sum(CODEC, num_clients=C, cohort_size=M, max_weight=10**8)


def test_below_threshold_fails_loudly():
    """SecAgg+ with k = 4, t = 4: any dropout among a member's holders fails the round."""
    ids, updates = _cohort()
    agg = aggregate.secure_sum(CODEC, num_clients=C, cohort_size=M, protocol="secagg+", neighbours=4,
                               threshold=1.0, dropout=0.3)
    out, _, sm, m, *_, state = _round(agg, ids, updates, jax.random.key(3))
    assert float(np.sum(m["secagg_dropped"])) > 0
    assert float(sm["secagg_failed"]) == 1.0 and int(state.failed_rounds) == 1
    assert all(np.all(np.asarray(a) == 0) for a in jax.tree.leaves(out))  # no update from a failed round


def test_masked_codes_are_uniform():
    """One client's masked words, over many rounds, are uniform mod 2^b (chi-square)."""
    ids, updates = _cohort(1)
    agg = aggregate.secure_sum(CODEC, num_clients=C, cohort_size=M, protocol="secagg+", neighbours=4)

    def words(r):
        rkey = keys.round_key(jax.random.key(0), r)
        infos = jax.vmap(lambda i: ClientInfo(i, jnp.int32(5), jnp.int32(1), keys.client_key(rkey, i),
                                              jnp.int32(0)))(ids)
        st = jax.vmap(lambda u, inf: agg.statistics(u, 1.0, (), None, inf))(updates, infos)
        stats = CohortStatistics(maxes=jax.tree.map(lambda a: a.max(0), st.maxes))
        first = jax.tree.map(lambda a: a[0], (updates, infos))
        summand = agg.client(first[0], jnp.float32(1), (), agg.init(None), stats, first[1])[0]
        return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(summand["masked"])])

    w = np.asarray(jax.jit(jax.vmap(words))(jnp.arange(400))).ravel()
    bits = aggregate.secure.modulus_bits(M, CODEC.integer_sum.max_abs_code)
    counts = np.bincount(w, minlength=2 ** bits)
    assert counts.size == 2 ** bits  # words stay below 2^b
    assert scipy_stats.chisquare(counts).pvalue > 1e-3


@pytest.fixture(scope="module")
def population():
    rng = np.random.default_rng(3)
    return classification_population(rng.integers(2, 15, size=21).tolist(), num_features=5, num_classes=3, seed=3)


def _run(population, aggregator, num_devices, chunk_size, weighting="uniform"):
    alg = algorithms.fedavg(optax.sgd(0.1), weighting=weighting)
    sim = engine.build(population, models.mlp(hidden=(6,), num_outputs=3), alg,
                       engine.LocalSchedule(local_steps=2, batch_size=3), cohort_size=7, num_devices=num_devices,
                       chunk_size=chunk_size, aggregator=aggregator, uplink=CODEC)
    state, metrics = sim.run_block(sim.init(5), 3)
    return jax.device_get(state), jax.device_get(metrics)


def _secure(dropout):
    return aggregate.secure_sum(CODEC, num_clients=21, cohort_size=7, protocol="secagg+", neighbours=4,
                                threshold=0.25, dropout=dropout)


@pytest.mark.slow
def test_engine_secure_sum_equals_integer_mean(population):
    s_sec, m_sec = _run(population, _secure(0.0), 2, 2)
    s_int, _ = _run(population, aggregate.integer_mean(CODEC), 2, 2)
    for a, b in zip(jax.tree.leaves(s_sec.params), jax.tree.leaves(s_int.params)):
        np.testing.assert_array_equal(a, b)
    assert np.all(m_sec.server["secagg_failed"] == 0)


@pytest.mark.slow  # CI time: 20-32 s; the weighted sums stay checked by default at the protocol level (0 and 30% dropouts)
def test_engine_weighted_secure_sum_equals_the_weighted_integer_mean(population):
    """FedAvg weighting clients by their example counts: the secure sum honours the weights (Issue 22)."""
    largest = int(population.counts.max())
    secure = aggregate.secure_sum(CODEC, num_clients=21, cohort_size=7, protocol="secagg+", neighbours=4,
                                  threshold=0.25, max_weight=largest)
    s_sec, m_sec = _run(population, secure, 2, 2, weighting="examples")
    s_int, _ = _run(population, aggregate.integer_mean(CODEC), 2, 2, weighting="examples")
    s_uni, _ = _run(population, _secure(0.0), 2, 2, weighting="uniform")
    for a, b in zip(jax.tree.leaves(s_sec.params), jax.tree.leaves(s_int.params)):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(s_sec.params), jax.tree.leaves(s_uni.params)))
    assert np.all(m_sec.server["secagg_failed"] == 0) and np.all(m_sec.server["secagg_weight_sum"] > 7)


@pytest.mark.parametrize("devices", [pytest.param(2, marks=pytest.mark.slow), 4, pytest.param(8, marks=pytest.mark.slow)])
def test_engine_secure_sum_device_and_chunk_invariant(population, devices):
    s1, m1 = _run(population, _secure(0.3), 1, 7)
    sd, md = _run(population, _secure(0.3), devices, 1)
    # local training under a vmap of 7 vs one client at a time may differ in the last float bit, which
    # can move the shared scale by an ulp; the integer sum itself is exact (tests above)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(sd.params)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(m1.server["secagg_survivors"], md.server["secagg_survivors"])
    np.testing.assert_array_equal(m1.uplink_bits, md.uplink_bits)
    assert np.sum(m1.clients["secagg_dropped"]) > 0 and np.all(m1.server["secagg_failed"] == 0)


def _binomial_tail(k, t, survive):
    """P(Bin(k, survive) <= t - 1), summed term by term (independent of scipy)."""
    return sum(math.comb(k, j) * survive ** j * (1 - survive) ** (k - j) for j in range(t))


@pytest.mark.parametrize("M,p", [(100, 0.1), (100, 0.3), (1000, 0.1), (1000, 0.3), (50, 0.0)])
def test_chosen_degree_meets_the_failure_bound_and_is_the_smallest(M, p):
    target = 1e-6
    k = secure.choose_neighbours(M, p)
    floor = secure.default_neighbours(M)
    direct = lambda k: M * _binomial_tail(k, k // 2 + 1, 1 - p)  # t = floor(k/2) + 1
    assert k >= floor
    if k < M - 1:
        assert k % 2 == 0 and direct(k) <= target
        assert math.isclose(secure.failure_bound(M, k, p), direct(k), rel_tol=1e-6, abs_tol=1e-300)
        smaller = [j for j in range(floor + floor % 2, k, 2)]
        assert all(direct(j) > target for j in smaller)  # nothing smaller meets the bound
    else:  # fall back to all pairs: no even k <= M - 2 meets the bound
        assert all(direct(j) > target for j in range(floor + floor % 2, M - 1, 2))
    assert secure.shamir_threshold(k) == k // 2 + 1


def _big_round(neighbours, M, dropout, rkey):
    rng = np.random.default_rng(7)
    ids = jnp.asarray(rng.choice(2 * M, M, replace=False), jnp.int32)
    updates = {"w": jnp.asarray(rng.normal(size=(M, 6)), jnp.float32)}
    agg = aggregate.secure_sum(CODEC, num_clients=2 * M, cohort_size=M, protocol="secagg+",
                               neighbours=neighbours, dropout=dropout)
    return _round(agg, ids, updates, rkey)[:3]


@pytest.mark.parametrize("dropout", [0.1, 0.3])
def test_degree_from_dropout_completes_the_round_exactly(dropout):
    """Cohort 100: the chosen k (34 at 10%, all pairs at 30%) completes the round, equal to the plain sum;
    at 30% the old k = 2 ceil(log2 M) = 14 fails the same round (with 10% it fails ~2% of rounds only)."""
    M, rkey = 100, jax.random.key(21)
    if dropout == 0.3:
        assert float(_big_round(secure.default_neighbours(M), M, dropout, rkey)[2]["secagg_failed"]) == 1.0
    assert secure.choose_neighbours(M, dropout) == {0.1: 34, 0.3: M - 1}[dropout]
    out, ref, sm = _big_round(None, M, dropout, rkey)  # k = choose_neighbours(100, dropout)
    assert float(sm["secagg_failed"]) == 0.0 and float(sm["secagg_survivors"]) < M
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(a, b)


_CLI_BASE = ["run", "--num-clients", "40", "--cohort-size", "20", "--rounds", "2", "--eval-every", "2",
             "--local-steps", "1", "--uplink", "qsgd:8", "--secure-aggregation", "secagg+", "--dropout", "0.1",
             "--no-progress"]


def test_cli_rejects_an_odd_degree(tmp_path, capsys):
    from jaxqfl.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(_CLI_BASE + ["--secagg-degree", "7", "--out", str(tmp_path / "bad")])
    assert e.value.code == 2 and "--secagg-degree must be an even number" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_reports_the_degree(tmp_path, capsys):
    import json

    from jaxqfl.cli.main import main

    assert main(_CLI_BASE + ["--secagg-degree", "12", "--out", str(tmp_path / "k12")]) == 0
    summary = json.loads((tmp_path / "k12" / "summary.json").read_text())
    assert summary["secagg_neighbours"] == 12
    assert summary["secagg_failure_bound"] == pytest.approx(secure.failure_bound(20, 12, 0.1))
    assert "12 neighbours per client" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_secure_aggregation_keeps_an_example_weighted_run_unchanged(tmp_path):
    """``--secure-aggregation`` without dropouts gives the run ``--integer-aggregation`` gives (the same
    example-weighted mean on the same integer grid): final parameters equal bit for bit."""
    import json

    from jaxqfl.cli.main import main

    base = ["run", "--num-clients", "24", "--cohort-size", "6", "--rounds", "2", "--eval-every", "2",
            "--local-steps", "2", "--uplink", "qsgd:8", "--devices", "2", "--chunk-size", "3", "--no-progress"]
    assert main(base + ["--secure-aggregation", "secagg+", "--out", str(tmp_path / "sec")]) == 0
    assert main(base + ["--integer-aggregation", "--out", str(tmp_path / "int")]) == 0
    assert (tmp_path / "sec" / "final_params.msgpack").read_bytes() == \
        (tmp_path / "int" / "final_params.msgpack").read_bytes()
    summary = json.loads((tmp_path / "sec" / "summary.json").read_text())
    assert summary["secagg_weighting"].startswith("examples")
