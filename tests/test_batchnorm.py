"""BatchNorm in federated training: running statistics averaged, kept per client (SiloBN), or whole
BatchNorm layers kept per client (FedBN).

NumPy references, written from the definitions: a BatchNorm layer in training
normalises with the batch's mean and biased variance and moves its running
averages, m <- mu m + (1 - mu) mean_B, v <- mu v + (1 - mu) var_B; FedAvg with
averaged statistics makes the server's the weighted mean of the cohort's; with
local statistics (SiloBN, Andreux et al. 2020) each client's are its own,
started from its previous ones, never an average; with FedBN (Li et al. 2021)
the BatchNorm layers' scale and bias are the client's own too, and only the
other layers are averaged (reference: one SGD step per client by ``jax.grad``
of the module outside the engine). Results do not depend on the device count
or the client-state home.
"""
import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from jaxqfl import algorithms, engine, models
from jaxqfl.data.population import Population
from jaxqfl.engine.schedule import LocalSchedule
from feature_shift import feature_shift_population

MU = 0.9
C, N, D, H = 4, 8, 3, 5  # clients, examples each, features, hidden units


class BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.BatchNorm(use_running_average=not train, momentum=MU)(nn.Dense(H)(x))
        return nn.Dense(2)(nn.relu(h))


@pytest.fixture(scope="module")
def population():
    return feature_shift_population(C, N, D)


def _sim(pop, mode, *, num_devices=1, home="auto", policy=None):
    model = models.from_flax(BNNet(), policy, train_arg="train", batch_stats=mode)
    # one local epoch of one batch: the step's batch is the client's N rows, each once
    return engine.build(pop, model, algorithms.fedavg(optax.sgd(0.1)), LocalSchedule(local_epochs=1, batch_size=N),
                        cohort_size=C, num_devices=num_devices, chunk_size=1, client_state=home, autotune=False)


def _batch_moments(params, x):
    """Mean and biased variance of Dense_0's outputs over the batch (what BatchNorm normalises)."""
    h = x @ np.asarray(params["Dense_0"]["kernel"]) + np.asarray(params["Dense_0"]["bias"])
    return h.mean(0), h.var(0)


def _client_rows(pop, c):
    return pop.x[c * N:(c + 1) * N].astype(np.float64)


def test_averaged_statistics_are_the_weighted_mean_of_the_clients(population):
    sim = _sim(population, "averaged")
    s0 = sim.init(0)
    p0 = jax.device_get(s0.params)  # before the block: run_block donates its input state
    s1, _ = sim.run_block(s0, 1)
    m0, v0 = (np.asarray(p0["batch_stats"]["BatchNorm_0"][k]) for k in ("mean", "var"))
    own = [_batch_moments(p0, _client_rows(population, c)) for c in range(C)]
    want_m = np.mean([MU * m0 + (1 - MU) * m for m, _ in own], axis=0)  # equal counts: equal weights
    want_v = np.mean([MU * v0 + (1 - MU) * v for _, v in own], axis=0)
    got = jax.device_get(s1.params)["batch_stats"]["BatchNorm_0"]
    np.testing.assert_allclose(got["mean"], want_m, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["var"], want_v, rtol=1e-5, atol=1e-5)
    assert "model" not in s1.client_states  # nothing kept per client


def test_local_statistics_are_each_clients_own_and_never_averaged(population):
    sim = _sim(population, "local")
    s0 = sim.init(0)
    p0 = jax.device_get(s0.params)  # before each block: run_block donates its input state
    s1, _ = sim.run_block(s0, 1)
    p1, kept1 = jax.device_get((s1.params, s1.client_states["model"]["batch_stats"]["BatchNorm_0"]))
    s2, _ = sim.run_block(s1, 1)
    kept2 = jax.device_get(s2.client_states["model"])["batch_stats"]["BatchNorm_0"]
    m0, v0 = (np.asarray(p0["batch_stats"]["BatchNorm_0"][k]) for k in ("mean", "var"))
    for c in range(C):
        m, v = _batch_moments(p0, _client_rows(population, c))
        m1, v1 = MU * m0 + (1 - MU) * m, MU * v0 + (1 - MU) * v
        np.testing.assert_allclose(kept1["mean"][c], m1, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(kept1["var"][c], v1, rtol=1e-5, atol=1e-5)
        # round 2 starts from the client's own statistics (not the server's mean), at the new global params
        m, v = _batch_moments(p1, _client_rows(population, c))
        np.testing.assert_allclose(kept2["mean"][c], MU * m1 + (1 - MU) * m, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(kept2["var"][c], MU * v1 + (1 - MU) * v, rtol=1e-5, atol=1e-5)
    assert np.ptp(np.asarray(kept2["mean"]), axis=0).max() > 0.5  # the clients' statistics differ
    assert set(s2.client_states["model"]) == {"batch_stats"}  # SiloBN: the layers' scale and bias are shared
    # the server's statistics (used only to evaluate the global model) are the cohort's mean
    np.testing.assert_allclose(p1["batch_stats"]["BatchNorm_0"]["mean"], np.mean(kept1["mean"], 0), rtol=1e-5,
                               atol=1e-5)


def _two_rounds(sim):
    state, _ = sim.run_block(sim.init(0), 2)
    return jax.device_get((state.params, state.client_states["model"]))


@pytest.fixture(scope="module")
def one_device_quantized(population):
    return _two_rounds(_sim(population, "fedbn", policy="full"))


@pytest.mark.parametrize("num_devices,home", [(4, "sharded"), (2, "host")])
def test_local_batchnorm_layers_do_not_depend_on_devices_or_home(population, one_device_quantized, num_devices,
                                                                   home):
    want = one_device_quantized
    got = _two_rounds(_sim(population, "fedbn", num_devices=num_devices, home=home, policy="full"))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a)[:len(b)], b, rtol=1e-5, atol=1e-6)


