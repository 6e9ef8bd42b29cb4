"""The algorithm protocol of a federated round (round protocol v2, DESIGN.md).

An FL algorithm is a NamedTuple of seven pure functions, built by a factory
whose arguments are its hyper-parameters (as optax builds a
``GradientTransformation``). The engine calls them in this order, and never
knows which algorithm runs::

    server:  algorithm_state = init(params)                          (once)
             client_state    = client_state_init(params)             (once per client, stacked [C])
    round:   message = broadcast(params, algorithm_state)             (server, once)
             per sampled client i (vmapped; ``info`` = ClientInfo):
                 local = client_init(message_i, client_state_i, info)
                 K times: loss, grads = the task loss at local.params on the step's batch, its gradient
                          local = client_step(local, grads, message_i, info._replace(step_loss=loss))
                 out   = client_final(local, message_i, client_state_i, info)   -> ClientOutput
             aggregate = the aggregator's reduction of the outputs' (update, weight)
             params, algorithm_state, metrics = server_update(params, algorithm_state, aggregate, server_info)
    evaluation (personalized algorithms, ``personalize`` not None), per client c:
             model_c = personalize(params, client_state_c)    the model client c uses on its own data

``message_i`` is ``message`` with its ``params`` replaced by what client i
received (after a downlink codec, when there is one). A local state may be any
pytree with a ``params`` attribute: the engine takes the gradient there. A
client's ``update`` may be any pytree (a model delta, or a delta and a control
variate delta, or sufficient statistics); the aggregator reduces it leaf by
leaf and ``server_update`` receives the reduced pytree.

Everything is pure ``jnp`` and runs under ``jit`` and ``vmap``: no Python
control flow on traced values, no knowledge of devices or of the cohort's
layout. Per-client quantities (control variates, gradient memories) live in
``client_state``, which the engine stores for the whole population in the home
the user chose (replicated, sharded or on the host) and gathers for the cohort.

Personalized algorithms (Ditto, FedRep, FedPer) keep part or all of a model
per client in ``client_state`` and say, with ``personalize``, which model a
client uses on its own data; the engine evaluates those per client
(``jaxqfl.engine.client_evaluation``), and the global model as for any
algorithm. An algorithm whose local steps alternate between two points (Ditto's
global and personal models, Per-FedAvg's inner and outer steps) keeps the
point of the next gradient in ``local.params`` and the other in its local
state.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax

from jaxqfl.choices import WEIGHTINGS

PyTree = Any


class ClientInfo(NamedTuple):
    """What the engine tells a client's functions about the client (all traced scalars)."""

    client_id: jax.Array  # () int32, the client's index in the population
    num_examples: jax.Array  # () int32, its example count n_i
    num_steps: jax.Array  # () int32, local steps it takes this round (masked steps excluded)
    key: jax.Array  # its round key keys.client_key(round_key, client id); derive purposes with jaxqfl.keys
    round: jax.Array  # () int32, the round index (0-based)
    step_loss: jax.Array | None = None  # () float32 task loss at local.params on the step's batch (client_step only)


class ServerInfo(NamedTuple):
    """What the engine tells ``server_update`` about the round."""

    round: jax.Array  # () int32, the round just played (0-based)
    num_clients: int  # C, the population size (static)
    cohort_size: int  # M, clients sampled per round (static)
    total_weight: jax.Array  # () float32, sum of the cohort's weights


class ServerMessage(NamedTuple):
    """What the server broadcasts: the model, and what else clients need (control variates, ...)."""

    params: PyTree
    extras: PyTree = ()


class ClientOutput(NamedTuple):
    """What a client hands to the aggregator after local training."""

    update: PyTree  # reduced by the aggregator, leaf by leaf
    weight: jax.Array  # () float32 aggregation weight (n_i or 1); the engine zeroes padding slots
    client_state: PyTree  # the client's new persistent state
    metrics: dict  # name -> () float32 per-client metric (returned as [M] per round)


class InitFn(Protocol):
    def __call__(self, params: PyTree) -> PyTree:
        """The algorithm's server state for the initial global model."""


class ClientStateInitFn(Protocol):
    def __call__(self, params: PyTree) -> PyTree:
        """ONE client's persistent state (``()`` when none); the engine stacks C of them."""


class BroadcastFn(Protocol):
    def __call__(self, params: PyTree, algorithm_state: PyTree) -> ServerMessage:
        """The message every sampled client receives this round."""


class ClientInitFn(Protocol):
    def __call__(self, message: ServerMessage, client_state: PyTree, info: ClientInfo) -> PyTree:
        """The local state a client starts its local steps from (has a ``params`` attribute)."""


class ClientStepFn(Protocol):
    def __call__(self, local: PyTree, grads: PyTree, message: ServerMessage, info: ClientInfo) -> PyTree:
        """One local step, given the task loss's gradient at ``local.params`` on the step's batch."""


class ClientFinalFn(Protocol):
    def __call__(self, local: PyTree, message: ServerMessage, client_state: PyTree, info: ClientInfo) -> ClientOutput:
        """The client's upload, weight, new persistent state and metrics."""


class PersonalizeFn(Protocol):
    def __call__(self, params: PyTree, client_state: PyTree) -> PyTree:
        """The model a client uses on its own data: from the global ``params`` and its persistent state."""


class ServerUpdateFn(Protocol):
    def __call__(
        self, params: PyTree, algorithm_state: PyTree, aggregate: PyTree, info: ServerInfo
    ) -> tuple[PyTree, PyTree, dict]:
        """``(new params, new algorithm state, metrics)`` from the aggregated updates."""


class Algorithm(NamedTuple):
    """An FL algorithm: seven pure functions (see the module docstring for the call order), and
    ``personalize`` for the algorithms whose clients keep their own model (None: the global one)."""

    init: InitFn
    client_state_init: ClientStateInitFn
    broadcast: BroadcastFn
    client_init: ClientInitFn
    client_step: ClientStepFn
    client_final: ClientFinalFn
    server_update: ServerUpdateFn
    personalize: PersonalizeFn | None = None


def tree_select(cond, a: PyTree, b: PyTree) -> PyTree:
    """``a`` where the traced boolean ``cond`` holds, else ``b`` (leaf by leaf; an alternating local state's switch)."""
    import jax.numpy as jnp

    return jax.tree.map(lambda u, v: jnp.where(cond, u, v), a, b)


def no_client_state(params: PyTree) -> tuple:
    """``client_state_init`` of an algorithm that keeps nothing per client."""
    del params
    return ()


def broadcast_params(params: PyTree, algorithm_state: PyTree) -> ServerMessage:
    """``broadcast`` of an algorithm whose clients need only the model."""
    del algorithm_state
    return ServerMessage(params)




def client_weight(weighting: str, info: ClientInfo) -> jax.Array:
    """``p_i = n_i`` (``"examples"``) or ``1`` (``"uniform"``), as float32."""
    import jax.numpy as jnp

    if weighting == "examples":
        return info.num_examples.astype(jnp.float32)
    return jnp.float32(1.0)


def check_weighting(weighting: str) -> str:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    return weighting
