"""Sweeps over FedProx mu, the DP noise multiplier and local steps, and sweeps with robust, private,
integer and secure aggregators: config s of the sweep equals the single run of config s."""
import json

import jax
import numpy as np
import optax
import pytest

from jaxqfl import aggregate, algorithms, compress, engine, models, privacy
from jaxqfl.engine.compilations import CompilationLog
from cli_refusals import assert_refused_before_any_work
from populations import classification_population


@pytest.fixture(scope="module")
def population():
    rng = np.random.default_rng(5)
    return classification_population(rng.integers(2, 12, size=14).tolist(), num_features=4, num_classes=3, seed=5)


MODEL = models.mlp(hidden=(5,), num_outputs=3)
SCHEDULE = engine.LocalSchedule(local_steps=2, batch_size=3)
ROUNDS = 2


def _without_key(state):
    return state._replace(key=None)


def _assert_config_equals_single(population, configs, make_algorithm, s, *, make_aggregator=None,
                                 schedule=SCHEDULE, single_schedule=None, uplink=None):
    """Config ``s`` of the sweep of ``configs`` equals the single run built from its hyper-parameters."""
    make_aggregator = make_aggregator or (lambda hp: aggregate.mean())
    with CompilationLog() as log:
        sim = engine.build_sweep(population, MODEL, make_algorithm, schedule, configs=configs, cohort_size=4,
                                 num_devices=2, chunk_size=2, make_aggregator=make_aggregator, uplink=uplink)
        states, metrics = jax.device_get(sim.run_block(sim.init(), ROUNDS))
    assert log.count("jit(sweep_block)") == 1, log.counts()
    hp = {k: v for k, v in configs[s].items() if k != "seed"}
    single = engine.build(population, MODEL, make_algorithm(hp), single_schedule or schedule, cohort_size=4,
                          num_devices=2, chunk_size=2, aggregator=make_aggregator(hp), uplink=uplink)
    state, m = jax.device_get(single.run_block(single.init(configs[s]["seed"]), ROUNDS))
    mine = jax.tree.map(lambda a: a[s], _without_key(states))
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(_without_key(state)), strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), atol=1e-5)
    np.testing.assert_allclose(metrics.train_loss[:, s], m.train_loss, atol=1e-5)
    for name, value in m.server.items():
        np.testing.assert_allclose(metrics.server[name][:, s], value, atol=1e-5)
    return states, metrics


def test_fedprox_mu_and_local_steps_sweep_config_equals_the_single_run(population):
    """mu reaches the clients as a traced value; local steps pad to the sweep's largest count (3) and
    the padded steps move neither the parameters nor the local momentum, nor count as steps."""

    def fedprox(hp):
        return algorithms.fedprox(optax.sgd(0.2, momentum=0.5), hp["mu"])

    configs = engine.grid([1], mu=[0.0, 2.0], local_steps=[2, 3])  # (mu, K): (0, 2) (0, 3) (2, 2) (2, 3)
    states, metrics = _assert_config_equals_single(
        population, configs, fedprox, 2, single_schedule=engine.LocalSchedule(local_steps=2, batch_size=3))
    assert set(np.unique(metrics.local_steps[:, 2])) == {2} and set(np.unique(metrics.local_steps[:, 3])) == {3}
    gap = max(float(np.max(np.abs(a[0] - a[2]))) for a in jax.tree.leaves(states.params))
    assert gap > 1e-4  # mu changed the training: configs 0 and 2 differ in mu only
    with pytest.raises(ValueError, match="local_steps must be positive integers"):
        engine.build_sweep(population, MODEL, fedprox, SCHEDULE,
                           configs=engine.grid([0], mu=[0.1], local_steps=[2.5]),
                           cohort_size=4)


@pytest.mark.slow
def test_dp_noise_sweep_config_equals_the_single_dp_run(population):
    """Adaptive clipping keeps a clip norm in the aggregator state: it gets the config axis too."""

    def dp(hp):
        return aggregate.dp_mean(0.5, hp["dp_noise"], target_quantile=0.5, count_noise_std=0.2)

    fedavg = lambda hp: algorithms.fedavg(optax.sgd(0.2))
    configs = engine.grid([0, 2], dp_noise=[0.0, 0.8])
    _, metrics = _assert_config_equals_single(population, configs, fedavg, 3, make_aggregator=dp)
    np.testing.assert_allclose(metrics.server["dp_noise_std"][0], [0.0, 0.0, 0.4, 0.4], rtol=1e-6)


@pytest.mark.slow
def test_robust_aggregator_with_an_omniscient_attack_sweep_equals_single_runs(population):
    """Krum (a "gather" reduction) under ALIE (a cohort pre-pass): the state carries the config axis."""

    def krum(hp):
        return aggregate.attacked(aggregate.krum(0.25), "alie", 0.3, num_clients=population.num_clients,
                                  num_classes=3, seed=0)[0]

    fedavg = lambda hp: algorithms.fedavg(optax.sgd(hp["client_lr"]))
    configs = engine.grid([4], client_lr=[0.05, 0.3])
    _assert_config_equals_single(population, configs, fedavg, 1, make_aggregator=krum)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["integer", "secure", "median"])
