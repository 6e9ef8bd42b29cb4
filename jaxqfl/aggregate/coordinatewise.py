"""Coordinate-wise robust rules: median and trimmed mean (Yin et al. 2018), gather path.

For each coordinate ``k`` separately, over the ``n`` valid rows (weights ignored:
every client counts once, as in the paper):

    median_k       = median{ u_ik : i valid }     (mean of the two middle values when n is even)
    trimmed_mean_k = 1/(n - 2b) sum_{r=b}^{n-b-1} u_(r)k,     b = floor(beta n)

where ``u_(r)k`` is the r-th smallest value. Padding rows are sorted to ``+inf``
(ranks >= n), so they never enter. Both stay within the range of the honest
values of each coordinate whenever fewer than half (median) or at most ``b``
(trimmed mean) rows are adversarial. Their L2 sensitivity over inputs in the
C-ball (for central DP: ``jaxqfl.aggregate.sensitivity``): C for the median,
``C / (n - 2b)`` for the trimmed mean under replace-one.

References:
  Yin, Chen, Ramchandran, Bartlett. "Byzantine-Robust Distributed Learning:
  Towards Optimal Statistical Rates." ICML 2018.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxqfl.aggregate.sensitivity import median_bound, trimmed_mean_bound
from jaxqfl.aggregate.stacked import gather_rule, num_valid, rank_mask, sort_valid, valid_median


def check_fraction(name: str, value, high: float, high_text: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < high:
        raise ValueError(f"{name} must be a number in [0, {high_text}), got {value!r}")
    return float(value)


def coordinate_median(updates, valid):
    """Coordinate-wise median of the valid rows of every ``[M, ...]`` leaf (zeros when none is valid)."""
    return jax.tree.map(lambda u: valid_median(u, valid), updates)


def trimmed_count(n, beta: float):
    """``b = floor(beta n)``, the values dropped at EACH end of ``n`` (int32)."""
    return jnp.floor(beta * n).astype(jnp.int32)


def coordinate_trimmed_mean(updates, valid, beta: float):
    """Mean of ranks ``[b, n - b)`` per coordinate, ``b = floor(beta n)`` (zeros when none is valid)."""
    n = num_valid(valid)
    b = trimmed_count(n, beta)

    def one(u):
        s = sort_valid(u, valid)
        keep = rank_mask(s, b, n - b)
        total = jnp.sum(jnp.where(keep, s, 0.0), axis=0)
        return (total / jnp.maximum(n - 2 * b, 1)).astype(u.dtype)

    return jax.tree.map(one, updates)


def median():
    """Coordinate-wise median (Yin et al. 2018) on the gather path."""

    def server(stacked, state, stats, cohort):
        updates, _ = stacked
        return coordinate_median(updates, cohort.valid), state, {}

    return gather_rule(server, dp=median_bound())


def trimmed_mean(trim_fraction: float = 0.1):
    """Coordinate-wise trimmed mean (Yin et al. 2018): drop ``floor(beta n)`` values at each end.

    Args:
      trim_fraction: ``beta`` in ``[0, 0.5)``; 0 is the unweighted mean.
    """
    beta = check_fraction("trim_fraction", trim_fraction, 0.5, "0.5")

    def server(stacked, state, stats, cohort):
        updates, _ = stacked
        return coordinate_trimmed_mean(updates, cohort.valid, beta), state, {}

    return gather_rule(server, dp=trimmed_mean_bound(lambda n: n - 2 * trimmed_count(n, beta)))
