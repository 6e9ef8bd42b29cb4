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
from algorithm_references import ReddiAlgorithm2
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


# The names that are optax's optimizers, built here from optax directly with the hyper-parameters
# server_optimizer documents (momentum 0.9; b1 = 0.9, b2 = 0.99, tau = 1e-3 as epsilon); the
# paper's FedAdam / FedYogi / FedAdagrad follow the NumPy Algorithm 2 of Reddi et al. 2021.
TAU = 1e-3
OPTAX_SERVER = {
    "sgd": lambda lr: optax.sgd(lr),
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "optax-adam": lambda lr: optax.adam(lr, b1=0.9, b2=0.99, eps=TAU),
    "optax-yogi": lambda lr: optax.yogi(lr, b1=0.9, b2=0.99, eps=TAU),
    "optax-adagrad": lambda lr: optax.adagrad(lr, initial_accumulator_value=TAU**2, eps=TAU),
}
PAPER_SERVER = ("adam", "yogi", "adagrad")


def test_every_server_optimizer_name_is_referenced():
    assert set(OPTAX_SERVER) | set(PAPER_SERVER) == set(algorithms.SERVER_OPTIMIZERS)


class _OptaxServer:
    """A server step ``x <- x + optax_opt(-Delta)`` on the dict ``{"w", "b"}``, float32 as the engine."""

    def __init__(self, opt, params):
        self.opt, self.state = opt, opt.init(params)

    def __call__(self, params, mean):
        updates, self.state = self.opt.update(jax.tree.map(np.negative, mean), self.state, params)
        return jax.tree.map(np.asarray, optax.apply_updates(params, updates))


class _PaperServer:
    """Reddi et al. 2021's Algorithm 2 in float64 (``algorithm_references.ReddiAlgorithm2``)."""

    def __init__(self, kind, lr, params):
        self.ref = ReddiAlgorithm2(kind, lr, b1=0.9, b2=0.99, tau=TAU)
        self.state = {k: self.ref.init(v.shape) for k, v in params.items()}

    def __call__(self, params, mean):
        out = {}
        for k in params:
            out[k], self.state[k] = self.ref.step(params[k].astype(np.float64), mean[k].astype(np.float64),
                                                  self.state[k])
        return {k: v.astype(np.float32) for k, v in out.items()}


@pytest.mark.parametrize("name", sorted(algorithms.SERVER_OPTIMIZERS))
def test_three_rounds_of_each_server_optimizer_follow_a_reference(name):
    """Three FedSGD rounds (all clients, one full-batch step): round t's mean delta is
    ``sum_i n_i (-lr grad F_i(w_t)) / sum_i n_i`` (NumPy), and the server applies the reference
    step (optax's update on ``-delta_t``, or NumPy Algorithm 2 on ``delta_t``) with its state
    carried from round to round."""
    pop = _population()
    lr_client, lr_server = 0.05, 0.1
    sim = engine.build(
        pop, models.linear_regression(1),
        algorithms.fedavg(optax.sgd(lr_client), algorithms.server_optimizer(name, lr_server)),
        engine.LocalSchedule(local_steps=1, batch_size=None), cohort_size=len(SIZES), num_devices=1,
    )
    state = sim.init(0)
    w, b = _wb(state.params)
    ref = {"w": w.astype(np.float32), "b": b.astype(np.float32)}
    server = (_PaperServer(name, lr_server, ref) if name in PAPER_SERVER
              else _OptaxServer(OPTAX_SERVER[name](lr_server), ref))
    for _ in range(3):
        state, _ = sim.run_block(state, 1)
        w, b = ref["w"].astype(np.float64), ref["b"].astype(np.float64)
        deltas = [_local_gd(*(a.astype(np.float64) for a in pop.client(i)), w, b, 1, lr_client) for i in range(len(SIZES))]
        mean = {"w": _weighted_mean([d[0] - w for d in deltas], SIZES).astype(np.float32),
                "b": _weighted_mean([d[1] - b for d in deltas], SIZES).astype(np.float32)}
        ref = server(ref, mean)
        got_w, got_b = _wb(state.params)
        np.testing.assert_allclose(got_w, ref["w"], atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(got_b, ref["b"], atol=2e-5, rtol=1e-4)