def test_integer_secure_and_median_sweeps_equal_single_runs(population, kind):
    codec = compress.from_spec("uniform:8")
    make = {"integer": lambda hp: aggregate.integer_mean(codec),
            "secure": lambda hp: aggregate.secure_sum(codec, num_clients=population.num_clients, cohort_size=4,
                                                      dropout=0.25),
            "median": lambda hp: aggregate.median()}[kind]
    fedavg = lambda hp: algorithms.fedavg(optax.sgd(hp["client_lr"]))
    configs = engine.grid([0, 1], client_lr=[0.05, 0.3])
    _assert_config_equals_single(population, configs, fedavg, 3, make_aggregator=make,
                                 uplink=None if kind == "median" else codec)


@pytest.mark.slow
def test_cli_dp_noise_sweep_reports_each_configs_own_epsilon(tmp_path):
    from jaxqfl.cli.main import main

    out = tmp_path / "dp"
    argv = ["run", "--num-clients", "30", "--cohort-size", "6", "--rounds", "2", "--eval-every", "1",
            "--local-steps", "2", "--devices", "2", "--chunk-size", "3", "--no-progress",
            "--dp-clip", "0.5", "--dp-noise", "0.7,1.5", "--out", str(out)]
    assert main(argv) == 0
    strict = lambda text: json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    report = strict((out / "sweep.json").read_text())
    assert report["swept"] == ["dp_noise"]
    delta = 1.0 / 30 ** 1.1
    epsilons = []
    for noise in (0.7, 1.5):
        folder = out / f"dp_noise={noise:g},seed=0"
        summary = strict((folder / "summary.json").read_text())
        want = privacy.epsilon(noise, delta, 2, num_clients=30, cohort_size=6)
        assert summary["dp_noise_multiplier"] == noise
        np.testing.assert_allclose(summary["dp_epsilon"], want, rtol=1e-9)
        records = [strict(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        np.testing.assert_allclose([r["dp_epsilon"] for r in records],
                                   [privacy.epsilon(noise, delta, r, num_clients=30, cohort_size=6) for r in (1, 2)],
                                   rtol=1e-9)
        np.testing.assert_allclose([r["server_dp_noise_std"] for r in records], 0.5 * noise, rtol=1e-6)  # z C
        epsilons.append(summary["dp_epsilon"])
        assert [c["dp_epsilon"] for c in report["configs"] if c["dp_noise"] == noise] == [summary["dp_epsilon"]]
    assert epsilons[0] > epsilons[1]  # more noise, less privacy spent
    pytest.importorskip("matplotlib")
    from jaxqfl.cli.plot_command import sweep_curves

    curves = sweep_curves(str(out))  # the real sweep.json: one curve per noise, one seed each (no band)
    assert [c["hyperparameters"] for c in curves] == [{"dp_noise": 0.7}, {"dp_noise": 1.5}]
    assert all(c["std"]["test_loss"] == [0.0, 0.0] for c in curves)
    assert main(["plot", str(out), "--out", str(tmp_path / "dp.png"), "--dpi", "40"]) == 0


def _fake_sweep(folder, rng):
    """A sweep folder as ``jaxqfl run --seeds 0-2 --client-lr 0.1,0.3`` writes it, with random metrics."""
    configs = engine.grid([0, 1, 2], client_lr=[0.1, 0.3])
    from jaxqfl.experiment.sweep_runner import config_name

    rows = []
    for c in configs:
        name = config_name(c)
        (folder / name).mkdir(parents=True)
        records = [{"round": r, "test_loss": float(rng.uniform(0.5, 2)), "test_accuracy": float(rng.uniform()),
                    "uplink_bits_total": int(rng.integers(1000, 2000)) * r} for r in (2, 4, 6)]
        (folder / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        rows.append({**c, "folder": name, "records": records})
    (folder / "sweep.json").write_text(json.dumps({"swept": ["client_lr"], "configs": [
        {k: v for k, v in r.items() if k != "records"} for r in rows]}))
    return rows


def test_plot_of_a_sweep_draws_the_mean_over_seeds_with_a_one_std_band(tmp_path):
    pytest.importorskip("matplotlib")
    from jaxqfl.cli.main import main
    from jaxqfl.cli.plot_command import sweep_curves

    rows = _fake_sweep(tmp_path / "sw", np.random.default_rng(0))
    curves = sweep_curves(str(tmp_path / "sw"))
    assert [c["hyperparameters"] for c in curves] == [{"client_lr": 0.1}, {"client_lr": 0.3}]
    for curve in curves:
        members = [r for r in rows if r["client_lr"] == curve["hyperparameters"]["client_lr"]]
        assert curve["seeds"] == [0, 1, 2] and curve["round"] == [2, 4, 6]
        for metric in ("test_loss", "test_accuracy"):
            per_config = np.array([[rec[metric] for rec in r["records"]] for r in members])  # [seeds, R]
            np.testing.assert_allclose(curve["mean"][metric], per_config.mean(axis=0), rtol=1e-12)
            np.testing.assert_allclose(curve["std"][metric], per_config.std(axis=0, ddof=1), rtol=1e-12)
    fig = tmp_path / "sweep.png"
    assert main(["plot", str(tmp_path / "sw"), "--out", str(fig), "--dpi", "40"]) == 0
    assert fig.stat().st_size > 1000


@pytest.mark.parametrize("argv,message", [
    (["--seeds", "0-1", "--client-state", "host"], "drop --client-state host"),
    (["--local-steps", "2,4", "--local-epochs", "1"], "not both"),
    (["--mu", "0.1,1"], "--mu applies to --algorithm fedprox"),
    (["--dp-noise", "0.5,1"], "--dp-noise needs --dp-clip"),
    (["--local-steps", "2,0"], "positive"),
])
def test_bad_sweep_flags_are_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message)
