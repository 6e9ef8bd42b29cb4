"""Each algorithm's rounds through the engine equal an independent NumPy float64 implementation.

Linear regression on 8 clients of unequal size, 5 sampled per round (partial
participation, so the |S|/N factors and the cohort's state scatter matter),
full-batch local steps over 3 epochs (clients take 1 to 3 steps: the per-client
step counts matter), two rounds. Every persistent state is compared too:
SCAFFOLD's server and client controls, FedDyn's h and client gradients,
MimeLite's optimizer statistics.

Each algorithm runs on two (devices, chunk size) layouts (one for the second
variant of FedNova and MimeLite) that must match the reference and each other; across the algorithms every device count (1, 2,
4, 8) and every chunk size (1, 3, the whole cohort of 5) is used, with padding
slots in several. The full product of layouts, with minibatches, is
``test_algorithms_invariance.py`` (slow).
"""
import re

import jax
import numpy as np
import optax
import pytest

import algorithm_references as R
from jaxqfl import algorithms, engine, models
from jaxqfl.engine.schedule import LocalSchedule
from populations import regression_population

SIZES = [3, 8, 5, 2, 7, 4, 6, 1]
N, EPOCHS, COHORT, ROUNDS, LR = len(SIZES), 3, 5, 2, 0.05
WHOLE = COHORT


@pytest.fixture(scope="module")
def problem():
    pop = regression_population(SIZES, num_features=3, seed=5)
    steps = R.full_batch_epoch_steps(pop.counts, EPOCHS)
    assert steps == [2, 3, 2, 1, 3, 2, 3, 1]
    return pop, R.clients_of(pop), steps


def _run(pop, algorithm, layout=(2, 2), schedule=None):
    num_devices, chunk_size = layout
    schedule = schedule or LocalSchedule(local_epochs=EPOCHS, batch_size=None)
    sim = engine.build(pop, models.linear_regression(1), algorithm, schedule, cohort_size=COHORT,
                       num_devices=num_devices, chunk_size=chunk_size)
    state = sim.init(0)
    theta0 = R.flat_linear(jax.device_get(state.params))  # before run_block, which donates the state
    state, metrics = sim.run_block(state, ROUNDS)
    return theta0, jax.device_get(state), np.asarray(metrics.cohort)


def _client_rows(stacked):
    return np.array([R.flat_linear(jax.tree.map(lambda a: a[i], stacked)) for i in range(N)])


def _check(layouts, make, reference, tol=2e-5):
    """Run ``make(layout)`` on each layout; ``reference(theta0, cohorts, state) -> (expected, got)``,
    two dicts with the same names. Layouts must also agree with each other."""
    seen = []
    for layout in layouts:
        theta0, state, cohorts = _run(*make(layout))
        expected, got = reference(theta0, cohorts, state)
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], atol=tol, err_msg=f"{name} on layout {layout}")
        seen.append(got)
    for other in seen[1:]:
        for name in seen[0]:
            np.testing.assert_allclose(other[name], seen[0][name], rtol=1e-5, atol=1e-5, err_msg=f"{name}: layouts")


def test_fedprox_equals_numpy(problem):
    pop, clients, steps = problem

    def reference(theta, cohorts, state):
        for cohort in cohorts:
            theta = R.fedprox_round(theta, clients, cohort, steps, LR, 0.7, pop.counts)
        return {"params": theta}, {"params": R.flat_linear(state.params)}

    _check([(1, WHOLE), (8, WHOLE)], lambda layout: (pop, algorithms.fedprox(optax.sgd(LR), mu=0.7), layout),
           reference)


def test_scaffold_equals_numpy_with_controls(problem):
    pop, clients, steps = problem

    def reference(x, cohorts, state):
        c, controls = np.zeros_like(x), np.zeros((N, len(x)))
        for cohort in cohorts:
            x, c, controls = R.scaffold_round(x, c, controls, clients, cohort, steps, LR, 0.8)
        assert np.abs(controls).max() > 0.1  # the controls moved: not a comparison of zeros
        return ({"params": x, "control": c, "client_controls": controls},
                {"params": R.flat_linear(state.params), "control": R.flat_linear(state.algorithm_state.control),
                 "client_controls": _client_rows(state.client_states["algorithm"])})

    _check([(2, 3), (4, 1)], lambda layout: (pop, algorithms.scaffold(LR, global_lr=0.8), layout), reference,
           tol=5e-5)


@pytest.mark.parametrize("momentum,layouts", [(0.6, [(1, 3), (8, WHOLE)]), (0.0, [(2, 3)])])
def test_fednova_equals_numpy(problem, momentum, layouts):
    pop, clients, steps = problem

    def reference(x, cohorts, state):
        for cohort in cohorts:
            x = R.fednova_round(x, clients, cohort, steps, LR, momentum, pop.counts)
        return {"params": x}, {"params": R.flat_linear(state.params)}

    _check(layouts, lambda layout: (pop, algorithms.fednova(LR, momentum=momentum), layout), reference)


