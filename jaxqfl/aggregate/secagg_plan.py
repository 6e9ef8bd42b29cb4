"""Will secure aggregation fail at the declared dropout? Predicted before any work, from the binomial.

A round of ``jaxqfl.aggregate.secure`` fails when some member of the cohort has
fewer than t surviving share holders among its k neighbours, or (distributed
DP) when fewer than s clients survive. Every client drops out independently
with probability p (the simulation's dropout model), so with W ~ Bin(M, 1 - p)
survivors:

* SecAgg (complete graph, k = M - 1): a surviving member has W - 1 surviving
  holders, a dropped one W; the round fails exactly when ``W <= t`` (and W < M,
  which t <= M - 1 implies) or ``W < s``::

      P(round fails) = P(W <= max(t, s - 1))                              (exact)

* SecAgg+ (k-regular graph): a member fails with ``q = P(Bin(k, 1 - p) <= t - 1)``.
  Members whose positions are more than k apart have disjoint holder sets, so
  ``g = floor(M / (k + 1))`` of them fail independently, and the union over all
  M members bounds from above::

      max(1 - (1 - q)^g, P(W < s))  <=  P(round fails)  <=  min(1, M q + P(W < s))

Rounds draw their dropouts independently, so a run of R rounds contains a
failed round with probability ``1 - (1 - P(round fails))^R``, bounded by the
same expression on each side. The CLI turns a failed round into an error, so a
run is refused (:func:`check`) when its failure is more likely than not:

    refuse  when  1 - (1 - lower)^R >= REFUSE_PROBABILITY (1/2)

and warned about when the upper bound reaches ``WARN_PROBABILITY`` (1%). The
refusal says which ``dropout`` (at this threshold) and which ``threshold`` (at
this dropout) would be accepted, both at the same k.

References:
  Bonawitz et al. Practical Secure Aggregation for Privacy-Preserving Machine
  Learning. CCS 2017.
  Bell, Bonawitz, Gascon, Lepoint, Raykova. Secure Single-Server Aggregation
  with (Poly)Logarithmic Overhead. CCS 2020.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from jaxqfl.aggregate.secagg_graph import choose_neighbours, shamir_threshold

REFUSE_PROBABILITY = 0.5
WARN_PROBABILITY = 0.01


class SecaggWillFail(ValueError):
    """The declared dropout and threshold make a failed round more likely than not."""


class FailurePlan(NamedTuple):
    """What the declared settings predict (module docstring)."""

    cohort_size: int  # M
    neighbours: int  # k
    holders_needed: int  # t
    min_survivors: int  # s
    expected_survivors: float  # M (1 - p)
    round_lower: float  # bounds on P(one round fails)
    round_upper: float
    run_lower: float  # bounds on P(some round of the run fails)
    run_upper: float

    @property
    def refused(self) -> bool:
        return self.run_lower >= REFUSE_PROBABILITY

    @property
    def warned(self) -> bool:
        return not self.refused and self.run_upper >= WARN_PROBABILITY


def _binom_cdf(x: int, n: int, p: float) -> float:
    from scipy import stats

    return float(stats.binom.cdf(x, n, p)) if x >= 0 else 0.0


def round_failure_bounds(cohort_size: int, neighbours: int, dropout: float, threshold: float = 0.5,
                         min_survivors: int = 1) -> tuple[float, float]:
    """``(lower, upper)`` bounds on P(a round fails) (module docstring; equal for the complete graph)."""
    M, k, p, s = cohort_size, min(neighbours, cohort_size - 1), dropout, min_survivors
    t = shamir_threshold(k, threshold)
    few = _binom_cdf(s - 1, M, 1.0 - p)  # P(W < s)
    if k >= M - 1:
        exact = _binom_cdf(max(t, s - 1), M, 1.0 - p)
        return exact, exact
    q = _binom_cdf(t - 1, k, 1.0 - p)
    independent = M // (k + 1)
    lower = max(-math.expm1(independent * math.log1p(-q)) if q < 1 else 1.0, few)
    return lower, min(1.0, M * q + few)


def _over_rounds(p_round: float, rounds: int) -> float:
    """``1 - (1 - p)^R`` without cancellation."""
    if p_round >= 1.0:
        return 1.0
    return -math.expm1(rounds * math.log1p(-p_round))


class SecaggDegree(NamedTuple):
    """The graph a round of secure aggregation uses, and how often it fails (:func:`choose_degree`)."""

    neighbours: int  # k: each client's share holders (M - 1 for SecAgg)
    holders_needed: int  # t = min(k, floor(threshold k) + 1)
    failure_bound: float  # upper bound on P(one round fails)
    exact: bool  # the bound is exact (the complete graph), else the union bound


def _degree(cohort_size: int, dropout: float, threshold: float, protocol: str, neighbours: int | None) -> int:
    M = cohort_size
    if protocol == "secagg":
        return M - 1
    if neighbours is not None:
        return min(neighbours, M - 1)
    return choose_neighbours(M, dropout, threshold)


def choose_degree(cohort_size: int, dropout: float = 0.0, threshold: float = 0.5, *, protocol: str = "secagg+",
                  neighbours: int | None = None, min_survivors: int = 1) -> SecaggDegree:
    """SecAgg / SecAgg+'s degree k, its Shamir threshold t and the bound on a round's failure.

    SecAgg: the complete graph, k = M - 1, and the exact failure probability. SecAgg+:
    ``neighbours`` if given (an even k >= 2, or >= M - 1 for all pairs), else the smallest
    even k >= 2 ceil(log2 M) whose union bound is <= 1e-6 at ``dropout``
    (:func:`jaxqfl.aggregate.secagg_graph.choose_neighbours`; all pairs when none is).
    The bound is :func:`round_failure_bounds`' upper one (with ``min_survivors`` s: a round also
    fails below s survivors, distributed DP's noise shares). Pure; raises ValueError naming a bad value.
    """
    from jaxqfl.aggregate.secure import PROTOCOLS

    M = cohort_size
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if not (isinstance(M, int) and M >= 2):
        raise ValueError(f"secure aggregation needs a cohort of at least 2 clients, got cohort_size={M!r}")
    if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if not (isinstance(threshold, (int, float)) and 0.0 < threshold <= 1.0):
        raise ValueError(f"threshold must be a fraction in (0, 1], got {threshold!r}")
    if neighbours is not None:
        if protocol == "secagg":
            raise ValueError(f"neighbours applies to protocol 'secagg+' (SecAgg uses all M - 1 = {M - 1} pairs), "
                             f"got neighbours={neighbours!r}")
        if not (isinstance(neighbours, int) and (neighbours >= M - 1 or (neighbours >= 2 and neighbours % 2 == 0))):
            raise ValueError(f"neighbours must be an even number >= 2 (or >= cohort_size - 1 = {M - 1} for all "
                             f"pairs), got {neighbours!r}")
    if not (isinstance(min_survivors, int) and 1 <= min_survivors <= M):
        raise ValueError(f"min_survivors must be an integer in [1, cohort_size={M}], got {min_survivors!r}")
    k = _degree(M, dropout, threshold, protocol, neighbours)
    _, upper = round_failure_bounds(M, k, dropout, threshold, min_survivors)
    return SecaggDegree(k, shamir_threshold(k, threshold), upper, k >= M - 1)


def plan(cohort_size: int, rounds: int, dropout: float, threshold: float = 0.5, *, protocol: str = "secagg+",
         neighbours: int | None = None, min_survivors: int = 1) -> FailurePlan:
    """The failure prediction of a run: ``neighbours`` None is SecAgg+'s default k (:func:`choose_neighbours`)."""
    M = cohort_size
    k = _degree(M, dropout, threshold, protocol, neighbours)
    lower, upper = round_failure_bounds(M, k, dropout, threshold, min_survivors)
    return FailurePlan(M, k, shamir_threshold(k, threshold), min_survivors, M * (1.0 - dropout), lower, upper,
                       _over_rounds(lower, rounds), _over_rounds(upper, rounds))


