"""The server state of a run, the per-round metrics, and the initial state.

``ServerState(params, algorithm_state, aggregator_state, client_states, round, key)``
is everything a run carries from one round to the next (and what a checkpoint
saves). ``client_states`` is a dict of per-client pytrees, each leaf with a
leading population axis: ``"algorithm"`` and ``"aggregator"`` always (``()``
when they keep nothing), ``"uplink"`` / ``"downlink"`` for codecs with state
(error-feedback residuals), ``"model"`` for what a client keeps of the model
(its BatchNorm statistics, SiloBN, or BatchNorm layers, FedBN:
``jaxqfl.models.stats``). Where those arrays live is the client-state home
(``jaxqfl.engine.homes``).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxqfl import keys
from jaxqfl.algorithms.base import tree_select as tree_where  # noqa: F401  (the engine's name for it)
from jaxqfl.models import stats


class ServerState(NamedTuple):
    params: Any
    algorithm_state: Any
    aggregator_state: Any
    client_states: Any  # {"algorithm", "aggregator"[, "uplink", "downlink"]}: leading [num_clients] axis
    round: jax.Array  # () int32, rounds done so far
    key: jax.Array  # run key (typed PRNG key)


class RoundMetrics(NamedTuple):
    """Per-round metrics; a block returns each with a leading [R] axis."""

    train_loss: jax.Array  # () weighted mean over the cohort of each client's mean local loss
    total_weight: jax.Array  # () sum of p_i over the cohort
    cohort: jax.Array  # [M] int32 client ids (-1: a Poisson slot no client filled)
    uplink_bits: jax.Array  # [M] int32 bits each client sent
    downlink_bits: jax.Array  # [M] int32 bits each client received
    local_steps: jax.Array  # [M] int32 local steps each client took
    active: jax.Array  # () bool, False for a skipped tail round
    clients: dict  # name -> [M]: the algorithm's and the aggregator's per-client metrics
    server: dict  # name -> (): the algorithm's and the aggregator's per-round metrics
    joined: jax.Array  # () int32 clients that joined the round (M for fixed-size sampling; Poisson: may exceed M)
    overflow: jax.Array  # () int32 joiners left out for lack of slots (Poisson sampling; 0 otherwise)


def stack_states(state, n: int):
    """``n`` copies of one client's state on a leading axis."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + jnp.shape(a)), state)




def num_params(tree) -> int:
    return int(sum(np.prod(np.shape(a)) for a in jax.tree.leaves(tree)))


def one_client_states(algorithm, aggregator, *, uplink=None, downlink=None, model=None):
    """``init(params) -> one client's state dict`` (algorithm, aggregator, codecs, a model's own statistics)."""
    model_state = None if model is None else stats.client_state_init(model)

    def init(params):
        states = {"algorithm": algorithm.client_state_init(params),
                  "aggregator": aggregator.client_state_init(params)}
        if model_state is not None:
            states["model"] = model_state(params)
        if uplink is not None and not aggregator.encodes_uplink:
            states["uplink"] = uplink.init(update_template(algorithm, params))
        if downlink is not None:
            states["downlink"] = downlink.init(params)
        return states

    return init


def client_start(algorithm, params):
    """``(message, client_state, info, local)`` of a client at round 0, placeholder info: for shape inference."""
    from jaxqfl.algorithms.base import ClientInfo

    info = ClientInfo(jnp.int32(0), jnp.int32(1), jnp.int32(1), jax.random.key(0), jnp.int32(0))
    message = algorithm.broadcast(params, algorithm.init(params))
    client_state = algorithm.client_state_init(params)
    return message, client_state, info, algorithm.client_init(message, client_state, info)


def update_template(algorithm, params):
    """Zeros shaped like a client's ``update`` (what the uplink codec encodes), traced abstractly."""

    def upload(p):
        message, client_state, info, local = client_start(algorithm, p)
        return algorithm.client_final(local, message, client_state, info).update

    shapes = jax.eval_shape(upload, params)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def initial_state(model, algorithm, aggregator, feature_shape, num_clients: int, *, uplink=None, downlink=None,
                  client_rows: int | None = None):
    """``init_from_key(run_key) -> ServerState``: round 0, params from ``keys.purpose_key(run_key, INIT)``.

    ``client_rows`` (default ``num_clients``) is the length of the stacked client
    states (a sharded home pads it to a multiple of the device count).
    """
    sample_x = np.zeros((1,) + tuple(feature_shape), np.float32)  # NumPy: a constant of the program, nothing compiled
    per_client = one_client_states(algorithm, aggregator, uplink=uplink, downlink=downlink, model=model)
    rows = num_clients if client_rows is None else client_rows

    def init_from_key(run_key) -> ServerState:
        params = model.init(keys.purpose_key(run_key, keys.INIT), sample_x)
        client_states = stack_states(per_client(params), rows)
        return ServerState(params, algorithm.init(params), aggregator.init(params), client_states,
                           jnp.int32(0), run_key)

    return init_from_key
