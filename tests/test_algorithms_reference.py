"""Each algorithm's rounds through the engine equal an independent NumPy float64 implementation.

Linear regression on 5 clients of unequal size, 3 sampled per round (partial
participation, so the |S|/N factors and the cohort's state scatter matter),
full-batch local steps over 3 epochs (so clients take 2, 3, 2, 1 and 3 steps:
the per-client step counts matter), two rounds on 2 devices with chunks of 2.
Every persistent state is compared too: SCAFFOLD's server and client controls,
FedDyn's h and client gradients, MimeLite's optimizer statistics.
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

SIZES = [3, 8, 5, 2, 7]
EPOCHS, COHORT, ROUNDS, LR = 3, 3, 2, 0.05


@pytest.fixture(scope="module")
def problem():
    pop = regression_population(SIZES, num_features=3, seed=5)
    steps = R.full_batch_epoch_steps(pop.counts, EPOCHS)
    assert steps == [2, 3, 2, 1, 3]
    return pop, R.clients_of(pop), steps


def _run(pop, algorithm, schedule=None, rounds=ROUNDS, cohort=COHORT, num_devices=2, chunk_size=2):
    schedule = schedule or LocalSchedule(local_epochs=EPOCHS, batch_size=None)
    sim = engine.build(pop, models.linear_regression(1), algorithm, schedule, cohort_size=cohort,
                       num_devices=num_devices, chunk_size=chunk_size)
    state0 = sim.init(0)
    state, metrics = sim.run_block(state0, rounds)
    return R.flat_linear(jax.device_get(state0.params)), jax.device_get(state), np.asarray(metrics.cohort)


def _client_rows(stacked, n):
    return np.array([R.flat_linear(jax.tree.map(lambda a: a[i], stacked)) for i in range(n)])


def test_fedprox_equals_numpy(problem):
    pop, clients, steps = problem
    theta, state, cohorts = _run(pop, algorithms.fedprox(optax.sgd(LR), mu=0.7))
    for cohort in cohorts:
        theta = R.fedprox_round(theta, clients, cohort, steps, LR, 0.7, pop.counts)
    np.testing.assert_allclose(R.flat_linear(state.params), theta, atol=2e-5)


def test_scaffold_equals_numpy_with_controls(problem):
    pop, clients, steps = problem
    x, state, cohorts = _run(pop, algorithms.scaffold(LR, global_lr=0.8))
    c, controls = np.zeros_like(x), np.zeros((len(SIZES), len(x)))
    for cohort in cohorts:
        x, c, controls = R.scaffold_round(x, c, controls, clients, cohort, steps, LR, 0.8)
    np.testing.assert_allclose(R.flat_linear(state.params), x, atol=2e-5)
    np.testing.assert_allclose(R.flat_linear(state.algorithm_state.control), c, atol=2e-5)
    np.testing.assert_allclose(_client_rows(state.client_states["algorithm"], len(SIZES)), controls, atol=5e-5)
    assert np.abs(controls).max() > 0.1  # the controls moved: the comparison is not of zeros


@pytest.mark.parametrize("momentum", [0.0, 0.6])
def test_fednova_equals_numpy(problem, momentum):
    pop, clients, steps = problem
    x, state, cohorts = _run(pop, algorithms.fednova(LR, momentum=momentum))
    for cohort in cohorts:
        x = R.fednova_round(x, clients, cohort, steps, LR, momentum, pop.counts)
    np.testing.assert_allclose(R.flat_linear(state.params), x, atol=2e-5)


def test_feddyn_equals_numpy_with_h_and_client_gradients(problem):
    pop, clients, steps = problem
    alpha = 0.3
    theta, state, cohorts = _run(pop, algorithms.feddyn(optax.sgd(LR), alpha=alpha))
    h, grads = np.zeros_like(theta), np.zeros((len(SIZES), len(theta)))
    for cohort in cohorts:
        theta, h, grads = R.feddyn_round(theta, h, grads, clients, cohort, steps, LR, alpha)
    np.testing.assert_allclose(R.flat_linear(state.params), theta, atol=2e-5)
    np.testing.assert_allclose(R.flat_linear(state.algorithm_state.h), h, atol=2e-5)
    np.testing.assert_allclose(_client_rows(state.client_states["algorithm"], len(SIZES)), grads, atol=5e-5)
    assert np.abs(grads).max() > 0.05


@pytest.mark.parametrize("base", ["momentum", "adam"])
def test_mimelite_equals_numpy_with_optimizer_statistics(problem, base):
    pop, clients, steps = problem
    if base == "momentum":
        opt, ref = optax.sgd(LR, momentum=0.9), R.Momentum(LR, 0.9)
    else:
        opt, ref = optax.adam(LR), R.Adam(LR)
    x, state, cohorts = _run(pop, algorithms.mimelite(opt))
    s = ref.init(len(x))
    for cohort in cohorts:
        x, s = R.mimelite_round(x, s, ref, clients, cohort, steps, np.ones(len(SIZES)))
    np.testing.assert_allclose(R.flat_linear(state.params), x, atol=2e-5)
    opt_state = state.algorithm_state
    if base == "momentum":
        np.testing.assert_allclose(R.flat_linear(opt_state[0].trace), s["m"], atol=2e-5)
    else:
        np.testing.assert_allclose(R.flat_linear(opt_state[0].mu), s["m"], atol=2e-5)
        np.testing.assert_allclose(R.flat_linear(opt_state[0].nu), s["v"], atol=2e-5)
        assert int(opt_state[0].count) == s["count"] == ROUNDS


def test_fedprox_with_mu_zero_equals_fedavg_exactly(problem):
    pop, _, _ = problem
    _, prox, _ = _run(pop, algorithms.fedprox(optax.sgd(LR), mu=0.0))
    _, avg, _ = _run(pop, algorithms.fedavg(optax.sgd(LR)))
    for a, b in zip(jax.tree.leaves(prox.params), jax.tree.leaves(avg.params)):
        np.testing.assert_array_equal(a, b)


def test_fednova_with_equal_steps_equals_fedavg(problem):
    """tau = 4 for everyone: FedNova's x + tau * mean(Delta / tau) is FedAvg's x + mean Delta,
    exactly since dividing and multiplying by a power of two is exact (and to rounding for tau = 3)."""
    pop, _, _ = problem
    for tau, exact in ((4, True), (3, False)):
        schedule = LocalSchedule(local_steps=tau, batch_size=None)
        _, nova, _ = _run(pop, algorithms.fednova(LR), schedule)
        _, avg, _ = _run(pop, algorithms.fedavg(optax.sgd(LR)), schedule)
        for a, b in zip(jax.tree.leaves(nova.params), jax.tree.leaves(avg.params)):
            if exact:
                np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


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
