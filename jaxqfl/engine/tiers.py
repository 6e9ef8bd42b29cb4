"""Client tiers: each client trains with its tier's model (QAT preset) and sends with its tier's codec.

Real federations are mixed: 4-bit NPUs next to 8-bit and float devices, each
sending what its link allows. A :class:`Tiers` gives every client id a tier
``t`` and every tier a model and an uplink codec; inside the round, client
``i`` runs ``models[t_i]`` (``jaxqfl.models.switch``) and encodes with
``uplinks[t_i]`` (``jaxqfl.compress.switch``), so one program serves every tier
(no Python loop, no data-dependent shapes). The cost: under the vmap over
clients, every tier's forward/backward and every tier's encoder run for every
client and the client's own is selected (T tiers: T x the training compute of
one; identical tiers share one model and one codec, and cost nothing extra).
Tiers whose models differ only in quantizer bit-widths (a bit family, e.g. the
presets ``full`` and ``w4a8``) can give ``model_at(index) -> Model`` instead
(``jaxqfl.models.switch.family_model``): one model whose widths follow the
client's traced tier, so training costs 1 x, not T x (the encoders still all run).

The tier of a client is drawn once from the data seed, like the malicious set
(``aggregate.threat``): ``round`` each fraction's share of ``C`` by the largest
remainder (the counts sum to ``C``), then a NumPy permutation of the ids from
``default_rng((seed, TIER_STREAM))`` hands them out in tier order. Or it is the
user's: ``Tiers(of_client=<a column of their data>, ...)``.

The aggregation sees a client's update after its tier's codec (decoded), and
by default averages them with the usual weights; ``jaxqfl.aggregate.tier_weighted``
is a tier-aware rule (FedHQ-style precision weights).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np

TIER_STREAM = 0x544952  # NumPy stream tag of the tier draw ("TIR"), apart from the partition's and the malicious set's


class Tiers(NamedTuple):
    """Per-client models and uplink codecs (module docstring).

    Attributes:
      of_client: ``[C]`` int, each client's tier in ``[0, T)``.
      models: ``T`` models sharing one set of parameters (QAT presets of one architecture).
      uplinks: ``T`` codecs (``None``: float32 updates).
      names: ``T`` names, for metrics and messages.
      model_at: ``None``, or ``model_at(index) -> Model`` computing ``models[index]``'s
        forward for a traced tier ``index`` in one pass (a bit family's model,
        ``jaxqfl.models.switch.family_model``); the round then trains every client with
        it (1 x the compute) instead of a ``lax.switch`` over ``models`` (T x).
    """

    of_client: Any
    models: tuple
    uplinks: tuple
    names: tuple = ()
    model_at: Any = None


def tier_counts(fractions: Sequence[float], num_clients: int) -> list[int]:
    """Clients per tier: ``fraction x C`` rounded by the largest remainder, so the counts sum to ``C``."""
    check_fractions(fractions)
    raw = [f * num_clients for f in fractions]
    counts = [math.floor(r) for r in raw]
    left = num_clients - sum(counts)
    for i in sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))[:left]:
        counts[i] += 1
    return counts


def draw_tiers(fractions: Sequence[float], num_clients: int, seed: int) -> np.ndarray:
    """``[C]`` int32: each client's tier, exactly :func:`tier_counts` of each, a function of ``seed`` only."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    order = np.random.default_rng((int(seed), TIER_STREAM)).permutation(num_clients)
    of_client = np.empty((num_clients,), np.int32)
    start = 0
    for t, count in enumerate(tier_counts(fractions, num_clients)):
        of_client[order[start:start + count]] = t
        start += count
    return of_client


def check_fractions(fractions: Sequence[float]) -> None:
    """Refuse fractions that are not positive numbers summing to 1 (to 1e-6)."""
    bad = [f for f in fractions if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1]
    if not fractions or bad:
        raise ValueError(f"tier fractions must be numbers in (0, 1], got {list(fractions)!r}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"tier fractions must sum to 1, got {list(fractions)!r} (sum {sum(fractions):.6g})")


def check_tiers(tiers: Tiers, num_clients: int) -> Tiers:
    """``tiers`` with ``of_client`` as an int32 array; refuses a wrong length, a tier out of range, a count mismatch."""
    T = len(tiers.models)
    if T < 1 or len(tiers.uplinks) != T or (tiers.names and len(tiers.names) != T):
        raise ValueError(f"Tiers needs as many uplinks (and names) as models, got {T} models, "
                         f"{len(tiers.uplinks)} uplinks, {len(tiers.names)} names")
    of = np.asarray(tiers.of_client)
    if of.shape != (num_clients,) or not np.issubdtype(of.dtype, np.integer):
        raise ValueError(f"Tiers.of_client must be {num_clients} integers (one per client), got shape {of.shape} "
                         f"of {of.dtype}")
    if of.size and (of.min() < 0 or of.max() >= T):
        raise ValueError(f"Tiers.of_client holds tier {int(of.min() if of.min() < 0 else of.max())}; tiers are "
                         f"0 to {T - 1}")
    names = tuple(tiers.names) or tuple(f"tier{t}" for t in range(T))
    return tiers._replace(of_client=of.astype(np.int32), names=names)


def tier_totals(of_client: np.ndarray, cohort: np.ndarray, uplink_bits: np.ndarray, num_tiers: int) -> dict:
    """Host-side sums of a block's ``RoundMetrics`` per tier: clients drawn and uplink bits (int64)."""
    cohort = np.asarray(cohort).reshape(-1)
    bits = np.asarray(uplink_bits, np.int64).reshape(-1)
    taken = cohort >= 0
    tier = np.asarray(of_client)[np.where(taken, cohort, 0)]
    return {"clients": np.bincount(tier[taken], minlength=num_tiers).astype(np.int64),
            "uplink_bits": np.bincount(tier[taken], weights=bits[taken], minlength=num_tiers).astype(np.int64)}
