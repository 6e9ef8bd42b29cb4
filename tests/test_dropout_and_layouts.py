"""Dropout from the run key, and the generic QAT path through the engine on any layout.

Properties: evaluation (no key) is deterministic and dropout-free (a hand-written
forward); training (a key) drops a ``rate`` fraction of units and rescales the
rest by 1/(1-rate), with masks that follow the key alone; a QAT model with
dropout equals the hand-written fake-quant forward of the dropped network; and
an ordinary Linen model (Conv, GroupNorm, Dropout, Dense) quantized ``full``
trains to the same parameters on 1, 2 and 4 devices and for every chunk size.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxqfl import algorithms, engine, models
from jaxqfl.data.population import Population
from jaxqfl.engine.schedule import LocalSchedule
from jaxqfl.quant.uniform import uniform

W8 = uniform(8, symmetric=True, axis=-1)  # the `full` preset's quantizers, written out
A8 = uniform(8, symmetric=False, axis=0)


class DropNet(nn.Module):
    width: int = 64
    outputs: int = 3
    rate: float = 0.5

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.relu(nn.Dense(self.width)(x))
        h = nn.Dropout(self.rate, deterministic=not train)(h)
        return nn.Dense(self.outputs)(h)


def _mask(key, rate, batch, width):
    """The dropout mask the module draws under ``key``: a probe with h = 1 and an identity head."""
    probe = models.from_flax(DropNet(width, width, rate), train_arg="train")
    p = {"Dense_0": {"kernel": jnp.zeros((5, width)), "bias": jnp.ones(width)},
         "Dense_1": {"kernel": jnp.eye(width), "bias": jnp.zeros(width)}}
    return probe.apply(p, jnp.zeros((batch, 5)), key=key) * (1.0 - rate)


def test_evaluation_is_dropout_free_and_training_drops_by_the_key():
    x = jax.random.normal(jax.random.key(1), (32, 5))
    model = models.from_flax(DropNet(), train_arg="train")
    p = model.init(jax.random.key(0), x)
    hand = jax.nn.relu(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]) @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    np.testing.assert_allclose(model.apply(p, x), hand, rtol=1e-5, atol=1e-5)

    k1, k2 = jax.random.key(7), jax.random.key(8)
    m1, m2 = _mask(k1, 0.5, 32, 64), _mask(k2, 0.5, 32, 64)
    assert set(np.unique(np.asarray(m1))) <= {0.0, 1.0}
    assert 0.4 < float(m1.mean()) < 0.6  # keep probability 1 - rate over 2,048 units
    assert float(jnp.mean(m1 != m2)) > 0.3  # another key, other masks
    np.testing.assert_array_equal(m1, _mask(k1, 0.5, 32, 64))  # the same key, the same mask
    h = jax.nn.relu(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    want = (h * m1 / 0.5) @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    np.testing.assert_allclose(model.apply(p, x, key=k1), want, rtol=1e-5, atol=1e-5)


def test_a_quantized_model_with_dropout_equals_the_fake_quant_forward_of_the_dropped_network():
    x = jax.random.normal(jax.random.key(1), (16, 5))
    model = models.from_flax(DropNet(), "full", train_arg="train")
    p = model.init(jax.random.key(0), x)
    key = jax.random.key(3)
    mask = _mask(key, 0.5, 16, 64)
    fq_w = lambda w: W8.fake_quant(w, None)  # noqa: E731
    fq_a = lambda a: A8.fake_quant(a, None)  # noqa: E731
    h = jax.nn.relu(fq_a(x) @ fq_w(p["Dense_0"]["kernel"]) + p["Dense_0"]["bias"])
    want = fq_a(h * mask / 0.5) @ fq_w(p["Dense_1"]["kernel"]) + p["Dense_1"]["bias"]
    np.testing.assert_allclose(model.apply(p, x, key=key), want, rtol=1e-4, atol=1e-4)
    h0 = jax.nn.relu(fq_a(x) @ fq_w(p["Dense_0"]["kernel"]) + p["Dense_0"]["bias"])
    np.testing.assert_allclose(model.apply(p, x), fq_a(h0) @ fq_w(p["Dense_1"]["kernel"]) + p["Dense_1"]["bias"],
                               rtol=1e-4, atol=1e-4)  # no key: no dropout


def test_a_bad_train_arg_is_refused_naming_it():
    with pytest.raises(ValueError, match="train_arg.*'not a name'"):
        models.from_flax(DropNet(), train_arg="not a name")


class ConvDropNet(nn.Module):
    """An ordinary Linen model: nothing written for jaxqfl."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.relu(nn.GroupNorm(num_groups=2)(nn.Conv(4, (3, 3))(x)))
        h = nn.Dropout(0.3, deterministic=not train)(h.reshape(h.shape[0], -1))
        return nn.Dense(3)(h)


@pytest.fixture(scope="module")
def conv_population():
    rng = np.random.default_rng(0)
    C, n = 8, 8
    x = rng.standard_normal((C * n, 6, 6, 2)).astype(np.float32)
    y = rng.integers(0, 3, C * n).astype(np.int32)
    return Population(x, y, np.arange(C, dtype=np.int32) * n, np.full(C, n, np.int32), x[:8].copy(), y[:8].copy(), 3)


def _train(pop, num_devices, chunk_size):
    sim = engine.build(pop, models.from_flax(ConvDropNet(), "full", train_arg="train"),
                       algorithms.fedavg(optax.sgd(0.1)), LocalSchedule(local_steps=2, batch_size=4),
                       cohort_size=4, num_devices=num_devices, chunk_size=chunk_size, autotune=False)
    state, _ = sim.run_block(sim.init(0), 2)
    return jax.device_get(state.params)


@pytest.fixture(scope="module")
def conv_reference(conv_population):
    return _train(conv_population, 1, 4)


@pytest.mark.parametrize("num_devices,chunk_size", [(4, 1), (2, 2)])
def test_the_generic_qat_path_with_dropout_is_invariant_to_devices_and_chunks(
        conv_population, conv_reference, num_devices, chunk_size):
    got = _train(conv_population, num_devices, chunk_size)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(conv_reference)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