def test_batchnorm_without_a_statistics_mode_is_refused_naming_the_options():
    x = np.zeros((2, D), np.float32)
    with pytest.raises(ValueError, match="batch_stats='local'.*'averaged'"):
        models.from_flax(BNNet(), train_arg="train").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="batch_stats needs train_arg"):
        models.from_flax(BNNet(), batch_stats="local")
    with pytest.raises(ValueError, match="'sometimes'"):
        models.from_flax(BNNet(), train_arg="train", batch_stats="sometimes")


def test_fedbn_keeps_each_clients_batchnorm_layers_and_averages_the_rest(population):
    """FedBN (Li et al. 2021, Algorithm 1): only the non-BN layers are averaged.

    Reference: one SGD step of each client's mean cross-entropy on its N rows (the float module's own
    training forward, differentiated by ``jax.grad`` outside the engine), from the server's non-BN params
    and the client's OWN BatchNorm scale, bias and statistics; then FedAvg of the non-BN params only.
    """
    lr = 0.1
    module = BNNet()
    sim = _sim(population, "fedbn")

    def sgd_step(p, x, y):
        def loss(p):
            out, upd = module.apply({"params": {k: v for k, v in p.items() if k != "batch_stats"},
                                     "batch_stats": p["batch_stats"]}, x, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), upd["batch_stats"]

        g, new_stats = jax.grad(loss, has_aux=True)(p)
        stepped = jax.tree.map(lambda w, d: w - lr * d, p, g)
        return {**stepped, "batch_stats": new_stats}

    sgd_step = jax.jit(sgd_step)
    s0 = sim.init(0)
    server = jax.device_get(s0.params)  # before each block: run_block donates its input state
    own = [{"BatchNorm_0": server["BatchNorm_0"], "batch_stats": server["batch_stats"]} for _ in range(C)]
    for _ in range(2):
        s0, _ = sim.run_block(s0, 1)
        got_server, got_own = jax.device_get((s0.params, s0.client_states["model"]))
        trained = [sgd_step({**server, **own[c]}, population.x[c * N:(c + 1) * N], population.y[c * N:(c + 1) * N])
                   for c in range(C)]
        for c in range(C):
            own[c] = {"BatchNorm_0": trained[c]["BatchNorm_0"], "batch_stats": trained[c]["batch_stats"]}
            for a, b in zip(jax.tree.leaves(jax.tree.map(lambda t: t[c], got_own)), jax.tree.leaves(own[c])):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # the client's own, trained from its own
        mean = jax.tree.map(lambda *t: np.mean(t, axis=0), *trained)  # equal counts: equal weights
        for name in ("Dense_0", "Dense_1", "BatchNorm_0", "batch_stats"):  # BN: the server's copy, evaluation only
            for a, b in zip(jax.tree.leaves(got_server[name]), jax.tree.leaves(mean[name])):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        server = got_server
    assert np.ptp(np.asarray(got_own["BatchNorm_0"]["bias"]), axis=0).max() > 1e-3  # the clients' layers differ


def test_padding_rows_do_not_enter_the_batch_statistics(population):
    """Full-batch steps (B = n_max = 8): client 0 holds 5 rows, so its batch carries 3 padding rows."""
    counts = np.array([5, N, N, N], np.int32)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    rows = np.concatenate([np.arange(c * N, c * N + n) for c, n in enumerate(counts)])
    pop = Population(population.x[rows], population.y[rows], offsets, counts, population.x_test,
                     population.y_test, 2)
    model = models.from_flax(BNNet(), train_arg="train", batch_stats="local")
    sim = engine.build(pop, model, algorithms.fedavg(optax.sgd(0.1)), LocalSchedule(local_epochs=1, batch_size=None),
                       cohort_size=C, chunk_size=1, autotune=False)
    s0 = sim.init(0)
    p0 = jax.device_get(s0.params)  # run_block donates its input state
    s1, _ = sim.run_block(s0, 1)
    kept = jax.device_get(s1.client_states["model"])["batch_stats"]["BatchNorm_0"]
    m0, v0 = (np.asarray(p0["batch_stats"]["BatchNorm_0"][k]) for k in ("mean", "var"))
    for c in range(C):
        m, v = _batch_moments(p0, pop.x[offsets[c]:offsets[c] + counts[c]].astype(np.float64))  # real rows only
        np.testing.assert_allclose(kept["mean"][c], MU * m0 + (1 - MU) * m, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(kept["var"][c], MU * v0 + (1 - MU) * v, rtol=1e-5, atol=1e-5)
