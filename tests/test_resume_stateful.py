"""Resume is bit-exact for algorithms and aggregators that carry state across rounds (issue 21).

Run 4 rounds uninterrupted; run 2, checkpoint, restore into a blank template and
run 2 more: the final state (params, server optimiser state, client states,
aggregator state, key) is the same bytes. The state each case carries is checked
to be non-trivial, so the test cannot pass by resuming an empty state.
"""
import jax
import numpy as np
import optax
import pytest

from jaxqfl import aggregate, algorithms, data, engine, models
from jaxqfl.engine import checkpoint


def _cases():
    sgd = optax.sgd(0.05)
    return {
        "fedavg-server-momentum": (lambda: algorithms.fedavg(sgd, optax.sgd(1.0, momentum=0.9)), None),
        "scaffold": (lambda: algorithms.scaffold(0.05), None),
        "feddyn": (lambda: algorithms.feddyn(sgd, alpha=0.01), None),
        "mimelite": (lambda: algorithms.mimelite(optax.sgd(0.05, momentum=0.9)), None),
        "ditto": (lambda: algorithms.ditto(sgd, 0.05, 0.1), None),  # personal models per client
        "fedrep": (lambda: algorithms.fedrep(sgd, "bias"), None),  # heads per client
        "adaptive-dp-clip": (lambda: algorithms.fedavg(sgd),
                             lambda: aggregate.dp_mean(0.5, 0.3, target_quantile=0.5, count_noise_std=0.5)),
        "centered-clip": (lambda: algorithms.fedavg(sgd), lambda: aggregate.centered_clip(0.2)),
    }


@pytest.fixture(scope="module")
def population():
    return data.build("synthetic", num_clients=8, seed=1, num_features=6)


@pytest.mark.parametrize("name", list(_cases()))
def test_resumed_stateful_run_equals_uninterrupted_bit_for_bit(population, tmp_path, name):
    make_algorithm, make_aggregator = _cases()[name]
    kwargs = {} if make_aggregator is None else {"aggregator": make_aggregator()}
    sim = engine.build(population, models.logistic_regression(num_outputs=10), make_algorithm(),
                       engine.LocalSchedule(local_steps=2, batch_size=4), cohort_size=4, num_devices=1, **kwargs)
    full = engine.run(sim, rounds=4, eval_every=10, seed=3)
    part = engine.run(sim, rounds=2, eval_every=10, seed=3)
    checkpoint.save(tmp_path, part.state, {"records": part.records})
    state, _ = checkpoint.restore(tmp_path, sim.init(11))  # a blank template from another seed
    rest = engine.run(sim, rounds=2, eval_every=10, state=state,
                      totals=engine.RunTotals(part.uplink_bits_total, part.downlink_bits_total))
    a, b = jax.device_get(full.state), jax.device_get(rest.state)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    np.testing.assert_array_equal(jax.random.key_data(a.key), jax.random.key_data(b.key))
    for x, y in zip(jax.tree.leaves(a._replace(key=0)), jax.tree.leaves(b._replace(key=0))):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
    # the case's state is real: something besides params that is non-zero and changed over the run
    init = jax.device_get(sim.init(3))
    extra = [(x, y) for x, y in zip(jax.tree.leaves(init._replace(key=0, params=0, round=0)),
                                    jax.tree.leaves(a._replace(key=0, params=0, round=0)))
             ]
    assert any(np.any(np.asarray(x) != np.asarray(y)) for x, y in extra), f"{name} carried no changing state"
