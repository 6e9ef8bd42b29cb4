"""The threat model as an aggregator wrapper: ``with_attack(attack, fraction, inner, ...)``.

A fixed set of malicious clients, ``round(fraction * C)`` of the population's
``C`` ids exactly, is drawn once from the run's seed (a permutation of the ids
from ``numpy.random.default_rng((seed, MALICIOUS_SET_STREAM))``, like the data
partition) and stays the same every round. In each round, the malicious members
of the cohort replace their trained update by ``attack.craft(...)``
(``jaxqfl.aggregate.attacks``) in the wrapper's ``prepare``, i.e. before the
uplink codec and before the inner aggregator's own client side: attacks compose
with every aggregator and codec. Omniscient attacks read the honest clients'
statistics of the same round, gathered by the aggregator pre-pass
(``statistics``): the sums of ``h u``, ``h u^2`` and ``h`` with ``h = 1`` for an
honest client (the pre-pass sees the trained updates, before any attack).

The wrapper adds one server metric, ``malicious_in_cohort`` (how many malicious
clients took part in the round). Label flipping lives in the training data, not
in the update: ``label_flip_transform`` gives the engine the relabelling
(``engine.build(..., label_transform=...)``) for the same malicious set.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxqfl import keys
from jaxqfl.aggregate.attacks import Attack, HonestStatistics
from jaxqfl.aggregate.base import Aggregator, CohortStatistics, check_aggregator

MALICIOUS_SET_STREAM = 0x4D414C  # NumPy stream tag of the malicious set ("MAL"), apart from the partition's


def malicious_mask(fraction: float, num_clients: int, seed: int) -> np.ndarray:
    """``[C]`` bool: exactly ``round(fraction * C)`` malicious ids, a function of ``seed`` only."""
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ValueError(f"num_clients must be a positive integer, got {num_clients!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the malicious fraction must be a number in [0, 1], got {fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    count = int(round(fraction * num_clients))
    ids = np.random.default_rng((int(seed), MALICIOUS_SET_STREAM)).permutation(num_clients)[:count]
    mask = np.zeros((num_clients,), bool)
    mask[ids] = True
    return mask


def _honest_statistics(sums) -> HonestStatistics:
    total, total_sq, honest, malicious = sums
    n_h = jnp.maximum(honest, 1.0)
    mean = jax.tree.map(lambda s: s / n_h, total)
    std = jax.tree.map(lambda s, m: jnp.sqrt(jnp.maximum(s / n_h - m * m, 0.0)), total_sq, mean)
    return HonestStatistics(mean, std, honest, malicious)


def with_attack(attack: Attack, fraction: float, inner: Aggregator, *, num_clients: int, seed: int = 0) -> Aggregator:
    """``inner`` with a fraction of the population malicious, behaving as ``attack``.

    Args:
      attack: a ``jaxqfl.aggregate.attacks.Attack``.
      fraction: share of the population that is malicious, in [0, 1] (``round(fraction * C)`` clients).
      inner: the aggregator the server runs (any, on either reduction).
      num_clients: ``C``, the population size.
      seed: the run's seed; the malicious set depends on it only (never on the round).
    """
    if not isinstance(attack, Attack):
        raise TypeError(f"attack must be a jaxqfl.aggregate.attacks.Attack, got {type(attack).__name__}")
    check_aggregator(inner)
    mask = malicious_mask(fraction, num_clients, seed)
    pre_pass = attack.omniscient or inner.statistics is not None

    def is_malicious(client_id):
        return jnp.asarray(mask)[client_id]

    def split(stats):
        """(the inner aggregator's statistics, the attack's sums)."""
        if not pre_pass:
            return stats, None
        return CohortStatistics(stats.sums[0], stats.maxes[0]), stats.sums[1]

    def statistics(update, weight, client_state, state, info):
        own = inner.statistics(update, weight, client_state, state, info) if inner.statistics else CohortStatistics()
        if attack.omniscient:
            h = 1.0 - is_malicious(info.client_id).astype(jnp.float32)
            f32 = lambda a: a.astype(jnp.float32)
            mine = (jax.tree.map(lambda a: h * f32(a), update), jax.tree.map(lambda a: h * f32(a) ** 2, update),
                    h, 1.0 - h)
        else:
            mine = ()
        return CohortStatistics(sums=(own.sums, mine), maxes=(own.maxes, ()))

    def prepare(update, weight, client_state, state, stats, info):
        inner_stats, mine = split(stats)
        honest = _honest_statistics(mine) if attack.omniscient else None
        crafted = attack.craft(update, honest, keys.purpose_key(info.key, keys.ATTACK))
        bad = is_malicious(info.client_id)
        update = jax.tree.map(lambda c, u: jnp.where(bad, c.astype(u.dtype), u), crafted, update)
        return inner.prepare(update, weight, client_state, state, inner_stats, info)

    def client(update, weight, client_state, state, stats, info):
        return inner.client(update, weight, client_state, state, split(stats)[0], info)

    def server(reduced, state, stats, cohort):
        aggregate, state, metrics = inner.server(reduced, state, split(stats)[0], cohort)
        count = jnp.sum((jnp.asarray(mask)[cohort.ids] & cohort.valid).astype(jnp.float32))
        return aggregate, state, {**metrics, "malicious_in_cohort": count}

    return Aggregator(
        init=inner.init, client_state_init=inner.client_state_init, reduction=inner.reduction, client=client,
        server=server, prepare=prepare, statistics=statistics if pre_pass else None,
        encodes_uplink=inner.encodes_uplink,
    )


def label_flip_transform(fraction: float, *, num_clients: int, num_classes: int, seed: int = 0):
    """``transform(y, info) -> y``: malicious clients (the same set as ``with_attack``'s) train on ``K - 1 - y``.

    Pass it to ``engine.build(..., label_transform=...)``; honest clients' labels are untouched.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"label flipping needs a classification task with num_classes >= 2, got {num_classes!r}")
    mask = malicious_mask(fraction, num_clients, seed)

    def transform(y, info):
        return jnp.where(jnp.asarray(mask)[info.client_id], (num_classes - 1 - y).astype(y.dtype), y)

    return transform