def largest_dropout(cohort_size: int, neighbours: int, rounds: int, threshold: float, min_survivors: int = 1,
                    ) -> float:
    """The largest dropout (to 3 decimals, rounded down) whose run is not refused at this k and threshold."""
    def refused(p):
        lower, _ = round_failure_bounds(cohort_size, neighbours, p, threshold, min_survivors)
        return _over_rounds(lower, rounds) >= REFUSE_PROBABILITY

    if refused(0.0):
        return -1.0
    lo, hi = 0.0, 1.0  # refused(hi) holds: at p -> 1 every round fails
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if refused(mid) else (mid, hi)
    return math.floor(lo * 1000) / 1000


def largest_threshold(cohort_size: int, neighbours: int, rounds: int, dropout: float, min_survivors: int = 1,
                      ) -> float | None:
    """The supremum of the thresholds (fractions of k) whose run is not refused at this k and dropout.

    ``t = floor(f k) + 1 <= t*`` holds for ``f < t* / k``; None when even t = 1 is refused.
    """
    k = min(neighbours, cohort_size - 1)
    best = None
    for t in range(1, k + 1):  # failure grows with t: stop at the first refused one
        f = (t - 0.5) / k  # a fraction whose threshold is exactly t
        lower, _ = round_failure_bounds(cohort_size, k, dropout, f, min_survivors)
        if _over_rounds(lower, rounds) >= REFUSE_PROBABILITY:
            break
        best = t
    return None if best is None else best / k


