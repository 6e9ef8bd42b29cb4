"""What a run's state weighs, from the real objects: ``jax.eval_shape`` of its initial state, nothing allocated.

:func:`state_footprint` traces ``engine.state.initial_state`` (the model's init, the
algorithm's and the aggregator's server states, one client's persistent state:
algorithm, aggregator, codecs, the model's own statistics) abstractly for ONE
client and counts the elements and bytes of each part. Nothing is inferred from
names: a new algorithm, codec or model is counted the day it exists.

``jaxqfl.experiment.memory_guard.estimate`` turns a footprint into a run's bytes per device
(the client states in their home, a cohort block, the server states of a sweep's
configs, the population's rows); XLA's temporaries and the compiled programs are not counted.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax

from jaxqfl import keys


class StateFootprint(NamedTuple):
    """Elements and bytes of a run's state, per part (module docstring)."""

    param_floats: int  # the model's parameters (elements)
    param_bytes: int
    server_state_floats: int  # the algorithm's and the aggregator's server states, beyond the parameters
    server_state_bytes: int
    client_state_floats: int  # ONE client's persistent state (algorithm, aggregator, codecs, model statistics)
    client_state_bytes: int


def _count(tree) -> tuple[int, int]:
    leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, "shape") and not jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key)]
    return (sum(math.prod(x.shape) for x in leaves), sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves))


def state_footprint(model, algorithm, feature_shape, *, aggregator=None, uplink=None, downlink=None
                    ) -> StateFootprint:
    """The :class:`StateFootprint` of a run of ``algorithm`` on ``model`` (``engine.build``'s arguments).

    ``aggregator`` None is the engine's default mean; ``uplink`` / ``downlink`` the codecs (error
    feedback keeps a residual per client). Traced with ``jax.eval_shape``: no array is allocated.
    """
    from jaxqfl.engine.simulation import default_aggregator
    from jaxqfl.engine.state import initial_state

    agg = default_aggregator() if aggregator is None else aggregator
    init = initial_state(model, algorithm, agg, tuple(feature_shape), 1, uplink=uplink, downlink=downlink,
                         client_rows=1)
    state = jax.eval_shape(init, keys.abstract_key())
    p = _count(state.params)
    server = _count((state.algorithm_state, state.aggregator_state))
    client = _count(state.client_states)  # one row: one client
    return StateFootprint(p[0], p[1], server[0], server[1], client[0], client[1])

