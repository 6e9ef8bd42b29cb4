"""``jaxqfl.engine.memory_plan``: the state footprint traced from the real objects equals a built run's state.

For FedAvg (no client state), SCAFFOLD (a control variate per client and on the server) and FedAvg with an
error-feedback uplink (a residual per client), the footprint's parameter, server-state and per-client-state
element counts equal those of ``sim.init(0)`` of a really built simulation (replicated home: C rows).
"""
import argparse

import jax
import numpy as np
import optax
import pytest

from jaxqfl import algorithms, compress, engine, models
from jaxqfl.engine import memory_plan
from populations import classification_population

C = 6


def _elements(tree):
    leaves = [x for x in jax.tree.leaves(tree) if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)]
    return sum(int(np.size(x)) for x in leaves), sum(int(np.size(x)) * x.dtype.itemsize for x in leaves)


CASES = {
    "fedavg": (lambda: algorithms.fedavg(optax.sgd(0.1), optax.adam(0.01)), None),
    "scaffold": (lambda: algorithms.scaffold(0.1), None),
    "ef-qsgd": (lambda: algorithms.fedavg(optax.sgd(0.1)), lambda: compress.from_spec("qsgd:4+ef")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_footprint_counts_equal_a_built_runs_state(name):
    make_algorithm, make_uplink = CASES[name]
    population = classification_population([4, 5, 3, 6, 4, 5], num_features=5, num_classes=3, seed=1)
    model = models.mlp(hidden=(7,), num_outputs=3)
    uplink = None if make_uplink is None else make_uplink()
    fp = memory_plan.state_footprint(model, make_algorithm(), (5,), uplink=uplink)
    sim = engine.build(population, model, make_algorithm(), engine.LocalSchedule(local_steps=1, batch_size=2),
                       cohort_size=3, num_devices=1, uplink=uplink, client_state="replicated")
    state = sim.init(0)
    assert (fp.param_floats, fp.param_bytes) == _elements(state.params) and fp.param_floats == 5 * 7 + 7 + 7 * 3 + 3
    assert (fp.server_state_floats, fp.server_state_bytes) == _elements((state.algorithm_state,
                                                                         state.aggregator_state))
    floats, nbytes = _elements(state.client_states)
    assert (C * fp.client_state_floats, C * fp.client_state_bytes) == (floats, nbytes)
    # the CLI's memory check after the data is read counts exactly these per-client states
    from jaxqfl.experiment import memory_guard

    args = argparse.Namespace(cohort_size=3, sampling="fixed", seeds=None, sweep_values={})
    est = memory_guard.estimate(args, num_devices=1, examples=0, test_examples=0, feature_dim=5, num_classes=3,
                                num_clients=C, home="replicated", footprint=fp)
    assert [v for k, v in est.terms.items() if k.startswith("per-client states")] == [nbytes]
    # what each algorithm keeps, by its definition: nothing, one control variate, one residual per client
    assert fp.client_state_floats == {"fedavg": 0, "scaffold": fp.param_floats, "ef-qsgd": fp.param_floats}[name]