def check(cohort_size: int, rounds: int, dropout: float, threshold: float = 0.5, *, protocol: str = "secagg+",
          neighbours: int | None = None, min_survivors: int = 1) -> FailurePlan:
    """The run's :class:`FailurePlan`; raises :class:`SecaggWillFail` when the run would likely fail.

    The message names the cohort, k, t, the expected survivors and both bounds, and what
    would be accepted: the largest dropout at this threshold and the largest threshold at
    this dropout (same k). Flags are named as the CLI's (``--dropout``, ``--secagg-threshold``).
    """
    fp = plan(cohort_size, rounds, dropout, threshold, protocol=protocol, neighbours=neighbours,
              min_survivors=min_survivors)
    if not fp.refused:
        return fp
    k, t, M = fp.neighbours, fp.holders_needed, cohort_size
    p_max = largest_dropout(M, k, rounds, threshold, min_survivors)
    f_max = largest_threshold(M, k, rounds, dropout, min_survivors)
    need = f"{t} of its {k} share holders to survive"
    if min_survivors > 1:
        need += f" and {min_survivors} clients to survive (the noise is split over them)"
    allowed = (f"at --secagg-threshold {threshold:g}, --dropout at most {p_max:g}" if p_max >= 0 else
               f"no --dropout at --secagg-threshold {threshold:g}")
    if f_max is None:
        allowed += f"; no --secagg-threshold works at --dropout {dropout:g}"
    else:
        allowed += f"; at --dropout {dropout:g}, --secagg-threshold below {f_max:.3g}"
        if f_max <= 0.5:
            allowed += (" (below 0.5, t is no longer a majority of k, which SecAgg needs against a server that "
                        "asks for both secrets of a client)")
    raise SecaggWillFail(
        f"--dropout {dropout:g} with --secagg-threshold {threshold:g} makes secure aggregation fail: each of the "
        f"cohort's {M} clients needs {need}, and {fp.expected_survivors:.3g} clients survive on average; "
        f"P(a round fails) >= {fp.round_lower:.3g}, so the run's {rounds} rounds include a failed one with "
        f"probability >= {fp.run_lower:.3g} (refused from {REFUSE_PROBABILITY:g}). Allowed: {allowed}")
