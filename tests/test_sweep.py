"""Sweeps: S configs in one program equal S single runs; one compilation; configs do not leak into each other."""
import jax
import numpy as np
import optax
import pytest

from jaxqfl import algorithms, compress, engine, models
from jaxqfl.engine.compilations import CompilationLog
from populations import classification_population


@pytest.fixture(scope="module")
def population():
    rng = np.random.default_rng(11)
    return classification_population(rng.integers(2, 14, size=18).tolist(), num_features=5, num_classes=3, seed=11)


MODEL = models.mlp(hidden=(6,), num_outputs=3)
SCHEDULE = engine.LocalSchedule(local_steps=2, batch_size=3)


def fedavgm(hp):
    """FedAvg with server momentum (algorithm state) from traced hyper-parameters."""
    return algorithms.fedavg(optax.sgd(hp["client_lr"]), optax.sgd(hp["server_lr"], momentum=0.5))


def _single(population, config, uplink, num_devices):
    hp = {k: v for k, v in config.items() if k != "seed"}
    sim = engine.build(population, MODEL, fedavgm(hp), SCHEDULE, cohort_size=5, num_devices=num_devices,
                       chunk_size=2, uplink=uplink)
    return jax.device_get(sim.run_block(sim.init(config["seed"]), 3))


def _sweep(population, configs, uplink, num_devices):
    sim = engine.build_sweep(population, MODEL, fedavgm, SCHEDULE, configs=configs, cohort_size=5,
                             num_devices=num_devices, chunk_size=2, uplink=uplink)
    return sim, jax.device_get(sim.run_block(sim.init(), 3))


def _close(a, b, tol=1e-5):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u, np.float64), np.asarray(v, np.float64), atol=tol)


@pytest.mark.parametrize("spec,num_devices", [
    # all under -m slow (CI budget): a sweep equals its single runs by default in test_sweep_hparams (FedProx mu,
    # local steps), the CLI sweep test and the codec-and-preset CLI sweep
    pytest.param("topk:0.4+ef", 4, marks=pytest.mark.slow),
    pytest.param("qsgd:4", 1, marks=pytest.mark.slow),
    pytest.param("qsgd:4", 4, marks=pytest.mark.slow), pytest.param("topk:0.4+ef", 1, marks=pytest.mark.slow)])
def test_each_config_equals_its_single_run(population, num_devices, spec):
    """FedAvg with a codec; FedAvgM + error feedback keeps server and per-client state."""
    codec = compress.from_spec(spec)
    configs = engine.grid([0, 3], client_lr=[0.1, 0.3], server_lr=[1.0])
    _, (states, metrics) = _sweep(population, configs, codec, num_devices)
    assert metrics.train_loss.shape == (3, len(configs))
    for s, config in enumerate(configs):
        state, m = _single(population, config, codec, num_devices)
        np.testing.assert_array_equal(metrics.cohort[:, s], m.cohort)
        _close(jax.tree.map(lambda a: a[s], states.params), state.params)
        _close(jax.tree.map(lambda a: a[s], states.algorithm_state), state.algorithm_state)
        _close(jax.tree.map(lambda a: a[s], states.client_states), state.client_states)
        np.testing.assert_allclose(metrics.train_loss[:, s], m.train_loss, atol=1e-5)


def test_a_sweep_compiles_its_block_once_and_configs_do_not_leak(population):
    configs = engine.grid([0, 1], client_lr=[0.1, 0.2], server_lr=[1.0])
    with CompilationLog() as log:
        sim, (states, _) = _sweep(population, configs, None, 2)
        sim.run_block(sim.init(), 3)
    assert log.count("jit(sweep_block)") == 1, log.counts()
    changed = [dict(c) for c in configs]
    changed[2]["client_lr"] = 0.5  # only config 2 differs
    _, (other, _) = _sweep(population, changed, None, 2)
    for s in range(len(configs)):
        diff = max(float(np.max(np.abs(np.asarray(a)[s] - np.asarray(b)[s])))
                   for a, b in zip(jax.tree.leaves(states.params), jax.tree.leaves(other.params)))
        assert (diff > 1e-4) if s == 2 else (diff == 0.0), (s, diff)


