"""Every algorithm gives the same result on 1, 2, 4 and 8 devices and for chunks of 1, 3 and the whole cohort.

Slow (the full product, 11 algorithms x 13 layouts: minutes on 2 cores): the
fast suite checks each algorithm on two layouts against NumPy
(``test_algorithms_reference.py``), all device counts and chunk sizes covered.

7 of 10 clients per round (so the padded layouts differ: 9 slots for chunks of 3 on
one device, 12 on two, 8 on four and eight), one local epoch in minibatches of 2
(per-client shuffles and unequal step counts), two rounds. Parameters, the
algorithm's server state and every client's persistent state must agree to
float tolerance with the one-device, whole-cohort run: a client's randomness
depends on its id only, and the cohort's states are gathered and scattered by id.
"""
import jax
import numpy as np
import optax
import pytest

from jaxqfl import algorithms, engine, models
from jaxqfl.engine.schedule import LocalSchedule
from populations import regression_population

# linear regression with a pooled test set: the personal models are not evaluated (the engine says so)
pytestmark = pytest.mark.filterwarnings("ignore:the clients' personal models are not evaluated")

COHORT = 7
# (devices, chunk size); the chunk is capped at a device's share of the padded cohort
LAYOUTS = [(1, COHORT)] + [(d, c) for d in (1, 2, 4, 8) for c in (1, 3, COHORT) if (d, c) != (1, COHORT)]

ALGORITHMS = {
    "fedavg": lambda: algorithms.fedavg(optax.sgd(0.05), algorithms.server_optimizer("momentum", 0.5)),
    "fedprox": lambda: algorithms.fedprox(optax.sgd(0.05), mu=0.5),
    "scaffold": lambda: algorithms.scaffold(0.05, global_lr=0.9),
    "fednova": lambda: algorithms.fednova(0.05, momentum=0.5),
    "feddyn": lambda: algorithms.feddyn(optax.sgd(0.05), alpha=0.2),
    "mimelite": lambda: algorithms.mimelite(optax.adam(0.05)),
    "ditto": lambda: algorithms.ditto(optax.sgd(0.05), 0.05, 0.3),
    "fedrep": lambda: algorithms.fedrep(optax.sgd(0.05), "bias"),
    "fedper": lambda: algorithms.fedper(optax.sgd(0.05), "bias"),
    "perfedavg": lambda: algorithms.perfedavg(0.05, 0.03),
    "qffl": lambda: algorithms.qffl(0.05, 1.0),
}


@pytest.fixture(scope="module")
def population():
    return regression_population([5, 9, 3, 12, 6, 2, 8, 4, 7, 10], num_features=3, seed=2)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_same_result_on_every_device_count_and_chunk_size(population, name):
    results = []
    for devices, chunk in LAYOUTS:
        sim = engine.build(population, models.linear_regression(1), ALGORITHMS[name](),
                           LocalSchedule(local_epochs=1, batch_size=2), cohort_size=COHORT,
                           num_devices=devices, chunk_size=chunk)
        state, metrics = sim.run_block(sim.init(1), 2)
        results.append(jax.device_get((state.params, state.algorithm_state, state.client_states["algorithm"],
                                       metrics.cohort)))
    ref = results[0]
    assert len(set(np.asarray(ref[3]).ravel().tolist())) > COHORT  # two different cohorts: states scattered twice
    for (devices, chunk), got in zip(LAYOUTS[1:], results[1:]):
        np.testing.assert_array_equal(got[3], ref[3])
        for a, b in zip(jax.tree.leaves(got[:3]), jax.tree.leaves(ref[:3])):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} on {devices} devices, chunk {chunk}")
