"""Composed aggregators: clip_updates, central_gaussian over a robust rule, norm bounding before secure aggregation."""
import math

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxqfl import aggregate, algorithms, compress, engine, keys, models, privacy
from jaxqfl.aggregate.base import CohortInfo, CohortStatistics
from jaxqfl.aggregate.coordinatewise import coordinate_median, coordinate_trimmed_mean
from jaxqfl.algorithms.base import ClientInfo
from populations import classification_population

CODEC = compress.from_spec("qsgd:8")


def drive(agg, ids, updates, rkey, weights=None, valid=None):
    """One round by hand in the engine's order: pre-pass, prepare, client, reduction, server.

    Returns ``(aggregate, server_metrics, client_metrics, prepared_updates, stats)``.
    """
    m = ids.shape[0]
    infos = jax.vmap(lambda i: ClientInfo(i, jnp.int32(5), jnp.int32(1), keys.client_key(rkey, i), jnp.int32(0)))(ids)
    weights = jnp.ones(m, jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    valid = jnp.ones(m, bool) if valid is None else jnp.asarray(valid)
    state = agg.init(None)
    stats = CohortStatistics()
    if agg.statistics is not None:
        st = jax.vmap(lambda u, w, inf: agg.statistics(u, w, (), state, inf))(updates, weights, infos)
        stats = CohortStatistics(sums=jax.tree.map(lambda a: a.sum(0), st.sums),
                                 maxes=jax.tree.map(lambda a: a.max(0), st.maxes))
    prepared, w, cs, m1 = jax.vmap(lambda u, w, inf: agg.prepare(u, w, (), state, stats, inf))(updates, weights, infos)
    summands, _, m2 = jax.vmap(lambda u, w, c, inf: agg.client(u, w, c, state, stats, inf))(prepared, w, cs, infos)
    if agg.reduction == "sum":
        reduced = jax.tree.map(lambda a: jnp.sum(jnp.where(valid.reshape((-1,) + (1,) * (a.ndim - 1)), a,
                                                           jnp.zeros_like(a)), 0), summands)
    else:
        reduced = summands
    out, _, sm = agg.server(reduced, state, stats, CohortInfo(ids, valid, rkey, jnp.int32(0)))
    return out, sm, {**m1, **m2}, prepared, stats


def _cohort(m=12, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    ids = jnp.asarray(rng.choice(30, m, replace=False), jnp.int32)
    updates = {"w": jnp.asarray(scale * rng.normal(size=(m, 5, 3)), jnp.float32),
               "b": jnp.asarray(scale * rng.normal(size=(m, 4)), jnp.float32)}
    return ids, updates


def _numpy_clip(updates, radius):
    """Each client's whole update scaled to L2 norm <= radius, in float64 NumPy."""
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(updates)]
    norms = np.sqrt(sum(np.sum(x.reshape(x.shape[0], -1) ** 2, axis=1) for x in leaves))
    factor = np.minimum(1.0, radius / norms)
    return jax.tree.map(lambda x: np.asarray(x, np.float64) * factor.reshape((-1,) + (1,) * (x.ndim - 1)), updates)


# --- DP over the coordinate-wise median ----------------------------------------------------------------------------

def _median_noise(z, clip, rounds, m=7):
    ids, updates = _cohort(m, seed=1, scale=2.0)
    noisy = aggregate.central_gaussian(z, aggregate.clip_updates(clip, aggregate.median()))
    plain = aggregate.clip_updates(clip, aggregate.median())

    @jax.jit
    def one(r):
        rkey = keys.round_key(jax.random.key(4), r)
        out, sm, *_ = drive(noisy, ids, updates, rkey)
        ref = drive(plain, ids, updates, rkey)[0]
        return jax.tree.map(jnp.subtract, out, ref), sm

    noise, sm = jax.lax.map(one, jnp.arange(rounds))
    return np.concatenate([np.asarray(x).reshape(rounds, -1) for x in jax.tree.leaves(noise)], axis=1), sm


Z, CLIP = 1.1, 1.5


@pytest.fixture(scope="module")
def median_noise():
    return _median_noise(Z, CLIP, 300)


def test_median_noise_has_std_z_times_clip_around_the_noiseless_clipped_median(median_noise):
    """S = C for the median (``jaxqfl.aggregate.sensitivity``): noise = DP output - clipped median, over 300
    round keys x 19 coordinates (N = 5,700 draws). Std within 5 standard errors (``sqrt(1 / (2N))``, 0.94%,
    so +-4.7%) of z C, and not of z C / n (7x smaller); mean within 5 sigma / sqrt(N) of 0."""
    z, clip = Z, CLIP
    noise, sm = median_noise
    n = noise.size
    assert abs(noise.std() / (z * clip) - 1.0) < 5 / math.sqrt(2 * n)
    assert abs(noise.mean()) < 5 * z * clip / math.sqrt(n)
    np.testing.assert_allclose(np.asarray(sm["dp_sensitivity"]), clip)
    np.testing.assert_allclose(np.asarray(sm["dp_noise_std"]), z * clip, rtol=1e-6)
    # independent draws per round, from fold_in(round key, DP) only
    assert not np.allclose(noise[0], noise[1])
    rkey = keys.round_key(jax.random.key(4), 0)
    dkey = jax.random.fold_in(keys.purpose_key(rkey, keys.DP), 0)
    _, updates = _cohort(7, seed=1, scale=2.0)
    ks = jax.random.split(dkey, len(jax.tree.leaves(updates)))
    expected = np.concatenate([np.asarray(z * clip * jax.random.normal(k, leaf.shape[1:])).ravel()
                               for k, leaf in zip(ks, jax.tree.leaves(updates))])
    np.testing.assert_allclose(noise[0], expected, atol=1e-5)


def _eps_rdp_fixed(mult, delta, rounds, n, m):
    acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    acc.compose(dp_accounting.SampledWithoutReplacementDpEvent(n, m, dp_accounting.GaussianDpEvent(mult / 2)), rounds)
    return acc.get_epsilon(delta)


def _eps_pld_poisson(mult, delta, rounds, n, m):
    acc = dp_accounting.pld.PLDAccountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(m / n, dp_accounting.GaussianDpEvent(mult)), rounds)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("sampling", ["fixed", "poisson"])
