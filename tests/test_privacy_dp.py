"""DP-FedAvg (aggregate.dp_mean) and its accounting (jaxqfl.privacy) against independent references."""
import math
import re

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxqfl import aggregate, algorithms, engine, keys, models, privacy
from jaxqfl.aggregate.base import CohortInfo, CohortStatistics
from jaxqfl.aggregate.dp import global_norm
from populations import classification_population


def _tree(rng, scale):
    return {"a": jnp.asarray(scale * rng.normal(size=(3, 4)), jnp.float32),
            "b": {"c": jnp.asarray(scale * rng.normal(size=(5,)), jnp.float32)}}


def test_clipped_updates_have_norm_at_most_clip():
    """Over the whole pytree: norm <= C after clipping; an update inside the ball is unchanged."""
    agg = aggregate.dp_mean(clip=1.5, noise_multiplier=1.0, target_quantile=0.5)  # adaptive: b is kept
    assert aggregate.dp_mean(clip=1.5, noise_multiplier=1.0).client_state_init(None) == ()  # fixed clip: no state
    state = agg.init(None)
    rng = np.random.default_rng(0)
    for scale in (0.01, 0.3, 3.0, 100.0):
        u = _tree(rng, scale)
        clipped, w, b, m = agg.prepare(u, jnp.float32(7.0), jnp.float32(0), state, CohortStatistics(), None)
        norm = float(np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(u))))
        assert float(global_norm(clipped)) <= 1.5 * (1 + 1e-6)
        assert float(w) == 1.0  # uniform weight, whatever the example count
        assert float(b) == float(norm <= 1.5)
        if norm <= 1.5:
            for x, y in zip(jax.tree.leaves(u), jax.tree.leaves(clipped)):
                np.testing.assert_array_equal(x, y)
        else:  # direction kept, norm exactly C
            np.testing.assert_allclose(float(global_norm(clipped)), 1.5, rtol=1e-5)
            np.testing.assert_allclose(np.asarray(clipped["a"]) * norm / 1.5, np.asarray(u["a"]), rtol=1e-4, atol=1e-6)


def test_noise_std_is_z_times_clip():
    """Server noise on a zero sum over many rounds: empirical std z C, mean 0, per-round keys."""
    z, clip, M = 0.7, 2.0, 10
    agg = aggregate.dp_mean(clip=clip, noise_multiplier=z)
    state = agg.init(None)
    reduced = {"sum": {"w": jnp.zeros((500,))}, "unclipped": jnp.float32(0)}

    def one(r):
        cohort = CohortInfo(jnp.arange(M), jnp.ones(M, bool), keys.round_key(jax.random.key(1), r), r)
        return agg.server(reduced, state, CohortStatistics(), cohort)[0]["w"] * M  # undo the denominator

    noise = np.asarray(jax.vmap(one)(jnp.arange(400)))
    assert abs(noise.std() - z * clip) < 0.01 * z * clip
    assert abs(noise.mean()) < 4 * z * clip / math.sqrt(noise.size)
    assert np.all(noise[0] != noise[1])


def test_adaptive_clip_reaches_target_quantile():
    """On a fixed set of norms, C converges to the target quantile (Andrew et al. 2021)."""
    rng = np.random.default_rng(2)
    norms = jnp.asarray(np.exp(rng.normal(size=400)), jnp.float32)  # lognormal
    for gamma in (0.3, 0.8):
        agg = aggregate.dp_mean(clip=0.05, noise_multiplier=0.0, target_quantile=gamma, clip_learning_rate=0.2,
                                count_noise_std=2.0)

        def round_(state, r):
            def per_client(n):
                u = {"x": jnp.stack([n, 0.0])}
                u, w, b, _ = agg.prepare(u, jnp.float32(1), jnp.float32(0), state, CohortStatistics(), None)
                return agg.client(u, w, b, state, CohortStatistics(), None)[0]

            summands = jax.vmap(per_client)(norms)
            reduced = jax.tree.map(lambda a: a.sum(0), summands)
            cohort = CohortInfo(jnp.arange(400), jnp.ones(400, bool), jax.random.fold_in(jax.random.key(0), r), r)
            return agg.server(reduced, state, CohortStatistics(), cohort)[1], None

        final, _ = jax.lax.scan(round_, agg.init(None), jnp.arange(300))
        fraction_below = float(jnp.mean(norms <= final.clip))
        assert abs(fraction_below - gamma) < 0.04, (gamma, fraction_below, float(final.clip))


@pytest.fixture(scope="module")
def population():
    rng = np.random.default_rng(3)
    return classification_population(rng.integers(2, 15, size=21).tolist(), num_features=5, num_classes=3, seed=3)


