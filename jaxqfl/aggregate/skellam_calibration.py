"""The Skellam mechanism's calibration: grid step, sensitivities and the wrap-around bound.

The static numbers of ``jaxqfl.aggregate.distributed_dp`` (whose docstring
derives them), computed on the host once per run: :func:`skellam_parameters`
picks the finest grid step gamma whose union bound on a wrap-around of the
``b``-bit sum (:func:`wrap_bound`, with the Chernoff bound :func:`skellam_tail`
on the noise) is below the target, and returns the rounded norm bound
Delta_2 (:func:`rounded_norm_bound`, Kairouz, Liu, Steinke 2021), Delta_1 and
the noise variance mu that the accounting needs (Agarwal, Kairouz, Liu 2021).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np

from jaxqfl.compress.hadamard import rotated_layout

# jax.random.poisson computes in float32: measured variance / rate over 10^6 draws was 0.998 at 1e5,
# 1.009 at 3e5, 1.025 at 1e6, 1.59 at 4.6e8. The grid is coarsened so that lambda <= 1e5.
MAX_POISSON_RATE = 1e5


class SkellamParameters(NamedTuple):
    """The static numbers of one configuration (code units: integers on the grid of step gamma)."""

    clip: float  # c, the L2 clip of the update (update units)
    noise_multiplier: float  # z: noise std z c on the sum of s clients (update units)
    dimension: int  # n, the update's coordinates
    rotated_dimension: int  # d >= n, after padding for the rotation
    block: int  # the rotation's block length (d for one block)
    scale: float  # gamma, update units per integer step
    modulus_bits: int  # b: the sum is taken mod 2^b
    cohort_size: int  # M
    noise_shares: int  # s: the fewest survivors whose noise the accounting assumes
    central_variance: float  # mu = (z c / gamma)^2, the Skellam variance of s clients' noise
    local_lambda: float  # lambda = mu / (2 s): each client adds Pois(lambda) - Pois(lambda)
    l2_sensitivity: float  # Delta_2, one client's rounded codes' L2 norm bound
    l1_sensitivity: float  # Delta_1 = min(sqrt(d) Delta_2, Delta_2^2)
    rounding_beta: float  # beta of the conditional rounding
    wrap_bound: float  # bound on P(some coordinate of the sum wraps around) per round


def min_survivors(cohort_size: int, dropout: float, failure_probability: float = 1e-6) -> int:
    """The largest s with ``P(Bin(M, 1 - p) < s) <= failure_probability`` (at least 1; M when p = 0)."""
    from scipy import stats

    if dropout == 0.0:
        return cohort_size
    s = int(stats.binom.ppf(failure_probability, cohort_size, 1.0 - dropout))
    while s > 1 and stats.binom.cdf(s - 1, cohort_size, 1.0 - dropout) > failure_probability:
        s -= 1
    while s + 1 <= cohort_size and stats.binom.cdf(s, cohort_size, 1.0 - dropout) <= failure_probability:
        s += 1
    return max(1, s)


def rounded_norm_bound(scaled_clip: float, dimension: int, beta: float) -> float:
    """Delta_2 of conditional randomized rounding (Kairouz, Liu, Steinke 2021): see the module docstring."""
    plain = scaled_clip + math.sqrt(dimension)
    if beta == 0.0:
        return plain
    squared = (scaled_clip ** 2 + dimension / 4.0
               + math.sqrt(2.0 * math.log(1.0 / beta)) * (scaled_clip + math.sqrt(dimension) / 2.0))
    return min(plain, math.sqrt(squared))


def skellam_tail(m, lam):
    """Chernoff bound on ``P(X >= m)``, X = Pois(lam) - Pois(lam), m > 0 (array).

    ``E e^(tX) = exp(2 lam (cosh t - 1))``; at the optimal ``t = asinh(m / (2 lam))``,
    ``P(X >= m) <= exp(2 lam (sqrt(1 + (m / 2 lam)^2) - 1) - m asinh(m / (2 lam)))``.
    """
    m = np.asarray(m, np.float64)
    if lam <= 0:
        return (m <= 0).astype(np.float64)
    x = m / (2.0 * lam)
    return np.where(m <= 0, 1.0, np.exp(2.0 * lam * (np.sqrt(1.0 + x * x) - 1.0) - m * np.arcsinh(x)))


def wrap_bound(scale: float, *, clip: float, noise_multiplier: float, rotated_dimension: int, block: int,
               cohort_size: int, noise_shares: int, modulus_bits: int) -> float:
    """The union bound on P(some coordinate of the survivors' sum leaves ``[-2^(b-1), 2^(b-1))``)."""
    M, d = cohort_size, rotated_dimension
    room = 2.0 ** (modulus_bits - 1) - M - 1  # left for signal + noise after M rounding errors
    if room <= 0:
        return 1.0
    c = clip / scale
    lam_total = M * ((noise_multiplier * c) ** 2) / (2.0 * noise_shares)
    a = np.linspace(0.0, room, 257)[1:]
    signal = 2.0 * np.exp(-(a ** 2) * block / (2.0 * (M * c) ** 2)) if c > 0 else np.zeros_like(a)
    noise = 2.0 * skellam_tail(np.floor(room - a) + 1.0, lam_total)
    return float(min(1.0, d * np.min(signal + noise)))


def skellam_parameters(
    clip: float,
    noise_multiplier: float,
    *,
    dimension: int,
    cohort_size: int,
    bits: int = 20,
    noise_shares: Optional[int] = None,
    block_size: Optional[int] = None,
    rounding_beta: float = math.exp(-0.5),
    wrap_probability: float = 1e-6,
) -> SkellamParameters:
    """The grid step gamma for ``bits`` and every bound the accounting needs (module docstring).

    gamma is found by bisection on log(gamma): the wrap bound only shrinks as the
    grid coarsens (every code-unit quantity scales as 1/gamma except the M rounding errors).
    """
    if not (isinstance(clip, (int, float)) and 0 < clip < math.inf):
        raise ValueError(f"distributed DP needs a finite clip > 0, got {clip!r}")
    if not (isinstance(noise_multiplier, (int, float)) and 0 <= noise_multiplier < math.inf):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
    if not (isinstance(bits, int) and 2 <= bits <= 32):
        raise ValueError(f"bits must be an integer in [2, 32] (the sum's words are uint32), got {bits!r}")
    if 2 ** (bits - 1) <= cohort_size + 1:
        raise ValueError(f"bits={bits} leaves no room for the signal: 2^(b-1) must exceed the cohort size "
                         f"{cohort_size} + 1 (the rounding errors alone reach M)")
    if not (0.0 <= rounding_beta < 1.0):
        raise ValueError(f"rounding_beta must be in [0, 1), got {rounding_beta!r}")
    if not (0.0 < wrap_probability < 1.0):
        raise ValueError(f"wrap_probability must be in (0, 1), got {wrap_probability!r}")
    s = cohort_size if noise_shares is None else noise_shares
    if not (isinstance(s, int) and 1 <= s <= cohort_size):
        raise ValueError(f"noise_shares must be an integer in [1, cohort_size={cohort_size}], got {noise_shares!r}")
    num_blocks, block = rotated_layout(dimension, block_size)
    d = num_blocks * block
    kw = dict(clip=clip, noise_multiplier=noise_multiplier, rotated_dimension=d, block=block,
              cohort_size=cohort_size, noise_shares=s, modulus_bits=bits)
    lo, hi = math.log(clip) - 80.0, math.log(clip) + 10.0  # gamma = e^hi: everything rounds to 0 or 1
    if wrap_bound(math.exp(hi), **kw) > wrap_probability:
        raise ValueError(f"no grid step keeps the wrap-around probability below {wrap_probability} with "
                         f"bits={bits}; raise bits")
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if wrap_bound(math.exp(mid), **kw) <= wrap_probability:
            hi = mid
        else:
            lo = mid
    gamma = math.exp(hi)
    if noise_multiplier > 0:  # keep each Poisson's rate where jax's float32 sampler is accurate
        gamma = max(gamma, noise_multiplier * clip / math.sqrt(2.0 * s * MAX_POISSON_RATE))
    c = clip / gamma
    mu = (noise_multiplier * c) ** 2
    l2 = rounded_norm_bound(c, d, rounding_beta)
    return SkellamParameters(
        clip=float(clip), noise_multiplier=float(noise_multiplier), dimension=int(dimension), rotated_dimension=d,
        block=block, scale=gamma, modulus_bits=bits, cohort_size=cohort_size, noise_shares=s,
        central_variance=mu, local_lambda=mu / (2.0 * s), l2_sensitivity=l2,
        l1_sensitivity=min(math.sqrt(d) * l2, l2 ** 2), rounding_beta=float(rounding_beta),
        wrap_bound=wrap_bound(gamma, **kw))
