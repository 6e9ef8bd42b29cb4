"""Distance-based selection: Krum, Multi-Krum (Blanchard et al. 2017) and Bulyan (El Mhamdi et al. 2018).

Every client's update is one row ``x_i`` (all leaves flattened); ``n`` rows are
valid and ``f`` of them are assumed Byzantine, ``f = floor(beta n)`` for the
rule's assumed fraction ``beta``. Weights are ignored (one client, one row).

Krum score:   s(i) = sum of the ``n - f - 2`` smallest ||x_i - x_j||^2, j valid, j != i
Krum:         the row with the smallest score
Multi-Krum:   the unweighted mean of the ``m`` rows with the smallest scores
Bulyan:       (1) select ``theta = n - 2f`` rows by Krum applied recursively (the
              chosen row leaves the set, the scores are recomputed on what remains);
              (2) per coordinate, the mean of the ``theta - 2f`` selected values
              closest to the selected rows' coordinate-wise median.
              Bulyan needs ``n >= 4f + 3``: ``f`` is lowered to ``floor((n - 3) / 4)`` when not.

Padding rows get infinite distances and scores, so they are never a neighbour
nor selected. Ties are broken by the lower slot. Cost: one ``[M, M]`` Gram
matrix (``M^2 P`` flops) of the rows centred at their coordinate-wise median, so
that the distances survive a large offset shared by every update in float32
(``stacked.pairwise_sq_distances``); Bulyan's recursion is ``M`` passes of
``O(M^2)`` over the neighbours sorted once.

References:
  Blanchard, El Mhamdi, Guerraoui, Stainer. "Machine Learning with Adversaries:
  Byzantine Tolerant Gradient Descent." NeurIPS 2017.
  El Mhamdi, Guerraoui, Rouault. "The Hidden Vulnerability of Distributed
  Learning in Byzantium." ICML 2018.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxqfl.aggregate.coordinatewise import check_fraction
from jaxqfl.aggregate.sensitivity import no_bound
from jaxqfl.aggregate.stacked import (
    flatten_rows, gather_rule, masked_row_mean, num_valid, pairwise_sq_distances, rank_mask, rows_mask,
)

SELECTION_UNBOUNDED = ("selects updates by their distances to one another, so one client can change which are "
                       "selected; no sensitivity bound below the ball's diameter is derived for it")


def assumed_byzantine(n, beta: float):
    return jnp.floor(beta * n).astype(jnp.int32)


#: The smallest cohort that tolerates f Byzantine rows: ``a f + b`` per rule (Krum's n > 2f + 2,
#: Blanchard et al. 2017; Bulyan's n >= 4f + 3, El Mhamdi et al. 2018).
_COHORT_FLOOR = {"krum": (2, 3), "multi-krum": (2, 3), "bulyan": (4, 3)}


class CohortRequirement(NamedTuple):
    """What a distance-based rule needs of a cohort of n rows, with ``f = floor(beta n)``."""

    cohort_size: int  # n
    assumed_byzantine: int  # f
    needed: int  # the smallest n for this f: 2f + 3 (Krum, Multi-Krum) or 4f + 3 (Bulyan)
    next_cohort: int | None  # the smallest n' >= n whose own floor(beta n') is tolerated (None: none below 10^6)
    largest_fraction: float | None  # every beta below it is tolerated at this n (None: none is, n < 3)

    @property
    def met(self) -> bool:
        return self.needed <= self.cohort_size


def cohort_requirement(rule: str, assumed_fraction: float, cohort_size: int) -> CohortRequirement:
    """Whether ``cohort_size`` rows tolerate the ``f = floor(beta n)`` the rule assumes (``rule``: krum,
    multi-krum or bulyan). Bulyan lowers f at run time when the bound fails (module docstring); a
    caller that knows n in advance (the CLI) refuses instead."""
    if rule not in _COHORT_FLOOR:
        raise ValueError(f"rule must be one of {sorted(_COHORT_FLOOR)}, got {rule!r}")
    a, b = _COHORT_FLOOR[rule]
    n = int(cohort_size)
    f = math.floor(assumed_fraction * n)
    tolerated = lambda m: a * math.floor(assumed_fraction * m) + b <= m
    next_cohort = next((m for m in range(max(n, 1), 10 ** 6) if tolerated(m)), None)
    f_max = (n - b) // a  # the largest f this n tolerates
    largest = None if f_max < 0 else (f_max + 1) / n  # floor(beta n) <= f_max  <=>  beta < (f_max + 1) / n
    return CohortRequirement(n, f, a * f + b, next_cohort, largest)


def neighbour_scores(dist_sorted, order, remaining, f):
    """Krum scores over the ``remaining`` rows: sum of each row's ``n_r - f - 2`` nearest remaining rows.

    ``order`` [M, M] lists each row's neighbours nearest first and ``dist_sorted`` their distances.
    """
    n_r = num_valid(remaining)
    k = jnp.maximum(n_r - f - 2, 1)
    rows = jnp.arange(order.shape[0])[:, None]
    rem = remaining[order] & (order != rows)  # [M, M]: is the r-th nearest neighbour another row still in the set?
    take = rem & (jnp.cumsum(rem.astype(jnp.int32), axis=1) <= k)
    score = jnp.sum(jnp.where(take, dist_sorted, 0.0), axis=1)
    return jnp.where(remaining, score, jnp.inf)


def sorted_neighbours(x, valid):
    d = pairwise_sq_distances(x, valid)
    order = jnp.argsort(d, axis=1)
    return jnp.take_along_axis(d, order, axis=1), order


def krum_scores(x, valid, f):
    """[M] Krum scores of the valid rows of ``x`` [M, P] (``+inf`` for padding rows)."""
    dist_sorted, order = sorted_neighbours(x, valid)
    return neighbour_scores(dist_sorted, order, valid, f)


def multi_krum_select(x, valid, f, m):
    """[M] bool: the ``m`` valid rows with the smallest Krum scores (``m`` clipped to [1, n])."""
    scores = krum_scores(x, valid, f)
    rank = jnp.argsort(jnp.argsort(scores))  # stable: ties go to the lower slot
    return valid & (rank < jnp.clip(m, 1, jnp.maximum(num_valid(valid), 1)))


def krum(assumed_fraction: float = 0.2):
    """Krum (Blanchard et al. 2017): the update with the smallest Krum score.

    Args:
      assumed_fraction: ``beta`` in [0, 0.5); the rule assumes ``f = floor(beta n)`` Byzantine rows.
    """
    return multi_krum(assumed_fraction, num_selected=1)


def multi_krum(assumed_fraction: float = 0.2, num_selected: int | None = None):
    """Multi-Krum (Blanchard et al. 2017): the mean of the ``m`` updates with the smallest Krum scores.

    Args:
      assumed_fraction: ``beta`` in [0, 0.5); ``f = floor(beta n)``.
      num_selected: ``m``; None means ``n - f`` (the paper's choice). ``m = 1`` is Krum.
    """
    beta = check_fraction("assumed_fraction", assumed_fraction, 0.5, "0.5")
    if num_selected is not None and (isinstance(num_selected, bool) or not isinstance(num_selected, int)
                                     or num_selected < 1):
        raise ValueError(f"num_selected (Multi-Krum's m) must be a positive integer or None, got {num_selected!r}")

    def server(stacked, state, stats, cohort):
        updates, _ = stacked
        n = num_valid(cohort.valid)
        f = assumed_byzantine(n, beta)
        m = n - f if num_selected is None else jnp.int32(num_selected)
        x, _ = flatten_rows(updates)
        selected = multi_krum_select(x, cohort.valid, f, m)
        return masked_row_mean(updates, selected), state, {}

    return gather_rule(server, dp=no_bound("krum / multi_krum", SELECTION_UNBOUNDED))


def bulyan_select(x, valid, f):
    """[M] bool: ``theta = n - 2f`` rows chosen by recursive Krum (Bulyan's first phase)."""
    n = num_valid(valid)
    theta = n - 2 * f
    dist_sorted, order = sorted_neighbours(x, valid)

    def pick(i, carry):
        remaining, selected = carry
        best = jnp.argmin(neighbour_scores(dist_sorted, order, remaining, f))
        go = i < theta
        one_hot = jnp.arange(x.shape[0]) == best
        return remaining & ~(one_hot & go), selected | (one_hot & go)

    _, selected = jax.lax.fori_loop(0, x.shape[0], pick, (valid, jnp.zeros_like(valid)))
    return selected


def bulyan(assumed_fraction: float = 0.2):
    """Bulyan (El Mhamdi et al. 2018) over recursive Krum (see the module docstring).

    Args:
      assumed_fraction: ``beta`` in [0, 0.25); ``f = min(floor(beta n), floor((n - 3) / 4))``.
    """
    beta = check_fraction("assumed_fraction", assumed_fraction, 0.25, "0.25")

    def server(stacked, state, stats, cohort):
        updates, _ = stacked
        n = num_valid(cohort.valid)
        f = jnp.maximum(jnp.minimum(assumed_byzantine(n, beta), (n - 3) // 4), 0)
        x, _ = flatten_rows(updates)
        selected = bulyan_select(x, cohort.valid, f)
        theta = num_valid(selected)
        keep = jnp.maximum(theta - 2 * f, 1)

        def one(u):
            uf = u.astype(jnp.float32)
            s = jnp.sort(jnp.where(rows_mask(selected, uf), uf, jnp.inf), axis=0)
            lo, hi = jnp.maximum((theta - 1) // 2, 0), theta // 2
            med = 0.5 * (jnp.take(s, lo, axis=0) + jnp.take(s, hi, axis=0))
            gap = jnp.where(rows_mask(selected, uf), jnp.abs(uf - med), jnp.inf)
            nearest = jnp.take_along_axis(uf, jnp.argsort(gap, axis=0), axis=0)
            total = jnp.sum(jnp.where(rank_mask(nearest, 0, keep), nearest, 0.0), axis=0)
            return jnp.where(theta > 0, total / keep, 0.0).astype(u.dtype)

        return jax.tree.map(one, updates), state, {}

    return gather_rule(server, dp=no_bound("bulyan", SELECTION_UNBOUNDED))
