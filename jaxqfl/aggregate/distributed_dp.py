"""Distributed DP: the Skellam mechanism (Agarwal, Kairouz, Liu 2021) summed under secure aggregation.

The server only ever sees the NOISED sum: each client adds its own share of
integer noise to its integer codes before secure aggregation masks them. One
round, client i (inside the vmap), with the update flattened to n coordinates::

    x_i <- x_i min(1, c / ||x_i||_2)                         clip (whole update, L2)
    y_i  = H D x_i / (sqrt(block) gamma)                      randomized Hadamard rotation, scale 1/gamma
    r_i  = conditional randomized rounding of y_i             ||r_i||_2 <= Delta_2 always (below)
    q_i  = r_i + Pois(lambda) - Pois(lambda)                  per coordinate, lambda = mu / (2 s)
    send q_i mod 2^b through jaxqfl.aggregate.secure (masks, dropouts, Shamir)

and the server gets ``S = sum_{survivors} q_i`` mod 2^b, reads it as a signed
integer in ``[-2^(b-1), 2^(b-1))``, and returns
``gamma D H S / sqrt(block)`` (padding dropped) divided by the number of survivors W.

* Rotation: ``jaxqfl.compress.hadamard`` (``rotate`` / ``unrotate``), the whole
  update padded to the next power of two d (or blocks of ``block_size``). Every
  client and the server use the SAME signs D: a public seed, the cohort's
  maximum of the clients' seeds ``draw_seed(purpose_key(client key, ROTATION))``
  published in the key-advertising pre-pass (32 bits each).
* Conditional randomized rounding (Kairouz, Liu, Steinke 2021, Sec. 4.1): round
  each coordinate up with probability its fractional part (unbiased), and retry
  (``fold_in(purpose_key(client key, UPLINK), try)``) until
  ``||r||_2 <= Delta_2 = min(c' + sqrt(d), sqrt(c'^2 + d/4 + sqrt(2 ln(1/beta)) (c' + sqrt(d)/2)))``,
  ``c' = c / gamma`` (one try fails with probability <= beta). After
  ``max_rounding_tries`` failures the client rounds toward zero (``|r_j| <= |y_j|``,
  so ``||r|| <= c' <= Delta_2``): the bound holds with probability 1, at a bias
  that occurs with probability <= beta^tries. ``Delta_1 = min(sqrt(d) Delta_2, Delta_2^2)``
  (integer vectors: ``|r_j| <= r_j^2``).
* Noise: Skellam, the difference of two Poissons (``jax.random.poisson``, jittable;
  its float32 arithmetic loses accuracy at large rates, so gamma is also kept
  large enough for ``lambda <= MAX_POISSON_RATE = 1e5``, where its variance is
  right to 0.2%: a coarser grid, whose rounding inflation the accounting
  includes), key ``purpose_key(client key, DP)``. Sums of Skellams are Skellam, so
  any W >= s surviving clients add ``Sk`` of variance ``W mu / s >= mu`` with
  ``mu = (z c / gamma)^2``: the noise std on the sum is at least z c, as central
  DP-FedAvg's. s (``noise_shares``) defaults to the survivors guaranteed up to
  probability 1e-6 (:func:`min_survivors`); with fewer survivors the clients
  refuse to unmask and the round fails like a SecAgg failure (the server learns nothing).
* Wrap-around (the sum is taken mod 2^b): the server's reading is exact unless
  some coordinate of the true sum leaves ``[-2^(b-1), 2^(b-1))``. With the
  shared rotation, coordinate j of the survivors' scaled sum v (``||v|| <= M c'``)
  satisfies ``P(|(Rv)_j| > a) <= 2 exp(-a^2 block / (2 M^2 c'^2))`` (Hoeffding over
  the random signs), the rounding errors add less than M, and the noise is
  ``Sk(M lambda, M lambda)`` at most (Chernoff bound on its tail, :func:`skellam_tail`). So::

      P(wrap) <= d [2 exp(-a^2 block / (2 M^2 c'^2)) + P(|Sk| > 2^(b-1) - M - a - 1)]

  for the best split a. Given b, gamma is the SMALLEST grid step (the finest
  grid: least rounding error and sensitivity inflation) whose bound is <=
  ``wrap_probability`` (default 1e-6 per round) and whose lambda is <= 1e5:
  :func:`skellam_parameters`.
  Wrap-around costs accuracy only, never privacy: the server's view (the sum mod
  2^b) is a function of the noised sum.
* Accounting: :func:`jaxqfl.privacy.distributed_epsilon` on ``Delta_2``, ``Delta_1``
  and ``mu`` (Agarwal et al.'s Skellam RDP bound, stated as an equivalent Gaussian).
* Weights: every surviving client weighs 1, and the mean is over the W survivors
  (W is public to the server and independent of the data: dividing by it is
  post-processing). Clients are assumed honest (each adds its noise share).

References:
  Agarwal, Kairouz, Liu. The Skellam Mechanism for Differentially Private
  Federated Learning. NeurIPS 2021.
  Kairouz, Liu, Steinke. The Distributed Discrete Gaussian Mechanism for
  Federated Learning with Secure Aggregation. ICML 2021.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxqfl import keys
from jaxqfl.aggregate.base import Aggregator
from jaxqfl.aggregate.secure import IntegerEncoder, secure_encoded_sum
from jaxqfl.compress.base import draw_seed
from jaxqfl.compress.hadamard import rotate, rotated_layout, rotation_signs, unrotate

MECHANISMS = ("skellam",)
# jax.random.poisson computes in float32: measured variance / rate over 10^6 draws was 0.998 at 1e5,
# 1.009 at 3e5, 1.025 at 1e6, 1.59 at 4.6e8. The grid is coarsened so that lambda <= 1e5.
MAX_POISSON_RATE = 1e5
_NORM_MARGIN = 1e-4  # accept ||r||^2 <= (1 - margin) Delta_2^2: float32 sums of squares err ~1e-6 relative


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


def conditional_round(y: jax.Array, bound: float, key: jax.Array, max_tries: int):
    """``(r, tries)``: randomized rounding of ``y`` retried until ``||r||_2 <= bound``; toward zero after ``max_tries``."""
    low = jnp.floor(y)
    frac = y - low
    limit = jnp.float32(bound * bound * (1.0 - _NORM_MARGIN))

    def body(carry):
        i, _, _ = carry
        r = low + (jax.random.uniform(jax.random.fold_in(key, i), y.shape) < frac).astype(jnp.float32)
        return i + 1, r, jnp.sum(jnp.square(r)) <= limit

    tries, r, ok = jax.lax.while_loop(lambda c: (~c[2]) & (c[0] < max_tries), body,
                                      (jnp.int32(0), jnp.zeros_like(y), jnp.asarray(False)))
    return jnp.where(ok, r, jnp.trunc(y)).astype(jnp.int32), tries


def skellam_encoder(params: SkellamParameters, template, *, block_size: Optional[int] = None,
                    max_rounding_tries: int = 10) -> IntegerEncoder:
    """The client side (clip, rotate, scale, round, noise) and the server's decoding, as an ``IntegerEncoder``.

    ``template``: a pytree of arrays (or ``jax.ShapeDtypeStruct``) shaped like the update.
    """
    leaves, treedef = jax.tree.flatten(template)
    shapes = [tuple(np.shape(x)) for x in leaves]
    sizes = [math.prod(s) for s in shapes]
    n = sum(sizes)
    if n != params.dimension:
        raise ValueError(f"the template has {n} coordinates, the parameters were computed for {params.dimension}")
    gamma, lam, p = params.scale, params.local_lambda, params

    def signs_of(shared):
        return rotation_signs(shared["rotation_seed"], [n], block_size)[0]

    def statistics(update, info):
        del update
        return {"rotation_seed": draw_seed(keys.purpose_key(info.key, keys.ROTATION))}

    def encode(update, shared, info):
        u_leaves, u_tree = jax.tree.flatten(update)
        if u_tree != treedef or [tuple(np.shape(x)) for x in u_leaves] != shapes:
            raise ValueError(f"distributed DP was built for updates shaped like its template ({treedef}, "
                             f"{n} coordinates); got {u_tree} with shapes {[np.shape(x) for x in u_leaves]}")
        flat = jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in u_leaves])
        norm = jnp.sqrt(jnp.sum(jnp.square(flat)))
        flat = flat * jnp.minimum(1.0, p.clip / jnp.maximum(norm, 1e-30))
        y = rotate(flat, signs_of(shared), block_size) / gamma
        r, tries = conditional_round(y, p.l2_sensitivity, keys.purpose_key(info.key, keys.UPLINK),
                                     max_rounding_tries)
        if lam > 0:
            dkey = keys.purpose_key(info.key, keys.DP)
            noise = (jax.random.poisson(jax.random.fold_in(dkey, 0), lam, r.shape, jnp.int32)
                     - jax.random.poisson(jax.random.fold_in(dkey, 1), lam, r.shape, jnp.int32))
            r = r + noise
        metrics = {"dp_update_norm": norm, "ddp_rounding_tries": tries.astype(jnp.float32)}
        return {"codes": r}, metrics

    def decode_sum(code_sum, shared, survivors):
        del survivors
        y = code_sum["codes"].astype(jnp.float32) * jnp.float32(gamma)
        flat = unrotate(y, signs_of(shared), (n,), block_size)
        offsets = np.cumsum([0] + sizes)
        return jax.tree.unflatten(treedef, [flat[a:b].reshape(s) for a, b, s in zip(offsets, offsets[1:], shapes)])

    return IntegerEncoder(statistics, encode, decode_sum, params.modulus_bits)


def distributed_skellam(
    clip: float,
    noise_multiplier: float,
    *,
    template,
    num_clients: int,
    cohort_size: int,
    bits: int = 20,
    protocol: str = "secagg+",
    dropout: float = 0.0,
    neighbours: Optional[int] = None,
    threshold: float = 0.5,
    noise_shares: Optional[int] = None,
    block_size: Optional[int] = None,
    rounding_beta: float = math.exp(-0.5),
    max_rounding_tries: int = 10,
    wrap_probability: float = 1e-6,
    failure_probability: float = 1e-6,
) -> Aggregator:
    """Distributed DP with the Skellam mechanism, summed under SecAgg / SecAgg+ (module docstring).

    Args:
      clip: c, the L2 clip of a client's whole update.
      noise_multiplier: z: the Skellam noise on the sum has std >= z c (update units), as in DP-FedAvg.
      template: a pytree shaped like the updates (the model's parameters for FedAvg).
      num_clients, cohort_size, protocol, dropout, neighbours, threshold, failure_probability:
        as in :func:`jaxqfl.aggregate.secure_sum`.
      bits: b, the modulus 2^b of the secure sum (1 to 32); gamma follows from it.
      noise_shares: s, the fewest survivors the noise is split for (default :func:`min_survivors`);
        a round with fewer survivors fails.
      block_size: Hadamard block length (a power of two) or None for the whole update.
      rounding_beta: beta of the conditional rounding (Kairouz et al.'s e^-0.5 by default).
      max_rounding_tries: rounding retries before rounding toward zero.
      wrap_probability: the per-round bound on a wrap-around that sets gamma.

    Returns:
      An ``Aggregator`` (reduction ``"sum"``). Server metrics: the secure sum's plus
      ``dp_noise_std`` (the std of the noise on the sum, update units) and ``ddp_scale`` (gamma);
      client metrics ``dp_update_norm`` and ``ddp_rounding_tries``.
    """
    s = min_survivors(cohort_size, dropout, failure_probability) if noise_shares is None else noise_shares
    n = sum(math.prod(np.shape(x)) for x in jax.tree.leaves(template))
    params = skellam_parameters(clip, noise_multiplier, dimension=n, cohort_size=cohort_size, bits=bits,
                                noise_shares=s, block_size=block_size, rounding_beta=rounding_beta,
                                wrap_probability=wrap_probability)
    encoder = skellam_encoder(params, template, block_size=block_size, max_rounding_tries=max_rounding_tries)
    inner = secure_encoded_sum(encoder, num_clients=num_clients, cohort_size=cohort_size, protocol=protocol,
                               neighbours=neighbours, threshold=threshold, dropout=dropout,
                               failure_probability=failure_probability, min_survivors=s)

    def server(reduced, state, stats, cohort):
        mean, state, metrics = inner.server(reduced, state, stats, cohort)
        W = metrics["secagg_survivors"]
        metrics = {**metrics, "dp_noise_std": jnp.float32(params.scale) * jnp.sqrt(2.0 * params.local_lambda * W),
                   "ddp_scale": jnp.float32(params.scale)}
        return mean, state, metrics

    return inner._replace(server=server)