def test_grid_and_bad_configs():
    assert engine.grid([0, 1], lr=[0.1, 0.2]) == [{"lr": 0.1, "seed": 0}, {"lr": 0.1, "seed": 1},
                                                  {"lr": 0.2, "seed": 0}, {"lr": 0.2, "seed": 1}]
    from jaxqfl.engine.sweep import check_configs

    with pytest.raises(ValueError, match="config 1"):
        check_configs([{"seed": 0, "lr": 0.1}, {"seed": 1}])
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        check_configs([{"seed": -1, "lr": 0.1}])
    with pytest.raises(ValueError, match="at least one config"):
        check_configs([])


def test_cli_sweep_writes_one_folder_per_config_and_the_mean_over_seeds(tmp_path):
    import json

    from jaxqfl.cli.main import main

    common = ["run", "--num-clients", "40", "--cohort-size", "8", "--rounds", "4", "--eval-every", "2",
              "--devices", "2", "--chunk-size", "2", "--no-progress"]
    import time

    from jaxqfl.experiment.process_clock import MAIN_CALL

    t0 = time.time()
    assert main(common + ["--seeds", "0-1", "--client-lr", "0.01,0.05", "--out", str(tmp_path / "sw")]) == 0
    wall = time.time() - t0
    strict = lambda text: json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    report = strict((tmp_path / "sw" / "sweep.json").read_text())
    assert report["num_configs"] == 4 and report["swept"] == ["client_lr"]
    # time to the first round (from this main() call) and the spread of the rounds' times, as a single run's summary
    assert report["startup_from"] == MAIN_CALL and 0 < report["startup_seconds"] < wall
    assert report["startup_seconds"] >= report["compile_seconds"]
    assert 0 < report["round_seconds_p10"] <= report["round_seconds_median"] <= report["round_seconds_p90"] < wall
    for row in report["by_hyperparameters"]:
        finals = [strict((tmp_path / "sw" / f"client_lr={row['client_lr']:g},seed={s}" / "summary.json")
                         .read_text())["final_loss"] for s in (0, 1)]
        assert row["seeds"] == [0, 1]
        np.testing.assert_allclose(row["test_loss_mean"], np.mean(finals), rtol=1e-12)
        np.testing.assert_allclose(row["test_loss_std"], np.std(finals, ddof=1), rtol=1e-9)
        assert len((tmp_path / "sw" / f"client_lr={row['client_lr']:g},seed=0" / "metrics.jsonl")
                   .read_text().splitlines()) == 2
    losses = [r["test_loss_mean"] for r in report["by_hyperparameters"]]
    assert losses[0] != losses[1]  # the two learning rates trained differently


def test_the_spread_of_one_seed_is_undefined_not_zero():
    """The sample std (ddof=1) of one value is undefined: null in sweep.json and no '± 0.0000' in sweep.md, which
    read as 'no spread between seeds'; two seeds keep theirs."""
    from jaxqfl.experiment.sweep_runner import markdown, summarize

    configs = [{"client_lr": 0.1, "seed": 0}, {"client_lr": 0.2, "seed": 0}, {"client_lr": 0.2, "seed": 1}]
    finals = [{"test_accuracy": 0.5}, {"test_accuracy": 0.6}, {"test_accuracy": 0.7}]
    one, two = summarize(configs, finals)
    assert one["test_accuracy_mean"] == 0.5 and one["test_accuracy_std"] is None
    assert two["test_accuracy_std"] == pytest.approx(np.std([0.6, 0.7], ddof=1))
    table = markdown([one, two], ["client_lr"]).splitlines()
    assert table[2].endswith("| 0.5000 |") and "±" not in table[2] and "0.6500 ± 0.0707" in table[3]
