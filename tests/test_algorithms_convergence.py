"""Client drift and objective inconsistency on heterogeneous least squares (full participation).

Client i minimises F_i(w) = mean_j (x_ij w + b - y_ij)^2 = (1/n) ||A_i theta - b_i||^2 with
A_i = [X_i, 1]; clients differ in their features' scale and mean and in their optimum.

* Equal client sizes, 20 full-batch local steps: FedAvg stops at a point measurably
  away from the minimiser of the average objective (client drift), while SCAFFOLD and
  FedDyn converge to it (error < 1e-3): their fixed points are that minimiser exactly.
* Unequal local work (sizes 4, 8, 12, 16; 8 full-batch epochs: 2, 4, 6, 8 steps),
  examples weighting: FedAvg converges to the minimiser of sum_i n_i tau_i F_i, not of
  the weighted objective sum_i n_i F_i (objective inconsistency, Wang et al. 2020).
  FedNova's fixed point differs from the weighted minimiser only by O(lr) (its
  normalisation is exact to first order in lr): its error is a small fraction of
  FedAvg's and halves when lr halves, while FedAvg's does not shrink.
"""
import jax
import numpy as np
import optax

import algorithm_references as R
from jaxqfl import algorithms, engine, models
from jaxqfl.data.population import from_client_indices
from jaxqfl.engine.schedule import LocalSchedule


def _population(sizes, features, targets):
    x = np.concatenate(features).astype(np.float32)
    y = np.concatenate(targets).astype(np.float32)
    bounds = np.cumsum([0, *sizes])
    idx = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(sizes))]
    return from_client_indices(x, y, idx, x[:8], y[:8], 0)


def drift_population():
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for i in range(4):
        x = rng.normal(size=(8, 3)) * np.array([1, 2, 0.5]) ** ((i - 1.5) / 2) + 0.3 * (i - 1.5)
        xs.append(x)
        ys.append(x @ rng.normal(size=3) + 2 * rng.normal(size=8))
    return _population([8] * 4, xs, ys)


def inconsistency_population():
    rng = np.random.default_rng(1)
    sizes, xs, ys = [4, 8, 12, 16], [], []
    for i, n in enumerate(sizes):
        x = rng.normal(size=(n, 3))
        xs.append(x)
        ys.append(x @ rng.normal(size=3) + 0.2 * rng.normal(size=n) + 0.2 * (i - 1.5))
    return _population(sizes, xs, ys)


def _final_params(pop, algorithm, schedule, rounds):
    sim = engine.build(pop, models.linear_regression(1), algorithm, schedule, cohort_size=pop.num_clients,
                       num_devices=2)
    state, _ = sim.run_block(sim.init(0), rounds)
    return R.flat_linear(jax.device_get(state.params))


def test_scaffold_and_feddyn_reach_the_average_minimiser_and_fedavg_drifts():
    pop = drift_population()
    target = R.average_minimiser(R.clients_of(pop))
    schedule, lr, rounds = LocalSchedule(local_steps=20, batch_size=None), 0.05, 60
    err = {
        name: np.max(np.abs(_final_params(pop, alg, schedule, rounds) - target))
        for name, alg in [
            ("fedavg", algorithms.fedavg(optax.sgd(lr), weighting="uniform")),
            ("scaffold", algorithms.scaffold(lr)),
            ("feddyn", algorithms.feddyn(optax.sgd(lr), alpha=1.0)),
        ]
    }
    assert err["scaffold"] < 1e-3, err
    assert err["feddyn"] < 1e-3, err
    assert err["fedavg"] > 0.05, err  # drift: ~0.14 in exact arithmetic


def test_fednova_removes_the_objective_inconsistency_of_unequal_local_steps():
    pop = inconsistency_population()
    clients = R.clients_of(pop)
    steps = R.full_batch_epoch_steps(pop.counts, 8)
    assert steps == [2, 4, 6, 8]
    weighted = R.average_minimiser(clients, pop.counts)
    schedule = LocalSchedule(local_epochs=8, batch_size=None)
    err = {}
    for lr, rounds in ((0.01, 400), (0.005, 800)):
        err["fednova", lr] = np.max(np.abs(_final_params(pop, algorithms.fednova(lr), schedule, rounds) - weighted))
    err["fedavg", 0.01] = np.max(np.abs(
        _final_params(pop, algorithms.fedavg(optax.sgd(0.01)), schedule, 400) - weighted))
    # FedAvg's fixed point weights client i by n_i tau_i:
    skewed = R.average_minimiser(clients, np.asarray(pop.counts) * np.asarray(steps))
    assert err["fedavg", 0.01] > 0.15 and np.max(np.abs(skewed - weighted)) > 0.15, err
    assert err["fednova", 0.01] < 0.1 * err["fedavg", 0.01], err
    assert err["fednova", 0.005] < 0.6 * err["fednova", 0.01], err  # O(lr): halves with lr