def test_reported_epsilon_is_that_of_the_noise_actually_added(sampling, median_noise):
    """The run reports ``privacy.epsilon(z, ...)``. Independently: the median's true sensitivity is C under
    add/remove and 2C under replace-one (proved; tested below), the measured noise std sigma^ gives the
    multiplier sigma^ / C, and dp-accounting's epsilon at that multiplier (RDP replace-one with multiplier / 2,
    or PLD add/remove) brackets the reported one over sigma^'s 5-standard-error interval. The interval is
    +-4.7%; a sensitivity off by the cohort size (7x) would land far outside."""
    z, clip = Z, CLIP
    noise, _ = median_noise
    se = 5 / math.sqrt(2 * noise.size)
    mult = noise.std() / clip
    N, M, T, delta = 1000, 50, 20, 1e-5
    reported = privacy.epsilon(z, delta, T, num_clients=N, cohort_size=M, sampling=sampling)
    independent = _eps_rdp_fixed if sampling == "fixed" else _eps_pld_poisson
    assert independent(mult * (1 + se), delta, T, N, M) <= reported <= independent(mult * (1 - se), delta, T, N, M)
    assert reported == pytest.approx(independent(z, delta, T, N, M), rel=1e-6)


# --- the median's sensitivity bound ----------------------------------------------------------------------------------

def _median(points, valid=None):
    x = jnp.asarray(points, jnp.float32)
    valid = jnp.ones(x.shape[0], bool) if valid is None else jnp.asarray(valid)
    return np.asarray(coordinate_median(x, valid), np.float64)


def _adversarial_cohorts(rng, count, n, d, clip):
    """Points on the sphere of radius C concentrated on few coordinates, sign patterns split near half/half."""
    x = rng.normal(size=(count, n, d)) * (rng.random(size=(count, n, d)) < rng.uniform(0.2, 1.0, (count, 1, 1)))
    x = np.where(rng.random(size=(count, n, d)) < 0.5, np.abs(x), -np.abs(x)) + 1e-9
    return clip * x / np.linalg.norm(x, axis=2, keepdims=True) * rng.uniform(0.7, 1.0, (count, n, 1))


