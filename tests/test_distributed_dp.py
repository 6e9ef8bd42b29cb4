"""Distributed DP (Skellam under secure aggregation): noise, rounding, masking, wrap-around and accounting."""
import math

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from dp_accounting import rdp

from jaxqfl import aggregate, algorithms, engine, models, privacy
from jaxqfl.aggregate import distributed_dp as ddp
from jaxqfl.aggregate import skellam_calibration as cal
from jaxqfl.privacy import distributed as pdist
from aggregator_rounds import aggregator_round
from populations import classification_population

C, M = 30, 10
TEMPLATE = {"w": jnp.zeros((5, 3)), "b": jnp.zeros((4,))}  # n = 19 -> d = 32


def _updates(seed, scale=1.0, rows=M):
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(scale * rng.normal(size=(rows, 5, 3)), jnp.float32),
            "b": jnp.asarray(scale * rng.normal(size=(rows, 4)), jnp.float32)}


def _agg(clip=1.0, z=1.0, bits=20, dropout=0.0, **kw):
    return ddp.distributed_skellam(clip, z, template=TEMPLATE, num_clients=C, cohort_size=M, bits=bits,
                                   dropout=dropout, neighbours=kw.pop("neighbours", 8),
                                   threshold=kw.pop("threshold", 0.3), **kw)


def _round_impl(agg, encoder, ids, updates, rkey):
    """One round by hand; the reference sums the survivors' noised codes without masks."""
    out, _, sm, m, stats, infos, _ = aggregator_round(agg, ids, updates, rkey)
    shared = stats.maxes["scale"]
    codes = jax.vmap(lambda u, inf: encoder.encode(u, shared, inf)[0])(updates, infos)
    alive = (1 - m["secagg_dropped"]).astype(jnp.int32)
    W = jnp.sum(alive)
    code_sum = jax.tree.map(lambda c: jnp.tensordot(alive, c, 1), codes)
    ref = jax.tree.map(lambda s: s / jnp.maximum(W, 1), encoder.decode_sum(code_sum, shared, W))
    return out, ref, sm, m, code_sum


_round = jax.jit(_round_impl, static_argnums=(0, 1))


def _encoder(clip=1.0, z=1.0, bits=20, noise_shares=M):
    p = cal.skellam_parameters(clip, z, dimension=19, cohort_size=M, bits=bits, noise_shares=noise_shares)
    return p, ddp.skellam_encoder(p, TEMPLATE)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_secure_sum_of_noised_codes_equals_the_unmasked_sum(dropout):
    """Masks, dropouts and Shamir unmasking leave the survivors' noised integer sum bit for bit."""
    ids = jnp.arange(M, dtype=jnp.int32) * 3
    s = cal.min_survivors(M, dropout)
    agg = _agg(dropout=dropout, noise_shares=s)
    p, enc = _encoder(noise_shares=s)
    dropped = 0.0
    for r in range(3):
        out, ref, sm, m, code_sum = _round(agg, enc, ids, _updates(r), jax.random.key(40 + r))
        assert float(sm["secagg_failed"]) == 0.0
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
            np.testing.assert_array_equal(a, b)
        assert int(jnp.max(jnp.abs(code_sum["codes"]))) < 2 ** (p.modulus_bits - 1)  # no wrap in the reference
        dropped += float(np.sum(m["secagg_dropped"]))
    assert (dropped > 0) == (dropout > 0)


@pytest.mark.slow
def test_noise_on_the_sum_has_the_skellam_variance():
    """All-zero updates: the server's sum is the survivors' noise alone, variance gamma^2 W mu / s per coordinate."""
    s = 5
    agg = _agg(z=2.0, noise_shares=s)
    p, _ = _encoder(z=2.0, noise_shares=s)
    ids = jnp.arange(M, dtype=jnp.int32)
    zeros = _updates(0, scale=0.0)

    def one(r):
        out, _, sm, _, _ = _round_impl(agg, _encoder(z=2.0, noise_shares=s)[1], ids, zeros, jax.random.key(r))
        total = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(out)]) * sm["secagg_survivors"]
        return total, sm["dp_noise_std"]

    totals, stds = jax.jit(jax.vmap(one))(jnp.arange(300))
    totals = np.asarray(totals, np.float64)
    want = p.scale ** 2 * M * p.central_variance / s  # no dropout: W = M
    assert abs(np.mean(totals)) < 4 * math.sqrt(want / totals.size)
    assert np.var(totals) == pytest.approx(want, rel=0.05)  # 5700 draws: the estimate's rel. sd is ~2%
    np.testing.assert_allclose(np.asarray(stds), math.sqrt(want), rtol=1e-5)


