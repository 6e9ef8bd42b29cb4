"""Dropout from the run key, and the generic QAT path through the engine on any layout.

Properties: evaluation (no key) is deterministic and dropout-free (a hand-written
forward); training (a key) drops a ``rate`` fraction of units and rescales the
rest by 1/(1-rate), with masks that follow the key alone; a QAT model with
dropout equals the hand-written fake-quant forward of the dropped network; and
an ordinary Linen model (Conv, GroupNorm, Dropout, Dense) quantized ``full``
trains to the same parameters on 1, 2 and 4 devices and for every chunk size; and through the
engine each client and each local step draws its own masks (read back from FedBN statistics).
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


# --- Through the engine: each client and each local step draws its own masks --------------------------------------
#
# Observable: FedBN keeps each client's BatchNorm running mean, m <- MU m + (1 - MU) b_s, where b_s is the mean over
# step s's batch of the dropped units. With lr = 0 the params never move and every row of every client is the same
# vector x, so b_s = h k_s / (N (1 - rate)) with h = Dense_0(x) and k_s in {0..N} the rows whose unit survived: b_s
# depends on the step's masks alone. From m_0 = 0, two steps leave m = (1 - MU)(MU b_0 + b_1); with MU = 1/5,
# m N (1 - rate) / (h (1 - MU) MU) = k_0 + 5 k_1 reads both steps' survivor counts back (base 5, k <= N = 4).

MU, N_ROWS, WIDTH, RATE = 0.2, 4, 16, 0.5


class DropBNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dropout(RATE, deterministic=not train)(nn.Dense(WIDTH)(x))
        return nn.Dense(2)(nn.BatchNorm(use_running_average=not train, momentum=MU)(h))


def test_every_client_and_every_local_step_draws_its_own_dropout_masks():
    x = np.tile(np.linspace(0.5, 1.5, 3, dtype=np.float32), (2 * N_ROWS, 1))  # 2 clients, every row the same
    pop = Population(x, np.zeros(2 * N_ROWS, np.int32), np.array([0, N_ROWS], np.int32),
                     np.full(2, N_ROWS, np.int32), x[:2].copy(), np.zeros(2, np.int32), 2)
    model = models.from_flax(DropBNNet(), train_arg="train", batch_stats="local")
    sim = engine.build(pop, model, algorithms.fedavg(optax.sgd(0.0)), LocalSchedule(local_steps=2, batch_size=N_ROWS),
                       cohort_size=2, autotune=False)
    s0 = sim.init(0)
    p0 = jax.device_get(s0.params)  # run_block donates its input state
    s1, _ = sim.run_block(s0, 1)
    kept = jax.device_get(s1.client_states["model"])["batch_stats"]["BatchNorm_0"]
    m = np.asarray(kept["mean"], np.float64)  # [client, unit]
    assert not np.asarray(p0["batch_stats"]["BatchNorm_0"]["mean"]).any()  # m_0 = 0
    h = x[0].astype(np.float64) @ np.asarray(p0["Dense_0"]["kernel"]) + np.asarray(p0["Dense_0"]["bias"])
    assert np.abs(h).min() > 1e-2  # every unit carries a value: its survivors can be counted

    code = m * N_ROWS * (1 - RATE) / (h * (1 - MU) * MU)
    np.testing.assert_allclose(code, np.round(code), atol=1e-2)  # whole numbers: k_0 + 5 k_1
    k0, k1 = np.round(code).astype(int) % 5, np.round(code).astype(int) // 5  # [client, unit] each
    assert k0.min() >= 0 and k1.min() >= 0 and k0.max() <= N_ROWS and k1.max() <= N_ROWS
    assert 0.3 < (k0.mean() + k1.mean()) / (2 * N_ROWS) < 0.7  # keep probability 1 - rate
    assert (k0 != k1).any(axis=1).all()  # within each client, step 1's masks are not step 0's
    assert (k0[0] != k0[1]).any() and (k1[0] != k1[1]).any()  # at each step, client 1's are not client 0's