def test_median_sensitivity_bound_holds_and_is_attained():
    """Replace one client (same n): move <= 2S; remove one (valid=False, the engine's padding path): move <= S;
    S = C as declared. Thousands of adversarial cohorts (n = 2..8, d = 1..6), then the 1-d constructions
    that attain S (add/remove) and 2S (replace-one, odd n): the bound is tight."""
    clip = 1.3
    S = float(aggregate.median().dp.bound(clip, jnp.int32(7), "poisson"))
    assert S == pytest.approx(clip)
    assert float(aggregate.median().dp.bound(clip, jnp.int32(8), "fixed")) == pytest.approx(clip)
    rng = np.random.default_rng(0)
    med = jax.jit(jax.vmap(lambda x, v: coordinate_median(x, v)))
    n_max, count = 8, 4000
    n = rng.integers(2, n_max + 1, size=count)  # rows >= n are padding (valid False)
    rows = np.arange(n_max)[None, :]
    worst_replace = worst_remove = 0.0
    for d in (1, 2, 3, 6):
        x = _adversarial_cohorts(rng, count, n_max, d, clip)
        x2 = x.copy()
        x2[:, 0] = _adversarial_cohorts(rng, count, 1, d, clip)[:, 0]  # replace client 0
        keep = rows < n[:, None]
        gone = keep & (rows > 0)  # remove client 0
        a, b, c = (np.asarray(med(jnp.asarray(p, jnp.float32), jnp.asarray(v)), np.float64)
                   for p, v in ((x, keep), (x2, keep), (x, gone)))
        worst_replace = max(worst_replace, float(np.max(np.linalg.norm(a - b, axis=1))))
        worst_remove = max(worst_remove, float(np.max(np.linalg.norm(a - c, axis=1))))
    assert worst_replace <= 2 * S * (1 + 1e-5) and worst_remove <= S * (1 + 1e-5)
    assert worst_replace > 1.5 * S and worst_remove > 0.75 * S  # the random search comes near the bound
    # attained: Y = {-C, C}; adding p = C moves the median from 0 to C; replacing p = -C by C moves it by 2C
    Y = [[-clip], [clip]]
    assert abs(_median(Y + [[clip]])[0] - _median(Y)[0]) == pytest.approx(S)
    assert abs(_median(Y + [[clip]])[0] - _median(Y + [[-clip]])[0]) == pytest.approx(2 * S)


def test_trimmed_mean_sensitivity_bound_holds_and_is_attained():
    """Replace-one: move <= 2S, S = C / (n - 2b) as declared (n = 5, beta = 0.2: b = 1, S = C / 3)."""
    clip, n, beta = 1.0, 5, 0.2
    S = float(aggregate.trimmed_mean(beta).dp.bound(clip, jnp.int32(n), "fixed"))
    assert S == pytest.approx(clip / 3)
    rng = np.random.default_rng(1)
    x = _adversarial_cohorts(rng, 3000, n, 3, clip)
    x2 = x.copy()
    x2[:, 0] = _adversarial_cohorts(rng, 3000, 1, 3, clip)[:, 0]
    tm = jax.vmap(lambda u: coordinate_trimmed_mean(u, jnp.ones(n, bool), beta))
    move = np.linalg.norm(np.asarray(tm(jnp.asarray(x, jnp.float32))) - np.asarray(tm(jnp.asarray(x2, jnp.float32))),
                          axis=1)
    assert move.max() <= 2 * S * (1 + 1e-5) and move.max() > 1.2 * S
    Y = [[-clip], [-clip], [clip], [clip]]
    a = coordinate_trimmed_mean(jnp.asarray(Y + [[-clip]], jnp.float32), jnp.ones(n, bool), beta)
    b = coordinate_trimmed_mean(jnp.asarray(Y + [[clip]], jnp.float32), jnp.ones(n, bool), beta)
    assert abs(float(a[0] - b[0])) == pytest.approx(2 * S, rel=1e-6)


# --- norm bounding before secure aggregation --------------------------------------------------------------------------