def _run(population, aggregator, *, num_devices, chunk_size, rounds=3):
    alg = algorithms.fedavg(optax.sgd(0.1), weighting="uniform")
    sim = engine.build(population, models.mlp(hidden=(6,), num_outputs=3), alg,
                       engine.LocalSchedule(local_steps=2, batch_size=3), cohort_size=7, num_devices=num_devices,
                       chunk_size=chunk_size, aggregator=aggregator)
    state, metrics = sim.run_block(sim.init(5), rounds)
    return jax.device_get(state), jax.device_get(metrics)


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_no_noise_infinite_clip_equals_plain_mean(population):
    s_dp, _ = _run(population, aggregate.dp_mean(clip=math.inf, noise_multiplier=0.0), num_devices=2, chunk_size=2)
    s_mean, _ = _run(population, aggregate.mean(), num_devices=2, chunk_size=2)
    assert _max_diff(s_dp.params, s_mean.params) < 1e-6


def test_private_path_invariant_to_devices_and_chunks(population):
    """Same keys, same noise: 1 device x chunk 7 vs 4 devices x chunk 1 (adaptive clip and noise on)."""
    agg = lambda: aggregate.dp_mean(clip=0.5, noise_multiplier=1.3, target_quantile=0.5, count_noise_std=0.5)
    s1, m1 = _run(population, agg(), num_devices=1, chunk_size=7)
    s4, m4 = _run(population, agg(), num_devices=4, chunk_size=1)
    assert _max_diff(s1.params, s4.params) < 1e-5
    np.testing.assert_allclose(m1.server["dp_clip"], m4.server["dp_clip"], rtol=1e-6)
    assert len(set(np.asarray(m1.server["dp_clip"]).tolist())) == 3  # the clip moved every round


@pytest.mark.parametrize("sampling,rounds", [("fixed", 50), ("poisson", 20)])
def test_epsilon_equals_dp_accounting_directly(sampling, rounds):
    N, M, z, delta = 1000, 50, 1.1, 1e-5
    eps = privacy.epsilon(z, delta, rounds, num_clients=N, cohort_size=M, sampling=sampling)
    if sampling == "fixed":  # replace-one: the sum's sensitivity is 2C
        acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
        ev = dp_accounting.SampledWithoutReplacementDpEvent(N, M, dp_accounting.GaussianDpEvent(z / 2))
    else:
        acc = dp_accounting.pld.PLDAccountant()
        ev = dp_accounting.PoissonSampledDpEvent(M / N, dp_accounting.GaussianDpEvent(z))
    acc.compose(ev, rounds)
    assert eps == pytest.approx(acc.get_epsilon(delta), rel=1e-9)


@pytest.mark.slow
def test_noise_for_epsilon_round_trip():
    kw = dict(num_clients=1000, cohort_size=100)
    for target, extra in ((4.0, {"count_noise_std": 5.0}),):
        z = privacy.noise_for_epsilon(target, 1e-5, 30, **kw, **extra)
        assert privacy.epsilon(z, 1e-5, 30, **kw, **extra) == pytest.approx(target, rel=0.01)
    z = privacy.noise_for_epsilon(2.0, 1e-5, 10, sampling="poisson", **kw)
    assert privacy.epsilon(z, 1e-5, 10, sampling="poisson", **kw) == pytest.approx(2.0, rel=0.01)
    with pytest.raises(ValueError, match="count noise"):
        privacy.noise_for_epsilon(0.5, 1e-5, 30, count_noise_std=0.5, **kw)


@pytest.mark.parametrize("sampling", ["fixed", "poisson"])
def test_the_accountant_covers_noise_up_to_its_maximum_and_refuses_more_by_name(sampling):
    """dp-accounting leaves its domain (fixed: a math domain error at 1e10) or overflows (1e155) on huge noise
    multipliers; up to the stated maximum epsilon is a number (0.0 there), past it a ValueError names the value."""
    kw = dict(num_clients=20, cohort_size=4, sampling=sampling)
    eps = [privacy.epsilon(z, 1e-5, 10, **kw) for z in (1e3, privacy.accounting.MAX_NOISE_MULTIPLIER)]
    assert 0 < eps[0] < 1 and eps[1] == 0.0
    for z in (1e10, 1e155):
        with pytest.raises(ValueError, match=re.escape(f"in [0, 1e+06] (the accountant's range), got {z!r}")):
            privacy.epsilon(z, 1e-5, 10, **kw)


