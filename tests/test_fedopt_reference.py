"""FedAdam / FedYogi / FedAdagrad against a NumPy Algorithm 2 of Reddi et al. 2021.

The reference (``algorithm_references.ReddiAlgorithm2``) is written from the
paper's Algorithm 2 in float64: momentum on Delta_t, the three second moments,
``v_{-1} = tau^2``, ``x + eta m_t / (sqrt(v_t) + tau)``, no bias correction.
The server step is driven the way the algorithms drive it
(``fedavg.apply_server_optimizer`` on the mean delta); the engine-level check is
``test_fedavg_reference``.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxqfl import algorithms
from jaxqfl.algorithms.fedavg import apply_server_optimizer
from algorithm_references import ReddiAlgorithm2

KINDS = ("adam", "yogi", "adagrad")


def _deltas(d=12, steps=6, seed=0):
    """Mean deltas of very different sizes per coordinate (1e-4 .. 1), signs changing over steps."""
    rng = np.random.default_rng(seed)
    scale = np.logspace(-4, 0, d)
    return [scale * rng.standard_normal(d) for _ in range(steps)]


@pytest.mark.parametrize("kind", KINDS)
def test_server_steps_follow_algorithm_2(kind):
    eta, d = 0.03, 12
    ref = ReddiAlgorithm2(kind, eta)
    opt = algorithms.server_optimizer(kind, eta)
    x0 = np.random.default_rng(1).standard_normal(d)
    params = {"w": jnp.asarray(x0, jnp.float32)}
    state = opt.init(params)
    x, s = x0.copy(), ref.init(d)
    for delta in _deltas(d):
        params, state = apply_server_optimizer(opt, params, state, {"w": jnp.asarray(delta, jnp.float32)})
        x, s = ref.step(x, delta.astype(np.float32).astype(np.float64), s)
        np.testing.assert_allclose(np.asarray(params["w"], np.float64), x, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(np.asarray(state.v["w"], np.float64), s["v"], rtol=1e-5, atol=1e-12)
        np.testing.assert_allclose(-np.asarray(state.m["w"], np.float64), s["m"], rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("kind,delta,expected", [
    ("adam", 1e-3, 1e-4 / 2e-3),                                # v = 0.99 tau^2 + 0.01 Delta^2 = 1e-6
    ("adagrad", 1e-3, 1e-4 / (np.sqrt(2e-6) + 1e-3)),           # v = tau^2 + Delta^2
    ("yogi", 2e-3, 2e-4 / (np.sqrt(1e-6 + 0.01 * 4e-6) + 1e-3)),  # v = tau^2 + 0.01 Delta^2 (v < Delta^2)
])
def test_one_step_on_a_small_update(kind, delta, expected):
    """One step from the initial state (m = 0, v = tau^2 = 1e-6) on a mean delta of 1e-3 (2e-3 for
    Yogi, away from its tie v = Delta^2): m = 0.1 Delta and the step is eta m / (sqrt(v) + tau),
    worked out by hand. optax.adam's bias-corrected step on the same delta is 0.5 eta: ten times
    FedAdam's 0.05 eta."""
    eta = 0.1
    opt = algorithms.server_optimizer(kind, eta)
    params = {"w": jnp.zeros(3, jnp.float32)}
    new, _ = apply_server_optimizer(opt, params, opt.init(params), {"w": jnp.full(3, delta, jnp.float32)})
    ref = ReddiAlgorithm2(kind, eta)
    x, _ = ref.step(np.zeros(3), np.full(3, delta), ref.init(3))
    np.testing.assert_allclose(x, eta * expected, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(new["w"]), x, rtol=1e-5)


def test_optax_names_keep_optax_optimizers():
    """``optax-adam`` / ``optax-yogi`` / ``optax-adagrad`` are optax's own (bias-corrected) optimizers."""
    eta, tau = 0.03, 1e-3
    built = {"optax-adam": optax.adam(eta, b1=0.9, b2=0.99, eps=tau),
             "optax-yogi": optax.yogi(eta, b1=0.9, b2=0.99, eps=tau),
             "optax-adagrad": optax.adagrad(eta, initial_accumulator_value=tau ** 2, eps=tau)}
    for name, ref in built.items():
        opt = algorithms.server_optimizer(name, eta)
        p = q = {"w": jnp.zeros(12, jnp.float32)}
        s, r = opt.init(p), ref.init(q)
        for delta in _deltas():
            g = {"w": -jnp.asarray(delta, jnp.float32)}
            u, s = opt.update(g, s, p)
            v, r = ref.update(g, r, q)
            p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)
        np.testing.assert_array_equal(np.asarray(p["w"]), np.asarray(q["w"]))


@pytest.mark.parametrize("kind", KINDS)
def test_a_traced_learning_rate_is_accepted(kind):
    """A sweep hands a traced server learning rate: the step is built and jitted without a check."""
    f = jax.jit(lambda lr, d: apply_server_optimizer(
        algorithms.server_optimizer(kind, lr), {"w": jnp.zeros(2)},
        algorithms.server_optimizer(kind, lr).init({"w": jnp.zeros(2)}), {"w": d})[0]["w"])
    got = f(jnp.float32(0.1), jnp.full(2, 2e-3, jnp.float32))
    x, _ = ReddiAlgorithm2(kind, 0.1).step(np.zeros(2), np.full(2, 2e-3), ReddiAlgorithm2(kind, 0.1).init(2))
    np.testing.assert_allclose(np.asarray(got), x, rtol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    ({"learning_rate": 0.0}, "learning_rate must be > 0, got 0.0"),
    ({"b1": 1.0}, r"b1 must be in \[0, 1\), got 1.0"),
    ({"b2": -0.1}, r"b2 must be in \[0, 1\), got -0.1"),
    ({"tau": 0.0}, "tau must be > 0, got 0.0"),
])
def test_bad_hyper_parameters_are_refused(kwargs, match):
    from jaxqfl.algorithms.fedopt import fedopt_adaptive

    with pytest.raises(ValueError, match=match):
        fedopt_adaptive("adam", **kwargs)
    with pytest.raises(ValueError, match="unknown adaptive server optimizer 'sgd'"):
        fedopt_adaptive("sgd")
