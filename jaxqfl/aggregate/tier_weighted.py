"""Tier-aware aggregation: each client's weight times its tier's factor.

With clients in tiers of different precision (``jaxqfl.engine.tiers``), the
plain weighted mean (the default) treats a 2-bit update like a float one.
FedHQ (Chen, Shen, Zhang, Tang, "Dynamic Aggregation for Heterogeneous
Quantization in Federated Learning", IEEE Trans. Wireless Commun. 2021)
weights clients by their quantization precision instead. ``precision_factors``
gives the factors this library uses for it::

    w_k = n_k / (1 + q_t(k)),     q_t: the variance bound of tier t's codec
                                  (E||C(v) - v||^2 <= q ||v||^2, jaxqfl.compress.variance)

so a float tier (q = 0) keeps its example weights and a coarse tier counts
less, in proportion to how much noise its codec adds at most. The mean then
divides by the sum of the new weights, so the aggregate stays an average.
Equal factors give the inner aggregator exactly (a common factor cancels).
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from jaxqfl.aggregate.base import Aggregator, check_aggregator
from jaxqfl.compress.variance import relative_variance


def precision_factors(specs: Sequence[str], largest_tensor: int | None = None) -> list[float]:
    """``1 / (1 + q)`` per tier's uplink spec (FedHQ-style precision weights; module docstring).

    ``largest_tensor``: the model's largest parameter count, the bucket of a per-tensor codec.
    """
    return [1.0 / (1.0 + relative_variance(s, largest_tensor)) for s in specs]


def tier_weighted(inner: Aggregator, of_client, factors: Sequence[float]) -> Aggregator:
    """``inner`` with client ``i``'s weight multiplied by ``factors[tier of i]`` before anything else.

    Args:
      of_client: ``[C]`` ints, each client's tier (``engine.Tiers.of_client``).
      factors: one positive finite number per tier.
    """
    check_aggregator(inner)
    factors = [float(f) for f in factors]
    if not factors or not all(np.isfinite(f) and f > 0 for f in factors):
        raise ValueError(f"tier factors must be positive finite numbers, got {factors!r}")
    of = np.asarray(of_client)
    if of.size and (of.min() < 0 or of.max() >= len(factors)):
        raise ValueError(f"of_client holds tiers outside 0..{len(factors) - 1}")
    table = jnp.asarray(np.asarray(factors, np.float32)[of])  # [C] each client's factor

    def prepare(update, weight, client_state, state, stats, info):
        return inner.prepare(update, weight * table[info.client_id], client_state, state, stats, info)

    return inner._replace(prepare=prepare)
