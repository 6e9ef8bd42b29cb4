"""Round protocol v2: the engine calls any algorithm and aggregator; client-state homes and reductions agree."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxqfl import aggregate, algorithms, compress, engine, models
from jaxqfl.algorithms.base import Algorithm, ClientOutput, ServerMessage
from jaxqfl.algorithms.fedavg import local_sgd
from populations import classification_population


@pytest.fixture(scope="module")
def population():
    rng = np.random.default_rng(3)
    return classification_population(rng.integers(2, 15, size=21).tolist(), num_features=5, num_classes=3, seed=3)


def _max_abs_diff(a, b):
    pairs = list(zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert pairs
    return max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64)))) for u, v in pairs)


def participation_counter(lr=0.1) -> Algorithm:
    """FedAvg whose clients count their participations (client state) and report them.

    The server also counts rounds in its state and broadcasts the count in
    ``extras``; every client checks it received the server's count.
    """
    client_init, client_step = local_sgd(optax.sgd(lr))
    opt = optax.sgd(1.0)

    def init(params):
        return {"opt": opt.init(params), "rounds": jnp.int32(0)}

    def broadcast(params, state):
        return ServerMessage(params, {"rounds": state["rounds"]})

    def client_final(local, message, client_state, info):
        delta = jax.tree.map(jnp.subtract, local.params, message.params)
        seen = {"count": client_state["count"] + 1, "last_round": info.round,
                "rounds_seen": message.extras["rounds"]}
        return ClientOutput(delta, info.num_examples.astype(jnp.float32), seen,
                            {"steps_seen": info.num_steps.astype(jnp.float32)})

    def server_update(params, state, mean_delta, info):
        updates, opt_state = opt.update(jax.tree.map(jnp.negative, mean_delta), state["opt"], params)
        return (optax.apply_updates(params, updates), {"opt": opt_state, "rounds": state["rounds"] + 1},
                {"total_weight_seen": info.total_weight})

    return Algorithm(
        init=init,
        client_state_init=lambda p: {"count": jnp.int32(0), "last_round": jnp.int32(-1),
                                     "rounds_seen": jnp.int32(-1)},
        broadcast=broadcast, client_init=client_init, client_step=client_step, client_final=client_final,
        server_update=server_update,
    )


def _run(population, *, home="auto", num_devices=2, chunk_size=2, aggregator=None, uplink=None, rounds=4,
         streaming=False, algorithm=None):
    build = engine.build_streaming if streaming else engine.build
    sim = build(population, models.mlp(hidden=(6,), num_outputs=3), algorithm or participation_counter(),
                engine.LocalSchedule(local_steps=2, batch_size=3), cohort_size=7, num_devices=num_devices,
                chunk_size=chunk_size, aggregator=aggregator, uplink=uplink, client_state=home)
    state, metrics = sim.run_block(sim.init(5), rounds)
    return sim, jax.device_get(state), jax.device_get(metrics)


def test_persistent_client_state_counts_participations(population):
    """The stored count of every client equals how often it was in a cohort (an independent tally)."""
    sim, state, metrics = _run(population, rounds=5)
    tally = np.bincount(np.asarray(metrics.cohort).ravel(), minlength=population.num_clients)
    cs = state.client_states["algorithm"]
    np.testing.assert_array_equal(np.asarray(cs["count"])[:population.num_clients], tally)
    # the round each client last took part in, and the server's broadcast round count it received
    for c in range(population.num_clients):
        rounds_in = [r for r in range(5) if c in np.asarray(metrics.cohort[r])]
        expected = rounds_in[-1] if rounds_in else -1
        assert int(cs["last_round"][c]) == expected
        assert int(cs["rounds_seen"][c]) == expected  # server state broadcast: rounds done before round r
    assert int(state.algorithm_state["rounds"]) == 5
    # the algorithm's metrics come back: per client [M] and per round
    np.testing.assert_array_equal(metrics.clients["steps_seen"], np.asarray(metrics.local_steps, np.float32))
    np.testing.assert_allclose(metrics.server["total_weight_seen"], metrics.total_weight)


@pytest.mark.parametrize("num_devices,chunk_size,home", [
    pytest.param(1, 7, "replicated", marks=pytest.mark.slow), (1, 7, "sharded"),
    pytest.param(1, 7, "host", marks=pytest.mark.slow),  # (every home and every layout stays in the default run)
    *[(d, c, h) for d, c in ((4, 1), (8, None)) for h in ("replicated", "sharded", "host")]])
def test_client_state_homes_give_the_same_results(population, home, num_devices, chunk_size):
    """Error feedback (per-client codec state) and the algorithm's state, whatever their home and layout."""
    codec = compress.from_spec("topk:0.3+ef")
    _, ref, ref_m = _run(population, home="replicated", num_devices=2, chunk_size=2, uplink=codec)
    sim, state, metrics = _run(population, home=home, num_devices=num_devices, chunk_size=chunk_size,
                               uplink=codec)
    assert sim.client_state_home == home
    np.testing.assert_array_equal(metrics.cohort, ref_m.cohort)
    np.testing.assert_array_equal(metrics.uplink_bits, ref_m.uplink_bits)
    assert _max_abs_diff(state.params, ref.params) < 1e-5
    C = population.num_clients
    rows = lambda tree: jax.tree.map(lambda a: np.asarray(a)[:C], tree)
    assert _max_abs_diff(rows(state.client_states), rows(ref.client_states)) < 1e-5


def test_streamed_rounds_with_host_home_equal_on_device_rounds(population):
    codec = compress.from_spec("qsgd:4+ef")
    _, ref, ref_m = _run(population, home="replicated", uplink=codec)
    _, state, metrics = _run(population, home="host", uplink=codec, streaming=True, num_devices=4, chunk_size=1)
    np.testing.assert_array_equal(metrics.cohort, ref_m.cohort)
    assert _max_abs_diff(state.params, ref.params) < 1e-5
    assert _max_abs_diff(state.client_states, ref.client_states) < 1e-5


@pytest.mark.parametrize("num_devices,chunk_size", [(1, 3), (2, 1), (8, None)])
def test_gather_path_equals_sum_path(population, num_devices, chunk_size):
    """gather_mean (every summand kept, padding masked on the server) == mean (psum of weighted sums)."""
    fedavg = algorithms.fedavg(optax.sgd(0.2), optax.sgd(1.0, momentum=0.5))
    _, ref, ref_m = _run(population, aggregator=aggregate.mean(), algorithm=fedavg, num_devices=1, chunk_size=7)
    _, state, metrics = _run(population, aggregator=aggregate.gather_mean(), algorithm=fedavg,
                             num_devices=num_devices, chunk_size=chunk_size)
    np.testing.assert_array_equal(metrics.cohort, ref_m.cohort)
    assert _max_abs_diff(state.params, ref.params) < 1e-5


def test_home_auto_and_bad_home(population):
    sim, _, _ = _run(population, rounds=1)
    assert sim.client_state_home == "replicated"  # a few bytes per client
    with pytest.raises(ValueError, match="client_state must be one of"):
        _run(population, home="disk")