def test_no_noise_fine_grid_equals_the_clipped_mean_within_the_rounding_bound():
    """z = 0, b = 30: ||out - mean(clip(x_i))||_2 <= gamma sqrt(d) (each client's rounding error < 1 per code)."""
    ids = jnp.arange(M, dtype=jnp.int32)
    updates = _updates(3, scale=0.5)
    agg = _agg(z=0.0, bits=30, clip=1.0)
    p, enc = _encoder(z=0.0, bits=30)
    out = _round(agg, enc, ids, updates, jax.random.key(1))[0]
    flat = np.concatenate([np.asarray(updates["b"]), np.asarray(updates["w"]).reshape(M, -1)], axis=1)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    assert np.any(norms > 1.0)  # some updates really are clipped
    clipped_mean = np.mean(flat * np.minimum(1.0, 1.0 / norms), axis=0)
    got = np.concatenate([np.asarray(out["b"]), np.asarray(out["w"]).ravel()])
    err = np.linalg.norm(got - clipped_mean)
    assert err <= p.scale * math.sqrt(p.rotated_dimension) + 1e-5
    assert np.linalg.norm(clipped_mean) > 100 * (p.scale * math.sqrt(p.rotated_dimension))  # the bound is tight enough to mean something


def test_rounded_codes_respect_the_sensitivity_bound():
    """Conditional rounding: every client's rounded codes have ||r||_2 <= Delta_2 (the accounted sensitivity)."""
    p = cal.skellam_parameters(1.0, 0.0, dimension=19, cohort_size=M, bits=8)  # coarse grid: rounding matters
    keys_ = jax.random.split(jax.random.key(0), 2000)
    rng = np.random.default_rng(0)
    y = jnp.asarray(rng.normal(size=(2000, 32)), jnp.float32)
    y = y / jnp.linalg.norm(y, axis=1, keepdims=True) * (1.0 / p.scale)  # norm c' exactly
    r, tries = jax.vmap(lambda v, k: ddp.conditional_round(v, p.l2_sensitivity, k, 10))(y, keys_)
    norms = np.linalg.norm(np.asarray(r, np.float64), axis=1)
    assert np.all(norms <= p.l2_sensitivity)
    assert np.all(np.abs(np.asarray(r) - np.asarray(y)) < 1.0)  # a rounding, never a jump
    unconditional = np.linalg.norm(np.floor(np.asarray(y)) + (rng.random(y.shape) < np.asarray(y) % 1), axis=1)
    assert np.any(unconditional > p.l2_sensitivity)  # mutation check: without the retries the bound fails


@pytest.mark.parametrize("bits,z", [(12, 1.0), (20, 0.5), (16, 0.0)])
def test_modulus_is_large_enough_for_the_stated_wrap_bound(bits, z):
    """gamma meets the wrap bound; a finer grid would not; aligned worst-case updates never wrap."""
    p = cal.skellam_parameters(1.0, z, dimension=19, cohort_size=M, bits=bits)
    kw = dict(clip=1.0, noise_multiplier=z, rotated_dimension=p.rotated_dimension, block=p.block,
              cohort_size=M, noise_shares=p.noise_shares, modulus_bits=bits)
    finer = p.scale * 0.99
    assert p.wrap_bound <= 1e-6
    # a finer grid would break the wrap bound, or push the Poisson rate past its accurate range
    assert cal.wrap_bound(finer, **kw) > 1e-6 or (z / finer) ** 2 / (2 * p.noise_shares) > cal.MAX_POISSON_RATE
    # the bound's noise term against scipy's exact Skellam tail (a Chernoff bound must exceed it)
    from scipy import stats
    lam = 50.0
    m = np.array([5.0, 30.0, 80.0])
    assert np.all(cal.skellam_tail(m, lam) >= stats.skellam.sf(m - 1, lam, lam))
    # every client sends the same update at norm c: the largest possible signal, summed without masks
    agg = _agg(z=z, bits=bits)
    enc = ddp.skellam_encoder(p, TEMPLATE)
    one = _updates(9, rows=1)
    same = jax.tree.map(lambda a: jnp.repeat(a, M, axis=0), one)
    for r in range(3):
        out, ref, sm, _, code_sum = _round(agg, enc, jnp.arange(M, dtype=jnp.int32), same, jax.random.key(r))
        assert int(jnp.max(jnp.abs(code_sum["codes"]))) < 2 ** (bits - 1)
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
            np.testing.assert_array_equal(a, b)


def test_epsilon_equals_dp_accounting_on_the_equivalent_gaussian():
    p = cal.skellam_parameters(0.5, 1.2, dimension=1000, cohort_size=50, bits=16)
    z_eff = privacy.skellam_noise_multiplier(p.l2_sensitivity, p.l1_sensitivity, p.central_variance)
    # the Gaussian's RDP dominates the paper's Skellam bound at every order (replace-one: sensitivities x2)
    for a in [1.5, 2, 3, 10, 64, 256, 1024]:
        assert a / (2 * z_eff ** 2) >= pdist.skellam_rdp(a, 2 * p.l2_sensitivity, 2 * p.l1_sensitivity,
                                                         p.central_variance) * (1 - 1e-12)
    assert z_eff == pytest.approx(math.sqrt(p.central_variance) / (2 * p.l2_sensitivity), rel=1e-2)
    eps = privacy.distributed_epsilon(z_eff, 1e-5, 40, num_clients=2000, cohort_size=50)
    acc = rdp.RdpAccountant(orders=list(pdist.RDP_ORDERS),
                            neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    acc.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.SampledWithoutReplacementDpEvent(2000, 50, dp_accounting.GaussianDpEvent(z_eff)), 40))
    assert eps == acc.get_epsilon(1e-5)
    z_eff_of = lambda z: privacy.skellam_noise_multiplier(
        *(lambda q: (q.l2_sensitivity, q.l1_sensitivity, q.central_variance))(
            cal.skellam_parameters(0.5, z, dimension=1000, cohort_size=50, bits=16)))
    z = privacy.distributed_noise_for_epsilon(2.0, 1e-5, 40, z_eff_of, num_clients=2000, cohort_size=50)
    assert privacy.distributed_epsilon(z_eff_of(z), 1e-5, 40, num_clients=2000, cohort_size=50) == pytest.approx(
        2.0, rel=0.01)