def test_feddyn_equals_numpy_with_h_and_client_gradients(problem):
    pop, clients, steps = problem
    alpha = 0.3

    def reference(theta, cohorts, state):
        h, grads = np.zeros_like(theta), np.zeros((N, len(theta)))
        for cohort in cohorts:
            theta, h, grads = R.feddyn_round(theta, h, grads, clients, cohort, steps, LR, alpha)
        assert np.abs(grads).max() > 0.05
        return ({"params": theta, "h": h, "client_grads": grads},
                {"params": R.flat_linear(state.params), "h": R.flat_linear(state.algorithm_state.h),
                 "client_grads": _client_rows(state.client_states["algorithm"])})

    _check([(4, 1), (1, WHOLE)], lambda layout: (pop, algorithms.feddyn(optax.sgd(LR), alpha=alpha), layout),
           reference, tol=5e-5)


@pytest.mark.parametrize("base,layouts", [("adam", [(2, 1), (1, 3)]), ("momentum", [(8, WHOLE)])])
def test_mimelite_equals_numpy_with_optimizer_statistics(problem, base, layouts):
    pop, clients, steps = problem
    if base == "momentum":
        make_opt, ref = lambda: optax.sgd(LR, momentum=0.9), R.Momentum(LR, 0.9)
    else:
        make_opt, ref = lambda: optax.adam(LR), R.Adam(LR)

    def reference(x, cohorts, state):
        s = ref.init(len(x))
        for cohort in cohorts:
            x, s = R.mimelite_round(x, s, ref, clients, cohort, steps, np.ones(N))
        stats = state.algorithm_state[0]
        if base == "momentum":
            return {"params": x, "m": s["m"]}, {"params": R.flat_linear(state.params), "m": R.flat_linear(stats.trace)}
        assert int(stats.count) == s["count"] == ROUNDS
        return ({"params": x, "m": s["m"], "v": s["v"]},
                {"params": R.flat_linear(state.params), "m": R.flat_linear(stats.mu), "v": R.flat_linear(stats.nu)})

    _check(layouts, lambda layout: (pop, algorithms.mimelite(make_opt()), layout), reference)


@pytest.fixture(scope="module")
def fedavg_four_steps(problem):
    pop, _, _ = problem
    return _run(pop, algorithms.fedavg(optax.sgd(LR)), schedule=LocalSchedule(local_steps=4, batch_size=None))[1]


def test_fedprox_with_mu_zero_equals_fedavg_exactly(problem, fedavg_four_steps):
    pop, _, _ = problem
    _, prox, _ = _run(pop, algorithms.fedprox(optax.sgd(LR), mu=0.0), schedule=LocalSchedule(local_steps=4,
                                                                                               batch_size=None))
    for a, b in zip(jax.tree.leaves(prox.params), jax.tree.leaves(fedavg_four_steps.params)):
        np.testing.assert_array_equal(a, b)


def test_fednova_with_equal_steps_equals_fedavg_exactly(problem, fedavg_four_steps):
    """tau = 4 for everyone: FedNova's x + tau * mean(Delta / tau) is FedAvg's x + mean Delta,
    bit for bit, since dividing and multiplying by a power of two is exact."""
    pop, _, _ = problem
    _, nova, _ = _run(pop, algorithms.fednova(LR), schedule=LocalSchedule(local_steps=4, batch_size=None))
    for a, b in zip(jax.tree.leaves(nova.params), jax.tree.leaves(fedavg_four_steps.params)):
        np.testing.assert_array_equal(a, b)


def test_bad_hyper_parameters_are_refused():
    for make, message in [
        (lambda: algorithms.fedprox(optax.sgd(0.1), mu=-0.1), "mu must be a number >= 0"),
        (lambda: algorithms.scaffold(0.0), "local_lr must be a number > 0"),
        (lambda: algorithms.scaffold(0.1, global_lr=-1), "global_lr must be a number > 0"),
        (lambda: algorithms.fednova(0.1, momentum=1.0), "momentum must be a number in [0, 1)"),
        (lambda: algorithms.feddyn(optax.sgd(0.1), alpha=0), "alpha must be a number > 0"),
        (lambda: algorithms.mimelite(optax.sgd(0.1), weighting="size"), "weighting must be one of"),
        (lambda: algorithms.mimelite("adam"), "optax.GradientTransformation"),
    ]:
        with pytest.raises((ValueError, TypeError), match=re.escape(message)):
            make()


def test_traced_hyper_parameters_in_a_sweep_equal_numpy(problem):
    """``engine.build_sweep`` hands the factory traced scalars: FedNova's momentum (0 takes the
    general norm formula then) and local lr, each config against NumPy."""
    pop, clients, steps = problem
    configs = [{"seed": 0, "momentum": 0.0, "lr": LR}, {"seed": 0, "momentum": 0.6, "lr": 0.03}]
    sim = engine.build_sweep(pop, models.linear_regression(1), lambda hp: algorithms.fednova(hp["lr"], hp["momentum"]),
                             LocalSchedule(local_epochs=EPOCHS, batch_size=None), configs=configs,
                             cohort_size=COHORT, num_devices=2)
    state = sim.init()
    theta0 = [R.flat_linear(jax.tree.map(lambda a: a[s], jax.device_get(state.params))) for s in range(2)]
    state, metrics = jax.device_get(sim.run_block(state, ROUNDS))
    cohorts = np.asarray(metrics.cohort)  # [rounds, configs, M]
    for s, config in enumerate(configs):
        x = theta0[s]
        for r in range(ROUNDS):
            x = R.fednova_round(x, clients, cohorts[r, s], steps, config["lr"], config["momentum"], pop.counts)
        np.testing.assert_allclose(R.flat_linear(jax.tree.map(lambda a: a[s], state.params)), x, atol=2e-5)
