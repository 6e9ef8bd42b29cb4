"""SecAgg+'s neighbour graph: its degree k, the Shamir threshold t, and the round-failure bound.

The members of a round's cohort, sorted by a random public tag, form a k-regular
(Harary) graph: the member at position a neighbours the members at positions
``a +- 1 .. a +- k/2`` (mod M). A member's k neighbours hold its Shamir shares
(t-of-k); SecAgg is the complete graph (k = M - 1). See ``jaxqfl.aggregate.secure``.

References:
  Bell, Bonawitz, Gascon, Lepoint, Raykova. Secure Single-Server Aggregation
  with (Poly)Logarithmic Overhead. CCS 2020.
"""
from __future__ import annotations

import math

import numpy as np


def default_neighbours(cohort_size: int) -> int:
    """SecAgg+'s security floor on k: an even ``2 ceil(log2 M)``, at most M - 1."""
    return min(cohort_size - 1, 2 * math.ceil(math.log2(max(cohort_size, 2))))


def shamir_threshold(neighbours: int, threshold: float = 0.5) -> int:
    """t of a t-of-k sharing: ``min(k, floor(threshold k) + 1)`` (0.5: a strict majority of the k holders)."""
    return min(neighbours, int(math.floor(threshold * neighbours)) + 1)


def failure_bound(cohort_size: int, neighbours: int, dropout: float, threshold: float = 0.5) -> float:
    """Union bound on P(the round fails): ``M P(Bin(k, 1 - p) <= t - 1)``, capped at 1.

    Every member's k share holders drop out independently with probability p
    (the simulation's dropout model), so a member's surviving holders are
    ``Bin(k, 1 - p)`` and the round fails when some member has fewer than t.
    The binomial tail is exact (``scipy.stats.binom``); the union over the M
    members is the only slack.
    """
    from scipy import stats

    t = shamir_threshold(neighbours, threshold)
    return float(min(1.0, cohort_size * stats.binom.cdf(t - 1, neighbours, 1.0 - dropout)))


def choose_neighbours(cohort_size: int, dropout: float, threshold: float = 0.5,
                      failure_probability: float = 1e-6) -> int:
    """SecAgg+'s degree k for a declared dropout rate: the smallest even k that fails rarely enough.

    k is the smallest even number with ``default_neighbours(M) <= k <= M - 1`` and
    ``failure_bound(M, k, dropout, threshold) <= failure_probability``; when none
    exists, ``M - 1`` (every other member: the SecAgg graph), whose bound may
    then exceed the target (:func:`failure_bound` says by how much).

    Why these constraints (Bell et al. 2020):

    * The threshold stays ``t = floor(k/2) + 1`` (``threshold = 0.5``): an honest
      holder of client i's shares answers the server for the self-mask seed b_i
      (i survived) or for the key sk_i (i dropped), never both; with t > k/2 the
      server cannot collect t shares of BOTH secrets from i's k holders, so it
      never learns b_i and sk_i together, which would unmask i's own input.
      Lowering t to survive dropouts would give that up; raising k does not.
    * k never goes below ``2 ceil(log2 M)``: SecAgg+'s privacy needs the graph
      of honest clients to stay connected (k = O(log M) in Bell et al.), which
      the dropout rate alone does not express (at p = 0 it would allow k = 2).

    Args:
      cohort_size: M.
      dropout: p, the probability that a client drops out after masking (declared by the user).
      threshold: t as a fraction of k (``t = floor(threshold k) + 1``).
      failure_probability: the target bound on P(some member lacks t surviving holders) per round.
    """
    M = cohort_size
    if not (0.0 <= dropout < 1.0):
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if not (0.0 < failure_probability < 1.0):
        raise ValueError(f"failure_probability must be in (0, 1), got {failure_probability!r}")
    floor = default_neighbours(M)
    floor += floor % 2
    for k in range(floor, M - 1, 2):
        if failure_bound(M, k, dropout, threshold) <= failure_probability:
            return k
    return M - 1


def neighbour_offsets(protocol: str, cohort_size: int, neighbours: int | None) -> np.ndarray:
    """Position offsets of a member's neighbours in the tag order (a symmetric set, mod M)."""
    M = cohort_size
    if protocol == "secagg":
        return np.arange(1, M, dtype=np.int32)
    k = default_neighbours(M) if neighbours is None else neighbours
    if k >= M - 1:
        return np.arange(1, M, dtype=np.int32)
    if k < 2 or k % 2:
        raise ValueError(f"SecAgg+ needs an even number of neighbours >= 2 (or >= M - 1 = {M - 1}), got {k}")
    h = k // 2
    return np.concatenate([np.arange(1, h + 1), -np.arange(1, h + 1)]).astype(np.int32)