def test_too_few_survivors_for_the_noise_fails_the_round():
    ids = jnp.arange(M, dtype=jnp.int32)
    agg = _agg(dropout=0.3, noise_shares=M)  # noise split for all 10, but some drop out
    _, enc = _encoder(noise_shares=M)
    out, _, sm, m, _ = _round(agg, enc, ids, _updates(0), jax.random.key(5))
    assert float(np.sum(m["secagg_dropped"])) > 0
    assert float(sm["secagg_failed"]) == 1.0 and all(np.all(np.asarray(a) == 0) for a in jax.tree.leaves(out))


@pytest.fixture(scope="module")
def population():
    rng = np.random.default_rng(3)
    return classification_population(rng.integers(2, 15, size=21).tolist(), num_features=5, num_classes=3, seed=3)


def _run(population, num_devices, chunk_size):
    model = models.mlp(hidden=(6,), num_outputs=3)
    template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 5), jnp.float32))
    agg = aggregate.distributed_skellam(0.5, 1.0, template=template, num_clients=21, cohort_size=7, bits=18,
                                        dropout=0.2, neighbours=4, threshold=0.25)
    alg = algorithms.fedavg(optax.sgd(0.1), weighting="uniform")
    sim = engine.build(population, model, alg, engine.LocalSchedule(local_steps=2, batch_size=3), cohort_size=7,
                       num_devices=num_devices, chunk_size=chunk_size, aggregator=agg)
    state, metrics = sim.run_block(sim.init(5), 3)
    return jax.device_get(state), jax.device_get(metrics)


@pytest.mark.parametrize("devices", [pytest.param(2, marks=pytest.mark.slow), pytest.param(4, marks=pytest.mark.slow),
                                     pytest.param(8, marks=pytest.mark.slow)])  # CI budget: -m slow
def test_engine_distributed_dp_device_and_chunk_invariant(population, devices):
    s1, m1 = _run(population, 1, 7)
    sd, md = _run(population, devices, 1)
    # same keys, same noise: only the last float bit of local training may differ (see test_secure_aggregation)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(sd.params)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(m1.server["secagg_survivors"], md.server["secagg_survivors"])
    assert np.all(m1.server["secagg_failed"] == 0) and np.all(m1.server["dp_noise_std"] > 0)


def test_cli_rejects_distributed_dp_without_clip_or_with_an_uplink(tmp_path, capsys):
    from jaxqfl.cli.main import main

    base = ["run", "--num-clients", "40", "--cohort-size", "10", "--rounds", "2", "--no-progress",
            "--out", str(tmp_path / "x"), "--dp-distributed", "skellam"]
    for extra, message in [([], "--dp-distributed needs --dp-clip"),
                           (["--dp-clip", "1", "--dp-noise", "1", "--uplink", "qsgd:8"], "drop --uplink"),
                           (["--dp-clip", "1", "--dp-noise", "1", "--dp-bits", "4"], "--dp-bits must be")]:
        with pytest.raises(SystemExit) as e:
            main(base + extra)
        assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_cli_distributed_dp_reports_the_accounted_epsilon(tmp_path, capsys):
    import json

    from jaxqfl.cli.main import main

    out = tmp_path / "run"
    rc = main(["run", "--num-clients", "60", "--cohort-size", "12", "--rounds", "4", "--eval-every", "2",
               "--local-steps", "1", "--dp-clip", "1.0", "--dp-epsilon", "5", "--dp-distributed", "skellam",
               "--dropout", "0.1", "--dp-bits", "18", "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "distributed DP" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert f"epsilon {summary['dp_epsilon']:.4g}, delta {summary['dp_delta']:.3g} over 4 rounds" in printed
    assert summary["dp_epsilon"] == pytest.approx(5.0, rel=0.01)
    assert summary["dp_epsilon"] == privacy.distributed_epsilon(
        summary["dp_effective_noise_multiplier"], summary["dp_delta"], 4, num_clients=60, cohort_size=12)
    assert summary["dp_bits"] == 18 and summary["secure_aggregation"] == "secagg+"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["dp_epsilon"] < rows[1]["dp_epsilon"] == summary["dp_epsilon"]
