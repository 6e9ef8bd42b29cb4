"""Ditto, FedRep, FedPer, Per-FedAvg and q-FFL through the engine equal NumPy references of their papers.

The setting of ``test_algorithms_reference.py``: linear regression on 8 clients
of unequal size, 5 sampled per round, full-batch local steps over 3 epochs
(clients take 1 to 3 steps, so odd and even step counts both occur for the
alternating algorithms), two rounds. Persistent per-client state (Ditto's
personal models, FedRep's and FedPer's heads) is compared for every client,
on 1 and 4 devices and in every client-state home.
"""
import jax
import numpy as np
import optax
import pytest

import algorithm_references as R
import personal_references as PR
from jaxqfl import algorithms, engine, models
from jaxqfl.engine.schedule import LocalSchedule
from populations import regression_population

# linear regression with a pooled test set: the personal models are not evaluated (the engine says so)
pytestmark = pytest.mark.filterwarnings("ignore:the clients' personal models are not evaluated")

SIZES = [3, 8, 5, 2, 7, 4, 6, 1]
N, EPOCHS, COHORT, ROUNDS, LR = len(SIZES), 3, 5, 2, 0.05
LAYOUTS = [(1, 5, "replicated"), (4, 1, "sharded"), (2, 3, "host")]


@pytest.fixture(scope="module")
def problem():
    pop = regression_population(SIZES, num_features=3, seed=5)
    return pop, R.clients_of(pop), R.full_batch_epoch_steps(pop.counts, EPOCHS)


def _run(pop, algorithm, layout, schedule=None):
    devices, chunk, home = layout
    sim = engine.build(pop, models.linear_regression(1), algorithm,
                       schedule or LocalSchedule(local_epochs=EPOCHS, batch_size=None), cohort_size=COHORT,
                       num_devices=devices, chunk_size=chunk, client_state=home)
    state = sim.init(0)
    theta0 = R.flat_linear(jax.device_get(state.params))
    state, metrics = sim.run_block(state, ROUNDS)
    return theta0, jax.device_get(state), np.asarray(metrics.cohort), np.asarray(metrics.uplink_bits)


def _rows(stacked):
    return np.array([R.flat_linear(jax.tree.map(lambda a: a[i], stacked)) for i in range(N)])


def _head_rows(stacked_heads):
    """FedRep/FedPer client states are the head's leaves (the bias): as [N, 4] vectors, zeros off the head."""
    (bias,) = stacked_heads
    return np.hstack([np.zeros((N, 3)), np.asarray(bias, np.float64)[:N]])


def test_ditto_equals_numpy_with_personal_models(problem):
    pop, clients, steps = problem
    assert {s % 2 for s in steps} == {0, 1}
    for layout in LAYOUTS:
        theta0, state, cohorts, _ = _run(pop, algorithms.ditto(optax.sgd(LR), 0.08, 0.5), layout)
        theta, personal = theta0, np.tile(theta0, (N, 1))
        for cohort in cohorts:
            theta, personal = PR.ditto_round(theta, personal, clients, cohort, steps, LR, 0.08, 0.5, pop.counts)
        assert np.abs(personal - theta0).max() > 0.05  # the personal models moved
        np.testing.assert_allclose(R.flat_linear(state.params), theta, atol=2e-5, err_msg=str(layout))
        np.testing.assert_allclose(_rows(state.client_states["algorithm"])[:N], personal, atol=2e-5,
                                   err_msg=str(layout))