@pytest.mark.parametrize("noise", ["1e10", "0.5,1e7"])
def test_the_cli_refuses_a_noise_multiplier_past_the_accountant_before_training(tmp_path, capsys, noise):
    from jaxqfl.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["run", "--num-clients", "20", "--cohort-size", "4", "--rounds", "1", "--dp-clip", "1",
              "--dp-noise", noise, "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "at most 1e+06 (the privacy accountant's range" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cli_dp_run_reports_the_accounted_epsilon(tmp_path, capsys):
    """--dp-epsilon: the run spends exactly the target by its last round; rows grow; delta is printed."""
    import json

    from jaxqfl.cli.main import main

    out = tmp_path / "run"
    rc = main(["run", "--num-clients", "60", "--cohort-size", "12", "--rounds", "4", "--eval-every", "2",
               "--local-steps", "1", "--dp-clip", "1.0", "--dp-epsilon", "5", "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    z, delta = summary["dp_noise_multiplier"], summary["dp_delta"]
    assert f"privacy          epsilon {summary['dp_epsilon']:.4g}, delta {delta:.3g} over 4 rounds" in printed
    assert delta == pytest.approx(1 / 60 ** 1.1)
    assert summary["dp_epsilon"] == pytest.approx(5.0, rel=0.01)
    assert summary["dp_epsilon"] == privacy.epsilon(z, delta, 4, num_clients=60, cohort_size=12)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [2, 4]
    assert rows[0]["dp_epsilon"] == privacy.epsilon(z, delta, 2, num_clients=60, cohort_size=12) < rows[1]["dp_epsilon"]
    assert rows[1]["server_dp_noise_std"] == pytest.approx(z * 1.0, rel=1e-6)


@pytest.mark.slow
def test_default_delta_of_a_file_with_natural_clients_is_set_once_its_clients_are_known(tmp_path):
    """npz / LEAF populations know N only once read: the default delta 1/N^1.1 uses the file's N (was a TypeError)."""
    import json

    import numpy as np

    from jaxqfl.cli.main import main

    r = np.random.RandomState(0)
    np.savez(tmp_path / "u.npz", x=r.randn(200, 5).astype("float32"), y=r.randint(0, 3, 200),
             client_id=np.arange(200) % 20)
    main(["run", "--dataset", "npz", "--data-path", str(tmp_path / "u.npz"), "--dp-clip", "1", "--dp-noise", "1",
          "--rounds", "1", "--cohort-size", "5", "--local-steps", "1", "--out", str(tmp_path / "o"), "--no-progress",
          "--autotune", "off"])
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["dp_delta"] == 1.0 / 20 ** 1.1 and s["dp_epsilon"] is not None


@pytest.mark.parametrize("extra", [[], ["--aggregator", "trimmed-mean"]])
def test_a_run_calibrated_from_epsilon_is_repeated_and_resumed_from_its_own_files(tmp_path, extra):
    """config.toml held the calibrated --dp-noise beside --dp-epsilon, so --config and --resume of such a run were
    refused ("needs exactly one of --dp-noise z or --dp-epsilon E"): it now holds the epsilon asked for, and both
    repeat the run bit for bit (a resume from its round-2 checkpoint too)."""
    from interrupted_runs import back_to_checkpoint, rewrite_record
    from jaxqfl.cli.main import main

    out = tmp_path / "run"
    assert main(["run", "--num-clients", "40", "--cohort-size", "8", "--rounds", "4", "--eval-every", "2",
                 "--checkpoint-every", "2", "--local-steps", "1", "--dp-clip", "1.0", "--dp-epsilon", "5", *extra,
                 "--out", str(out), "--no-progress"]) == 0
    config = (out / "config.toml").read_text()
    assert "dp-epsilon = 5.0" in config and "dp-noise" not in config
    assert main(["run", "--config", str(out / "config.toml"), "--out", str(tmp_path / "again"), "--no-progress"]) == 0
    cut = back_to_checkpoint(out, tmp_path / "cut", 2)
    assert main(["run", "--resume", str(cut), "--no-progress"]) == 0
    for other in (tmp_path / "again", cut):
        assert (other / "final_params.msgpack").read_bytes() == (out / "final_params.msgpack").read_bytes()
    if extra:
        return
    # a checkpoint written before this fix: its record holds the calibrated dp_noise beside dp_epsilon
    import json

    old = back_to_checkpoint(out, tmp_path / "old", 2)
    rewrite_record(old, 2, dp_noise=json.loads((out / "summary.json").read_text())["dp_noise_multiplier"])
    assert main(["run", "--resume", str(old), "--no-progress"]) == 0
    assert (old / "final_params.msgpack").read_bytes() == (out / "final_params.msgpack").read_bytes()