@pytest.mark.parametrize("dropout", [pytest.param(0.0, marks=pytest.mark.slow), 0.3])
def test_clip_before_secure_sum_equals_the_integer_sum_of_numpy_clipped_updates(dropout):
    """``clip_updates(C, secure_sum(...))``: the clients' updates (weights 1..40, half of them above C) are clipped
    as NumPy clips them (to float32 rounding), the shared scale is the cohort maximum of the CLIPPED updates'
    statistics, and the aggregate equals, bit for bit, the plain integer-domain weighted mean of the survivors'
    codes of those clipped updates on that scale (and, without dropouts, ``integer_mean`` on them)."""
    M, radius = 8, 3.0
    ids, updates = _cohort(M, seed=4)
    updates = jax.tree.map(lambda u: u * jnp.where(jnp.arange(M) % 2 == 0, 0.3, 1.5).reshape(
        (-1,) + (1,) * (u.ndim - 1)), updates)  # even clients inside the ball, odd ones outside
    weights = jnp.asarray(np.random.default_rng(5).integers(1, 41, size=M), jnp.float32)
    agg = aggregate.clip_updates(radius, aggregate.secure_sum(CODEC, num_clients=30, cohort_size=M, neighbours=4,
                                                              threshold=0.3, dropout=dropout, max_weight=40))
    rkey = jax.random.key(17)
    out, sm, m, clipped, stats = jax.jit(drive, static_argnums=0)(agg, ids, updates, rkey, weights)
    ref_clip = _numpy_clip(updates, radius)
    for a, b in zip(jax.tree.leaves(clipped), jax.tree.leaves(ref_clip)):
        np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=2e-6, atol=1e-7)
    assert np.sum(np.asarray(m["clip_clipped"])) == M // 2
    isum = CODEC.integer_sum
    # the pre-pass saw the clipped updates (recomputed there: equal up to float32 rounding), not the raw ones
    scale = stats.maxes["scale"]
    of_clipped = jax.tree.map(lambda a: a.max(0), jax.vmap(isum.scale_stats)(clipped))
    of_raw = jax.tree.map(lambda a: a.max(0), jax.vmap(isum.scale_stats)(updates))
    for a, b, c in zip(jax.tree.leaves(scale), jax.tree.leaves(of_clipped), jax.tree.leaves(of_raw)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
        assert np.all(np.asarray(c) > 1.2 * np.asarray(b))
    infos_keys = jax.vmap(lambda i: keys.purpose_key(keys.client_key(rkey, i), keys.UPLINK))(ids)
    codes = jax.vmap(lambda u, k: isum.quantize(u, scale, k))(clipped, infos_keys)
    alive = (1 - m["secagg_dropped"]).astype(jnp.int32) * weights.astype(jnp.int32)
    code_sum = jax.tree.map(lambda c: jnp.tensordot(alive, c.astype(jnp.int32), 1), codes)
    W = jnp.sum(alive)
    ref = jax.tree.map(lambda x: x / jnp.maximum(W, 1), isum.dequantize_sum(code_sum, scale, W))
    assert float(sm["secagg_failed"]) == 0.0
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(a, b)
    if dropout == 0.0:
        plain = jax.jit(drive, static_argnums=0)(aggregate.integer_mean(CODEC), ids, clipped, rkey, weights)[0]
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(plain)):
            np.testing.assert_array_equal(a, b)
    else:
        assert float(np.sum(m["secagg_dropped"])) > 0


# --- dp_mean is the composed form ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("denominator,weight_cap", [(None, None), (9.5, None), (None, 6.0)])
def test_dp_mean_equals_central_gaussian_over_the_fixed_denominator_mean_bit_for_bit(denominator, weight_cap):
    ids, updates = _cohort(12, seed=2, scale=0.7)
    weights = jnp.asarray(np.random.default_rng(3).integers(0, 12, size=12), jnp.float32)  # includes a 0
    valid = jnp.arange(12) < 10  # two padding slots
    z, clip = 0.9, 1.2
    old = aggregate.dp_mean(clip, z, denominator=denominator, weight_cap=weight_cap)
    new = aggregate.central_gaussian(z, aggregate.clip_updates(
        clip, aggregate.fixed_denominator_mean(denominator, weight_cap=weight_cap)))
    run = jax.jit(drive, static_argnums=0)
    outs = []
    for r in range(3):
        rkey = keys.round_key(jax.random.key(8), r)
        a, sa, *_ = run(old, ids, updates, rkey, weights, valid)
        b, sb, *_ = run(new, ids, updates, rkey, weights, valid)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_array_equal(x, y)
        assert float(sa["dp_noise_std"]) == float(sb["dp_noise_std"])
        outs.append(np.asarray(b["w"]))
    assert not np.array_equal(outs[0], outs[1])  # fresh noise each round


