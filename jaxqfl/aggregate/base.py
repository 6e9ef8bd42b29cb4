"""The aggregator protocol: how a cohort's client outputs become one aggregate.

An aggregator is a NamedTuple of pure functions plus a static ``reduction``
(DESIGN.md, "One round, as data"). Per sampled client, inside the engine's
vmap, after the algorithm's ``client_final``::

    [stats = statistics(update, weight, client_state, state, info)]   optional pre-pass;
            the engine sums ``stats.sums`` and takes the elementwise max of
            ``stats.maxes`` over the cohort's real clients (psum / pmax over devices)
    update, weight, client_state, m1 = prepare(update, weight, client_state, state, cohort_stats, info)
            (threat models, clipping: what happens BEFORE the uplink codec)
    update = decode(encode(update))                       the engine's uplink codec,
            skipped when ``encodes_uplink`` (the aggregator then encodes itself)
    summand, client_state, m2 = client(update, weight, client_state, state, cohort_stats, info)

then, by the static ``reduction``:

* ``"sum"``: the engine sums every leaf of ``summand`` over the cohort (weighted
  chunk sums, then ``lax.psum`` over devices); padding slots contribute zero.
  Memory per device: one chunk of clients.
* ``"gather"``: the engine keeps every client's summand and hands the stack
  ``[M_pad, ...]`` to the server side, with ``cohort.valid`` marking the real
  clients (padding slots hold garbage and must never enter a rule). Memory per
  device: the whole padded cohort's summands, ``M_pad x |summand|`` floats,
  since the server side runs on the gathered stack on every device.

and once per round, outside the vmap::

    aggregate, state, metrics = server(reduced, state, cohort_stats, cohort)

``client_state`` is the aggregator's own per-client persistent state (stacked
[C] by the engine, like the algorithm's). Randomness: derive keys from
``info.key`` (a client's round key) and ``cohort.key`` (the round key) with
``jaxqfl.keys``. Metric dicts map names to scalars (float32; int32 for bit counts) (per client for
``prepare``/``client``, returned as [M] arrays; per round for ``server``). A
per-client metric named ``"uplink_bits"`` is added to the client's uplink bit
count (protocol traffic, or an aggregator that encodes the uplink itself).

Wrappers compose aggregators the way optax transforms chain: a wrapper's
functions call the inner aggregator's and add their own step.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Protocol

import jax

from jaxqfl.algorithms.base import ClientInfo

PyTree = Any
REDUCTIONS = ("sum", "gather")


class CohortStatistics(NamedTuple):
    """A client's contribution to the cohort-wide pre-pass (or, reduced, the cohort's)."""

    sums: PyTree = ()  # summed over the cohort's real clients
    maxes: PyTree = ()  # elementwise maximum over the cohort's real clients


class CohortInfo(NamedTuple):
    """What the server side knows about the round's cohort."""

    ids: jax.Array  # [M_pad] int32 client ids (padding slots repeat an id; see valid)
    valid: jax.Array  # [M_pad] bool, False for padding slots
    key: jax.Array  # the round key
    round: jax.Array  # () int32


class InitFn(Protocol):
    def __call__(self, params: PyTree) -> PyTree:
        """The aggregator's server state."""


class ClientStateInitFn(Protocol):
    def __call__(self, params: PyTree) -> PyTree:
        """ONE client's persistent aggregator state (``()`` when none)."""


class StatisticsFn(Protocol):
    def __call__(self, update: PyTree, weight: jax.Array, client_state: PyTree, state: PyTree,
                 info: ClientInfo) -> CohortStatistics:
        """One client's contribution to the cohort pre-pass."""


class PrepareFn(Protocol):
    def __call__(self, update: PyTree, weight: jax.Array, client_state: PyTree, state: PyTree,
                 stats: CohortStatistics, info: ClientInfo) -> tuple[PyTree, jax.Array, PyTree, dict]:
        """``(update, weight, client_state, metrics)`` before the uplink codec."""


class ClientFn(Protocol):
    def __call__(self, update: PyTree, weight: jax.Array, client_state: PyTree, state: PyTree,
                 stats: CohortStatistics, info: ClientInfo) -> tuple[PyTree, PyTree, dict]:
        """``(summand, client_state, metrics)`` from the (decoded) update."""


class ServerFn(Protocol):
    def __call__(self, reduced: PyTree, state: PyTree, stats: CohortStatistics,
                 cohort: CohortInfo) -> tuple[PyTree, PyTree, dict]:
        """``(aggregate, state, metrics)`` from the reduced summands."""


def no_state(params: PyTree) -> tuple:
    del params
    return ()


def no_prepare(update, weight, client_state, state, stats, info):
    del state, stats, info
    return update, weight, client_state, {}


class Aggregator(NamedTuple):
    """An aggregation rule (see the module docstring for the call order).

    Attributes:
      init: ``init(params) -> state``.
      client_state_init: ``client_state_init(params) -> one client's state``.
      reduction: ``"sum"`` or ``"gather"`` (static).
      client: ``client(update, weight, client_state, state, stats, info) -> (summand, client_state, metrics)``.
      server: ``server(reduced, state, stats, cohort) -> (aggregate, state, metrics)``.
      prepare: ``prepare(update, weight, client_state, state, stats, info) -> (update, weight, client_state, metrics)``,
        run before the uplink codec.
      statistics: ``None`` or ``statistics(update, weight, client_state, state, info) -> CohortStatistics``,
        the optional pre-pass (it makes the engine keep every client's update of a device at once).
      encodes_uplink: True when ``client`` encodes the update itself (integer codes,
        secure aggregation); the engine then skips its generic uplink codec.
      dp: None, or a ``jaxqfl.aggregate.sensitivity.Sensitivity``: the rule's L2 sensitivity
        bound under central DP (or why it has none). Metadata only; the engine never reads it.
      whole_cohort: True when a summand means something only inside the sum of every sampled client
        (secure aggregation's pairwise masks cancel there): the engine refuses what leaves a sampled
        client out of the sum (a dropped straggler, an unjoined Poisson or unavailable slot).
    """

    init: InitFn
    client_state_init: ClientStateInitFn
    reduction: str
    client: ClientFn
    server: ServerFn
    prepare: PrepareFn = no_prepare
    statistics: Optional[StatisticsFn] = None
    encodes_uplink: bool = False
    dp: Optional[Any] = None
    whole_cohort: bool = False


def check_aggregator(aggregator: Aggregator) -> Aggregator:
    if not isinstance(aggregator, Aggregator):
        raise TypeError(f"aggregator must be a jaxqfl.aggregate.Aggregator, got {type(aggregator).__name__}")
    if aggregator.reduction not in REDUCTIONS:
        raise ValueError(f"aggregator.reduction must be one of {REDUCTIONS}, got {aggregator.reduction!r}")
    return aggregator