def test_ditto_limits_lambda_zero_is_local_training_and_infinite_lambda_is_the_global_model(problem):
    pop, clients, steps = problem
    theta0, state, cohorts, _ = _run(pop, algorithms.ditto(optax.sgd(LR), 0.08, 1e12), LAYOUTS[0])
    sampled = set(np.asarray(cohorts).ravel().tolist())
    theta = theta0
    received = {}
    for cohort in cohorts:
        for i in cohort:
            received[i] = theta  # the global model client i last received
        theta, _ = PR.ditto_round(theta, np.tile(theta0, (N, 1)), clients, cohort, steps, LR, 0.08, 0.0, pop.counts)
    got = _rows(state.client_states["algorithm"])
    for i in sampled:
        if steps[i] > 1:  # the client took a personal step: v_i is pulled onto the global model it received
            np.testing.assert_allclose(got[i], received[i], atol=1e-6)
    # lambda = 0: the personal model is plain local SGD on the client's own data, never pulled
    theta0, state, cohorts, _ = _run(pop, algorithms.ditto(optax.sgd(LR), 0.08, 0.0), LAYOUTS[0])
    local = np.tile(theta0, (N, 1))
    for cohort in cohorts:
        for i in cohort:
            for _ in range(steps[i] // 2):
                local[i] = local[i] - 0.08 * R.grad(local[i], clients[i])
    np.testing.assert_allclose(_rows(state.client_states["algorithm"]), local, atol=2e-5)


@pytest.mark.parametrize("name", ["fedrep", "fedper"])
def test_fedrep_and_fedper_equal_numpy_and_heads_never_leave_their_client(problem, name):
    pop, clients, steps = problem
    make = algorithms.fedrep if name == "fedrep" else algorithms.fedper
    head = np.array([False, False, False, True])  # Dense_0/bias is the head, the kernel the body
    bits = {}
    for layout in LAYOUTS:
        theta0, state, cohorts, up = _run(pop, make(optax.sgd(LR), "bias"), layout)
        theta, heads = theta0, np.tile(np.where(head, theta0, 0.0), (N, 1))
        for cohort in cohorts:
            theta, heads = PR.head_round(theta, heads, clients, cohort, steps, LR, head, pop.counts,
                                         phases=name == "fedrep")
        assert np.abs(heads[:, 3] - theta0[3]).max() > 0.01  # the heads moved
        np.testing.assert_allclose(R.flat_linear(state.params), theta, atol=2e-5, err_msg=str(layout))
        np.testing.assert_allclose(_head_rows(state.client_states["algorithm"]), heads, atol=2e-5,
                                   err_msg=str(layout))
        assert R.flat_linear(state.params)[3] == theta0[3]  # the server's head is never trained
        bits[layout] = up
    for up in bits.values():  # each sampled client sends the 3 kernel weights only, as float32
        assert set(np.asarray(up).ravel().tolist()) == {3 * 32}


def test_perfedavg_equals_numpy(problem):
    pop, clients, steps = problem
    for layout in LAYOUTS:
        theta0, state, cohorts, _ = _run(pop, algorithms.perfedavg(0.1, 0.04), layout)
        theta = theta0
        for cohort in cohorts:
            theta = PR.perfedavg_round(theta, clients, cohort, steps, 0.1, 0.04, pop.counts)
        assert np.abs(theta - theta0).max() > 0.01
        np.testing.assert_allclose(R.flat_linear(state.params), theta, atol=2e-5, err_msg=str(layout))


@pytest.mark.parametrize("q", [0.0, pytest.param(1.0, marks=pytest.mark.slow), 3.0])
def test_qffl_equals_numpy(problem, q):
    pop, clients, steps = problem
    for layout in LAYOUTS:
        theta0, state, cohorts, _ = _run(pop, algorithms.qffl(LR, q), layout)
        theta = theta0
        for cohort in cohorts:
            theta = PR.qffl_round(theta, clients, cohort, steps, LR, q)
        np.testing.assert_allclose(R.flat_linear(state.params), theta, rtol=2e-5, atol=2e-5, err_msg=str(layout))


def test_qffl_with_q_zero_equals_uniform_fedavg(problem):
    pop, _, _ = problem
    schedule = LocalSchedule(local_steps=4, batch_size=2)  # minibatches: the same draws in both runs
    _, q0, _, _ = _run(pop, algorithms.qffl(LR, 0.0), LAYOUTS[0], schedule)
    _, avg, _, _ = _run(pop, algorithms.fedavg(optax.sgd(LR), weighting="uniform"), LAYOUTS[0], schedule)
    for a, b in zip(jax.tree.leaves(q0.params), jax.tree.leaves(avg.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bad_hyper_parameters_are_refused():
    for make, message in [
        (lambda: algorithms.ditto(optax.sgd(0.1), 0.1, lam=-1.0), "Ditto lambda must be a finite number >= 0"),
        (lambda: algorithms.ditto(optax.sgd(0.1), 0.1, lam=float("inf")), "Ditto lambda must be a finite"),
        (lambda: algorithms.ditto(optax.sgd(0.1), 0.0), "Ditto personal_lr must be a number > 0"),
        (lambda: algorithms.fedrep(optax.sgd(0.1), "("), "is not a regular expression"),
        (lambda: algorithms.fedrep(optax.sgd(0.1), "bias", head_steps=-1), "head_steps must be"),
        (lambda: algorithms.perfedavg(0.1, 0.0), "Per-FedAvg beta must be a number > 0"),
        (lambda: algorithms.qffl(0.1, q=-0.5), "q-FFL q must be a finite number >= 0"),
    ]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            make()


@pytest.mark.parametrize("pattern,message", [("nothing", "matches no parameter"), (".", "matches every parameter")])
def test_a_head_pattern_matching_nothing_or_everything_is_refused_naming_the_parameters(problem, pattern, message):
    pop, _, _ = problem
    with pytest.raises(ValueError, match=f"{message}.*Dense_0/bias, Dense_0/kernel"):
        _run(pop, algorithms.fedrep(optax.sgd(LR), pattern), LAYOUTS[0])