# --- refusals -----------------------------------------------------------------------------------------------------------

def _clipped(rule):
    return aggregate.clip_updates(1.0, rule)


@pytest.mark.parametrize("rule,match", [
    (aggregate.krum(0.2), "krum / multi_krum selects updates"),
    (aggregate.multi_krum(0.2), "krum / multi_krum selects updates"),
    (aggregate.bulyan(0.2), "bulyan selects updates"),
    (aggregate.geometric_median(), "geometric_median .* no sensitivity bound"),
    (aggregate.mean(), "mean weighs clients by the algorithm's weights"),
    (aggregate.gather_mean(), "gather_mean weighs clients"),
    (aggregate.central_gaussian(1.0, _clipped(aggregate.median())), r"central_gaussian\(median\) is already noised"),
])
def test_rules_without_a_bound_are_refused_with_the_reason(rule, match):
    with pytest.raises(ValueError, match=match):
        aggregate.central_gaussian(1.0, _clipped(rule) if rule.dp.clip is None and not rule.dp.clips_itself else rule)


@pytest.mark.parametrize("rule,match", [
    (aggregate.dp_mean(1.0, 1.0), "dp_mean: that rule already clips"),
    (aggregate.norm_bound(1.0), "norm_bound: that rule already clips"),
    (aggregate.centered_clip(1.0), "centered_clip: that rule already clips"),
    (aggregate.clip_updates(2.0, aggregate.median()), r"around clip_updates\(2, ...\)"),
])
def test_clipping_around_a_rule_that_clips_is_refused(rule, match):
    with pytest.raises(ValueError, match=match):
        aggregate.clip_updates(1.0, rule)
    if rule.dp.clip is None:  # dp_mean, norm_bound, centered_clip: no noise on top of them either
        with pytest.raises(ValueError, match="is refused"):
            aggregate.central_gaussian(1.0, rule)


def test_meaningless_compositions_are_refused():
    with pytest.raises(ValueError, match="needs the updates clipped"):
        aggregate.central_gaussian(1.0, aggregate.median())
    secure = aggregate.secure_sum(CODEC, num_clients=30, cohort_size=12)
    with pytest.raises(ValueError, match="declares no L2 sensitivity bound"):
        aggregate.central_gaussian(1.0, aggregate.clip_updates(1.0, secure))
    # even a rule with a bound is refused once its uplink is integer-coded (secure or integer aggregation)
    coded = _clipped(aggregate.fixed_denominator_mean())._replace(encodes_uplink=True)
    with pytest.raises(ValueError, match="encodes the uplink itself"):
        aggregate.central_gaussian(1.0, coded)
    with pytest.raises(ValueError, match="trimmed_mean with poisson sampling is refused"):
        aggregate.central_gaussian(1.0, _clipped(aggregate.trimmed_mean(0.1)), sampling="poisson")
    with pytest.raises(ValueError, match="under poisson sampling pass denominator"):
        aggregate.central_gaussian(1.0, _clipped(aggregate.fixed_denominator_mean()), sampling="poisson")
    aggregate.central_gaussian(1.0, _clipped(aggregate.fixed_denominator_mean(5.0)), sampling="poisson")  # fine
    aggregate.central_gaussian(1.0, _clipped(aggregate.median()), sampling="poisson")  # fine
    with pytest.raises(ValueError, match="sampling must be one of"):
        aggregate.central_gaussian(1.0, _clipped(aggregate.median()), sampling="uniform")


