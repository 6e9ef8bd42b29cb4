"""The Skellam wrap-around bound against an independent computation and a Monte-Carlo run.

The server reads the survivors' sum mod 2^b as a signed integer in
``[-2^(b-1), 2^(b-1))`` (``secure.to_signed``), so a coordinate wraps when its
true sum leaves that range. For one input the wrap probability can be computed
without the module's Hoeffding/Chernoff bound: M clients all send
``x = (c / sqrt(n)) (1, ..., 1)`` (n = 19 coordinates, padded to d = 32). After
the shared rotation ``H D x / sqrt(d)`` each coordinate is a Rademacher sum,
exactly ``c (2 Bin(n, 1/2) - n) / sqrt(n d)``; the M roundings move the sum by
less than M; the M noise shares sum to ``Sk(M lambda, M lambda)`` (scipy's exact
Skellam). So a coordinate wraps with probability at least

    P_low = P(|M y + Sk| >= 2^(b-1) + M),     y = c (2 Bin(n, 1/2) - n) / (gamma sqrt(n d)),

and the probability that SOME coordinate wraps is at least P_low: the module's
bound must never be below it, at its own grid step and at any other. A module
that used the unsigned range 2^b would pick a grid ~2x finer, where P_low is far
above its claimed 1e-6 (checked below, so the test has the power to see it).
A Monte-Carlo run of the real encoder checks the model (and that decoding is
exact precisely inside the signed range).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxqfl.aggregate import distributed_dp as ddp
from jaxqfl.aggregate import skellam_calibration as cal
from jaxqfl.aggregate.secure import to_signed
from jaxqfl.algorithms.base import ClientInfo

M, N_COORDS, D = 10, 19, 32
TEMPLATE = {"w": jnp.zeros((N_COORDS,))}


def _lambda_total(gamma, clip, z, shares):
    return M * (z * clip / gamma) ** 2 / (2.0 * shares)


def _coordinate_wrap(gamma, clip, z, shares, bits, margin):
    """P(|M y + Sk| >= 2^(b-1) + margin) for the spread input (module docstring), exactly."""
    k = np.arange(N_COORDS + 1)
    pk = stats.binom.pmf(k, N_COORDS, 0.5)
    signal = M * clip * (2 * k - N_COORDS) / (gamma * math.sqrt(N_COORDS * D))
    limit = 2.0 ** (bits - 1) + margin
    lam = _lambda_total(gamma, clip, z, shares)
    if lam == 0:
        return float(np.sum(pk * (np.abs(signal) >= limit)))
    # P(S + Sk >= limit) + P(S + Sk <= -limit), Sk integer: >= ceil(limit - S), <= floor(-limit - S)
    up = stats.skellam.sf(np.ceil(limit - signal) - 1, lam, lam)
    down = stats.skellam.cdf(np.floor(-limit - signal), lam, lam)
    return float(np.sum(pk * (up + down)))


CONFIGS = [(12, 1.0), (16, 0.0), (16, 0.5), (20, 0.5)]


@pytest.mark.parametrize("bits,z", CONFIGS)
def test_wrap_bound_is_above_an_exact_lower_bound(bits, z):
    clip = 1.0
    p = cal.skellam_parameters(clip, z, dimension=N_COORDS, cohort_size=M, bits=bits)
    assert (p.rotated_dimension, p.block) == (D, D)
    kw = dict(clip=clip, noise_multiplier=z, rotated_dimension=D, block=D, cohort_size=M,
              noise_shares=p.noise_shares, modulus_bits=bits)
    assert _coordinate_wrap(p.scale, clip, z, p.noise_shares, bits, M) <= p.wrap_bound <= 1e-6
    for f in (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1):
        g = p.scale * f
        assert cal.wrap_bound(g, **kw) >= _coordinate_wrap(g, clip, z, p.noise_shares, bits, M)
    # the test's power: at half the step (what the unsigned range 2^b would give) wraps are likely
    if p.local_lambda * 4 <= cal.MAX_POISSON_RATE:  # (the grid was not set by the Poisson-rate floor)
        assert _coordinate_wrap(p.scale / 2, clip, z, p.noise_shares, bits, M) > 1e-6


def test_monte_carlo_of_the_encoder_matches_the_model_and_wraps_start_at_the_signed_range():
    """The real encoder at a grid step fine enough for wraps to be seen: the frequency with which
    a coordinate of the true integer sum leaves [-2^(b-1), 2^(b-1)) lies between the model's
    probabilities with margins +M and -M (binomial tolerance of one coordinate), and ``to_signed(sum mod 2^b)``
    equals the true sum exactly when it lies inside that range."""
    bits, z, clip, rounds = 12, 1.0, 1.0, 200
    p0 = cal.skellam_parameters(clip, z, dimension=N_COORDS, cohort_size=M, bits=bits)
    gamma = p0.scale * 0.15
    mu = (z * clip / gamma) ** 2
    p = p0._replace(scale=gamma, central_variance=mu, local_lambda=mu / (2 * M),
                    l2_sensitivity=cal.rounded_norm_bound(clip / gamma, D, p0.rounding_beta))
    enc = ddp.skellam_encoder(p, TEMPLATE)
    x = {"w": jnp.full((N_COORDS,), clip / math.sqrt(N_COORDS) * (1 - 1e-6), jnp.float32)}

    @jax.jit
    def true_sums(r):
        rkey = jax.random.fold_in(jax.random.key(3), r)
        shared = {"rotation_seed": jax.random.bits(jax.random.fold_in(rkey, 99), (), jnp.uint32)}

        def one(i):
            info = ClientInfo(i, jnp.int32(1), jnp.int32(1), jax.random.fold_in(rkey, i), r)
            return enc.encode(x, shared, info)[0]["codes"]

        return jnp.sum(jax.vmap(one)(jnp.arange(M, dtype=jnp.int32)), axis=0)

    sums = np.asarray(jax.vmap(true_sums)(jnp.arange(rounds, dtype=jnp.int32)), np.int64)  # [rounds, D]
    R = 2 ** (bits - 1)
    inside = (sums >= -R) & (sums < R)
    decoded = np.asarray(to_signed(jnp.asarray(sums % (1 << bits), jnp.uint32), bits), np.int64)
    np.testing.assert_array_equal(decoded == sums, inside)
    freq = float(np.mean(~inside))  # every coordinate has the same law: the mean's variance is at most one's
    low = _coordinate_wrap(gamma, clip, z, M, bits, M)
    high = _coordinate_wrap(gamma, clip, z, M, bits, -M)
    tol = 4 * math.sqrt(0.25 / rounds)
    assert 0.05 < low and high < 0.95  # an observable regime
    assert low - tol <= freq <= high + tol
