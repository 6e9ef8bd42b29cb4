"""Flax NNX modules with BatchNorm and dropout (``models.from_nnx``).

Properties: evaluation (no key) uses the running statistics and no dropout
(a NumPy forward); a training call normalises by the batch's moments, moves
the running averages m <- mu m + (1 - mu) mean_B, v <- mu v + (1 - mu) var_B
(NumPy), over the real rows of a padded batch only, and drops units by masks
that follow the key alone; through the
engine an NNX module equals its Linen twin under FedBN (the Linen path is
checked against references in ``tests/test_batchnorm.py``), and a quantized
NNX module with dropout and local statistics gives the same results on 1 and
4 devices.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxqfl import algorithms, engine, models
from jaxqfl.engine.schedule import LocalSchedule
from feature_shift import feature_shift_population

MU, EPS = 0.9, 1e-5
C, N, D, H = 4, 8, 3, 5


class NnxBN(nnx.Module):
    def __init__(self, rngs, rate=0.0):
        self.lin = nnx.Linear(D, H, rngs=rngs)
        self.bn = nnx.BatchNorm(H, momentum=MU, epsilon=EPS, rngs=rngs)
        self.drop = nnx.Dropout(rate, rngs=rngs)
        self.out = nnx.Linear(H, 2, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(nnx.relu(self.bn(self.lin(x)))))


class LinenBN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.BatchNorm(use_running_average=not train, momentum=MU, epsilon=EPS)(nn.Dense(H)(x))
        return nn.Dense(2)(nn.relu(h))


class NnxDrop(nnx.Module):
    def __init__(self, rngs):
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.drop(x)


def _np_forward(p, x, mean, var):
    h = x @ p["lin"]["kernel"] + p["lin"]["bias"]
    h = (h - mean) / np.sqrt(var + EPS) * p["bn"]["scale"] + p["bn"]["bias"]
    return np.maximum(h, 0.0) @ p["out"]["kernel"] + p["out"]["bias"]


def test_nnx_batchnorm_evaluates_on_running_statistics_and_trains_on_the_batchs():
    model = models.from_nnx(NnxBN(nnx.Rngs(0)), batch_stats="averaged")
    x = np.asarray(jax.random.normal(jax.random.key(1), (16, D)), np.float64) * 2.0 + 1.0
    p = jax.tree.map(np.asarray, model.init(None, x))
    p["batch_stats"]["bn"] = {"mean": np.full(H, 0.3, np.float32), "var": np.full(H, 2.0, np.float32)}
    np.testing.assert_allclose(model.apply(p, x), _np_forward(p, x, 0.3, 2.0), rtol=1e-4, atol=1e-4)

    out, new = model.train_apply(p, x, key=jax.random.key(2))
    h = x @ p["lin"]["kernel"] + p["lin"]["bias"]
    np.testing.assert_allclose(out, _np_forward(p, x, h.mean(0), h.var(0)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(new["bn"]["mean"], MU * 0.3 + (1 - MU) * h.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new["bn"]["var"], MU * 2.0 + (1 - MU) * h.var(0), rtol=1e-5, atol=1e-5)

    rows = np.arange(16) < 11  # the last 5 rows are padding: the moments count the first 11 only
    _, masked = model.train_apply(p, x, key=jax.random.key(2), mask=jnp.asarray(rows))
    np.testing.assert_allclose(masked["bn"]["mean"], MU * 0.3 + (1 - MU) * h[:11].mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(masked["bn"]["var"], MU * 2.0 + (1 - MU) * h[:11].var(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(p["batch_stats"]["bn"]["mean"], np.float32(0.3))  # the caller's params are not written


def test_nnx_dropout_follows_the_key_and_is_off_at_evaluation():
    model = models.from_nnx(NnxDrop(nnx.Rngs(0)))
    x = jnp.ones((32, 64))
    np.testing.assert_array_equal(model.apply({}, x), x)  # no key: evaluation, nothing dropped
    apply = jax.jit(lambda k: model.apply({}, x, key=k))
    m1, m2 = apply(jax.random.key(7)), apply(jax.random.key(8))
    assert set(np.unique(np.asarray(m1))) <= {0.0, 2.0}  # kept units scaled by 1 / (1 - rate)
    assert 0.4 < float(jnp.mean(m1 > 0)) < 0.6
    assert float(jnp.mean(m1 != m2)) > 0.3  # another key, other masks
    np.testing.assert_array_equal(m1, apply(jax.random.key(7)))  # the same key, the same masks


def test_from_nnx_refuses_batchnorm_without_a_mode_and_unknown_state():
    with pytest.raises(ValueError, match="batch_stats='local'.*'fedbn'.*'averaged'"):
        models.from_nnx(NnxBN(nnx.Rngs(0)))
    with pytest.raises(ValueError, match="'sometimes'"):
        models.from_nnx(NnxBN(nnx.Rngs(0)), batch_stats="sometimes")

    class WithCache(nnx.Module):
        def __init__(self):
            self.cache = nnx.Cache(jnp.zeros(3))

        def __call__(self, x):
            return x

    with pytest.raises(ValueError, match=r"\['cache'\]"):
        models.from_nnx(WithCache())


@pytest.fixture(scope="module")
def population():
    return feature_shift_population(C, N, D)


def _as_nnx(p):
    names = {"Dense_0": "lin", "BatchNorm_0": "bn", "Dense_1": "out"}
    out = {names[k]: v for k, v in p.items() if k != "batch_stats"}
    return {**out, "batch_stats": {"bn": p["batch_stats"]["BatchNorm_0"]}}


def _two_rounds(pop, model, num_devices=1, chunk_size=None):
    sim = engine.build(pop, model, algorithms.fedavg(optax.sgd(0.1)), LocalSchedule(local_epochs=1, batch_size=N),
                       cohort_size=C, num_devices=num_devices, chunk_size=chunk_size, autotune=False)
    state, _ = sim.run_block(sim.init(0), 2)
    return jax.device_get((state.params, state.client_states["model"]))


def test_an_nnx_module_equals_its_linen_twin_under_fedbn(population):
    linen = models.from_flax(LinenBN(), train_arg="train", batch_stats="fedbn")
    twin = models.from_nnx(NnxBN(nnx.Rngs(0)), batch_stats="fedbn")
    twin = twin._replace(init=lambda key, x: _as_nnx(linen.init(key, x)))  # the same initial values
    want = _two_rounds(population, linen)
    got = _two_rounds(population, twin)
    want = (_as_nnx(want[0]), _as_nnx(want[1]))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # the Linen twin of this check runs by default (tests/test_dropout_and_layouts.py)
def test_a_quantized_nnx_module_with_dropout_is_the_same_on_1_and_4_devices(population):
    model = models.from_nnx(NnxBN(nnx.Rngs(0), rate=0.3), "full", batch_stats="local")
    one = _two_rounds(population, model, 1, 4)
    four = _two_rounds(population, model, 4, 1)
    for a, b in zip(jax.tree.leaves(four), jax.tree.leaves(one)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