@pytest.mark.parametrize("bad", [math.nan, -1.0, math.inf, "1", True, None])
def test_bad_noise_multiplier_and_clip_are_refused(bad):
    with pytest.raises(ValueError, match="noise_multiplier must be a finite number >= 0"):
        aggregate.central_gaussian(bad, _clipped(aggregate.median()))
    with pytest.raises(ValueError, match="the clip radius must be a finite number > 0"):
        aggregate.clip_updates(bad, aggregate.median())
    with pytest.raises(ValueError, match="the clip radius must be a finite number > 0"):
        aggregate.clip_updates(0.0, aggregate.median())


def test_central_dp_by_name():
    """The CLI's entry point: mean -> DP-FedAvg, median / trimmed-mean composed, every other rule refused."""
    assert aggregate.central_dp("median", 1.0, 1.0).reduction == "gather"
    assert aggregate.central_dp("mean", 1.0, 1.0, sampling="poisson", denominator=10.0).reduction == "sum"
    for name, match in [("krum", "krum"), ("multi-krum", "krum"), ("bulyan", "bulyan"), ("geomed", "geometric"),
                        ("centered-clip", "centered_clip"), ("norm-bound", "norm_bound"),
                        ("trimmed-mean", "poisson")]:
        with pytest.raises(ValueError, match=match):
            aggregate.central_dp(name, 1.0, 1.0, sampling="poisson")


# --- in the engine ------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_engine_dp_median_is_device_and_chunk_invariant():
    """The composed DP median runs in the engine (gather path, clip in prepare) with the same noise on 1 device x
    chunk 7 and 4 devices x chunk 1; dp_mean and its composed form train the same model."""
    rng = np.random.default_rng(3)
    population = classification_population(rng.integers(2, 15, size=21).tolist(), num_features=5, num_classes=3,
                                            seed=3)

    def run(num_devices, chunk_size, agg):
        alg = algorithms.fedavg(optax.sgd(0.1), weighting="uniform")
        sim = engine.build(population, models.mlp(hidden=(6,), num_outputs=3), alg,
                           engine.LocalSchedule(local_steps=2, batch_size=3), cohort_size=7, num_devices=num_devices,
                           chunk_size=chunk_size, aggregator=agg)
        state, metrics = sim.run_block(sim.init(5), 3)
        return jax.device_get(state), jax.device_get(metrics)

    dp = lambda: aggregate.central_dp("median", 0.5, 1.3)
    s1, m1 = run(1, 7, dp())
    s4, _ = run(4, 1, dp())
    s0, _ = run(1, 7, aggregate.central_dp("median", 0.5, 0.0))
    for a, b, c in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params), jax.tree.leaves(s0.params)):
        np.testing.assert_allclose(a, b, atol=1e-5)
        assert not np.allclose(a, c)  # the noise moved the model
    np.testing.assert_allclose(m1.server["dp_noise_std"], 1.3 * 0.5, rtol=1e-6)
    # DP-FedAvg through the engine: dp_mean and its composed form give the same model bit for bit
    s_old, _ = run(2, 2, aggregate.dp_mean(0.5, 1.3))
    s_new, _ = run(2, 2, aggregate.central_dp("mean", 0.5, 1.3))
    for a, b in zip(jax.tree.leaves(s_old.params), jax.tree.leaves(s_new.params)):
        np.testing.assert_array_equal(a, b)


def test_a_traced_noise_multiplier_sweeps_like_dp_mean():
    """A sweep's z is a traced scalar: the noise is always drawn (z = 0 adds exactly 0), as in ``dp_mean``."""
    ids, updates = _cohort(6, seed=7)

    @jax.jit
    def both(z):
        rkey = keys.round_key(jax.random.key(2), 1)
        old = drive(aggregate.dp_mean(1.0, z), ids, updates, rkey)[0]
        new = drive(aggregate.central_dp("mean", 1.0, z), ids, updates, rkey)[0]
        med = drive(aggregate.central_dp("median", 1.0, z), ids, updates, rkey)[0]
        return old, new, med

    plain = drive(aggregate.clip_updates(1.0, aggregate.median()), ids, updates, keys.round_key(jax.random.key(2), 1))[0]
    for z in (0.0, 0.7):
        old, new, med = both(jnp.float32(z))
        for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(jax.tree.leaves(med), jax.tree.leaves(plain)):
            assert np.array_equal(a, b) == (z == 0.0)
