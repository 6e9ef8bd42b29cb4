"""FedAvg rounds against NumPy / optax references built independently in the test.

Linear regression with full-batch gradient descent: a client's local model is a
closed-form NumPy loop, so every round of the engine can be recomputed from the
parameters it started from.
"""
import jax
import numpy as np
import optax
import pytest

from jaxqfl import algorithms, engine, models
from populations import regression_population

SIZES = [5, 9, 7, 12]


def _population():
    return regression_population(SIZES, num_features=6, seed=8)


def _wb(params):
    d = params["Dense_0"]
    return np.asarray(d["kernel"], np.float64)[:, 0], np.asarray(d["bias"], np.float64)


def _local_gd(x, y, w, b, K, lr):
    """K full-batch GD steps on mean (x w + b - y)^2, float64."""
    for _ in range(K):
        r = x @ w + b - y
        w, b = w - lr * 2 * x.T @ r / len(y), b - lr * 2 * r.mean()
    return w, b


def _weighted_mean(rows, weights):
    return np.average(np.stack(rows), axis=0, weights=weights)


# Each name built here from optax directly, with the hyper-parameters server_optimizer documents
# (momentum 0.9; Reddi et al.'s b1 = 0.9, b2 = 0.99, tau = 1e-3 as epsilon).
TAU = 1e-3
OPTAX_SERVER = {
    "sgd": lambda lr: optax.sgd(lr),
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": lambda lr: optax.adam(lr, b1=0.9, b2=0.99, eps=TAU),
    "yogi": lambda lr: optax.yogi(lr, b1=0.9, b2=0.99, eps=TAU),
    "adagrad": lambda lr: optax.adagrad(lr, initial_accumulator_value=TAU**2, eps=TAU),
}


def test_every_server_optimizer_name_is_referenced():
    assert set(OPTAX_SERVER) == set(algorithms.SERVER_OPTIMIZERS)


@pytest.mark.parametrize("name", sorted(OPTAX_SERVER))
def test_three_rounds_of_each_server_optimizer_follow_an_optax_loop(name):
    """Three FedSGD rounds (all clients, one full-batch step): round t's mean delta is
    ``sum_i n_i (-lr grad F_i(w_t)) / sum_i n_i`` (NumPy), and the server applies
    ``optax_opt.update(-delta_t)`` with its state carried from round to round."""
    pop = _population()
    lr_client, lr_server = 0.05, 0.1
    opt_ref = OPTAX_SERVER[name](lr_server)
    sim = engine.build(
        pop, models.linear_regression(1),
        algorithms.fedavg(optax.sgd(lr_client), algorithms.server_optimizer(name, lr_server)),
        engine.LocalSchedule(local_steps=1, batch_size=None), cohort_size=len(SIZES), num_devices=1,
    )
    state = sim.init(0)
    w, b = _wb(state.params)
    ref = {"w": w.astype(np.float32), "b": b.astype(np.float32)}
    opt_state = opt_ref.init(ref)
    for _ in range(3):
        state, _ = sim.run_block(state, 1)
        w, b = ref["w"].astype(np.float64), ref["b"].astype(np.float64)
        deltas = [_local_gd(*(a.astype(np.float64) for a in pop.client(i)), w, b, 1, lr_client) for i in range(len(SIZES))]
        mean = {"w": _weighted_mean([d[0] - w for d in deltas], SIZES).astype(np.float32),
                "b": _weighted_mean([d[1] - b for d in deltas], SIZES).astype(np.float32)}
        updates, opt_state = opt_ref.update(jax.tree.map(np.negative, mean), opt_state, ref)
        ref = jax.tree.map(np.asarray, optax.apply_updates(ref, updates))
        got_w, got_b = _wb(state.params)
        np.testing.assert_allclose(got_w, ref["w"], atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(got_b, ref["b"], atol=2e-5, rtol=1e-4)
