"""Adaptive clipping's count noise (Andrew et al. 2021): drawn as declared, and accounted.

* The noised unclipped count ``sum_i (b_i - 1/2) + N(0, sigma_b^2)`` that the server
  releases has, over many round keys, the declared std ``sigma_b`` (a chi-square
  test on the sample variance) and mean the true count; it is independent of the
  update noise.
* Epsilon with ``sigma_b > 0`` equals dp-accounting's on the event built here
  from the paper's sensitivities: the centred count moves by 1/2 when one client
  is added or removed (by 1 when one is replaced), the clipped sum by C (2C), and
  two Gaussians on one query compose into one with multiplier
  ``(z_update^-2 + z_count^-2)^(-1/2)`` -- checked on its own against
  dp-accounting's composition of the two Gaussian events.
"""
import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxqfl import aggregate, privacy
from jaxqfl.aggregate.base import CohortInfo, CohortStatistics
from jaxqfl.aggregate.dp import DPState

K = 4000  # round keys
M = 10  # cohort slots, the denominator


def _released(agg, unclipped, rounds=K):
    """The server's released (fraction, update noise) over ``rounds`` round keys."""
    cohort0 = CohortInfo(ids=jnp.arange(M, dtype=jnp.int32), valid=jnp.ones(M, bool), key=jax.random.key(0),
                         round=jnp.int32(0))
    reduced = {"sum": {"w": jnp.zeros(3, jnp.float32)}, "unclipped": jnp.float32(unclipped)}

    def one(r):
        cohort = cohort0._replace(key=jax.random.fold_in(jax.random.key(7), r), round=r)
        out, _, metrics = agg.server(reduced, DPState(clip=jnp.float32(1.0)), CohortStatistics(), cohort)
        return metrics["dp_unclipped_fraction"], out["w"][0]

    frac, upd = jax.jit(jax.vmap(one))(jnp.arange(rounds, dtype=jnp.int32))
    return np.asarray(frac, np.float64), np.asarray(upd, np.float64)


@pytest.mark.parametrize("sigma_b", [0.5, 2.5])
def test_the_count_noise_has_its_declared_std(sigma_b):
    count = 1.5  # sum_i (b_i - 1/2): 7 of 10 clients unclipped
    agg = aggregate.dp_mean(clip=1.0, noise_multiplier=0.8, target_quantile=0.5, count_noise_std=sigma_b)
    frac, upd = _released(agg, count)
    noise = (frac - 0.5) * M - count  # b~ = (count + noise) / D + 1/2
    # (K - 1) s^2 / sigma^2 ~ chi2(K - 1): a two-sided test at 1e-6 (the band is about +-8% of sigma^2)
    stat = (K - 1) * noise.var(ddof=1) / sigma_b ** 2
    assert stats.chi2.ppf(1e-6, K - 1) < stat < stats.chi2.ppf(1 - 1e-6, K - 1)
    assert abs(noise.mean()) < 5 * sigma_b / np.sqrt(K)
    # independent of the update noise (std z C / D = 0.08 on each coordinate of the mean)
    assert abs(np.corrcoef(noise, upd)[0, 1]) < 5 / np.sqrt(K)


def test_without_count_noise_the_count_is_exact():
    agg = aggregate.dp_mean(clip=1.0, noise_multiplier=0.8, target_quantile=0.5, count_noise_std=0.0)
    frac, _ = _released(agg, 1.5, rounds=50)
    np.testing.assert_allclose(frac, 1.5 / M + 0.5, rtol=1e-6)


def test_a_client_moves_the_centred_count_by_one_half():
    """The count's add/remove sensitivity the accounting uses: a client's summand is b_i - 1/2."""
    agg = aggregate.dp_mean(clip=1.0, noise_multiplier=0.8, target_quantile=0.5, count_noise_std=1.0)
    for b in (0.0, 1.0):
        summand, _, _ = agg.client({"w": jnp.ones(3)}, jnp.float32(1.0), jnp.float32(b), DPState(jnp.float32(1.0)),
                                   CohortStatistics(), None)
        assert float(summand["unclipped"]) == b - 0.5


def _multiplier(z_update, z_count):
    return (z_update ** -2 + z_count ** -2) ** -0.5


@pytest.mark.parametrize("z1,z2", [(1.1, 2.0), (0.7, 5.0)])
def test_two_gaussians_compose_into_the_effective_one(z1, z2):
    """The combination rule itself, against dp-accounting's composition (PLD, no sampling)."""
    delta = 1e-6
    composed = dp_accounting.pld.PLDAccountant()
    composed.compose(dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(z1),
                                                    dp_accounting.GaussianDpEvent(z2)]), 5)
    single = dp_accounting.pld.PLDAccountant()
    single.compose(dp_accounting.GaussianDpEvent(_multiplier(z1, z2)), 5)
    assert composed.get_epsilon(delta) == pytest.approx(single.get_epsilon(delta), rel=2e-3)


@pytest.mark.parametrize("sampling,rounds", [("fixed", 40), ("poisson", 15)])
def test_epsilon_with_count_noise_equals_dp_accounting(sampling, rounds):
    N, cohort, z, sigma_b, delta = 1000, 50, 1.1, 2.5, 1e-5  # sigma_b = cohort / 20 (Andrew et al.)
    eps = privacy.epsilon(z, delta, rounds, num_clients=N, cohort_size=cohort, sampling=sampling,
                          count_noise_std=sigma_b)
    if sampling == "fixed":  # replace-one: the sum moves by 2C (std z C), the centred count by 1
        acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
        event = dp_accounting.SampledWithoutReplacementDpEvent(
            N, cohort, dp_accounting.GaussianDpEvent(_multiplier(z / 2, sigma_b)))
    else:  # add/remove-one: the sum moves by C, the centred count by 1/2
        acc = dp_accounting.pld.PLDAccountant(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
        event = dp_accounting.PoissonSampledDpEvent(cohort / N, dp_accounting.GaussianDpEvent(
            _multiplier(z, 2 * sigma_b)))
    acc.compose(event, rounds)
    assert eps == pytest.approx(acc.get_epsilon(delta), rel=1e-9)
    without = privacy.epsilon(z, delta, rounds, num_clients=N, cohort_size=cohort, sampling=sampling)
    assert eps > without * 1.01  # the count noise is part of the event
