"""Accounting of distributed DP (the Skellam mechanism) through ``dp-accounting``, via an equivalent Gaussian.

``dp-accounting`` has no Skellam event, and we write no accountant by hand. The
bound used is Agarwal, Kairouz, Liu (2021), Corollary 4.1 (the multi-dimensional
Skellam mechanism, as used in their accounting code): adding Skellam noise of
variance mu (``Pois(mu/2) - Pois(mu/2)`` per coordinate) to an integer-valued sum
whose neighbouring values differ by at most ``Delta_2`` in L2 and ``Delta_1`` in L1
norm is (alpha, eps(alpha))-RDP with::

    eps(alpha) = alpha Delta_2^2 / (2 mu) + min(((2 alpha - 1) Delta_2^2 + 6 Delta_1) / (4 mu^2),
                                                3 Delta_1 / (2 mu))

For alpha >= 1, ``(2 alpha - 1) D2^2 + 6 D1 <= alpha (2 D2^2 + 6 D1)`` and
``3 D1 / (2 mu) <= alpha 3 D1 / (2 mu)``, so ``eps(alpha) <= alpha / (2 z_eff^2)``,
the RDP of a Gaussian mechanism with noise multiplier::

    z_eff = (Delta_2^2 / mu + min((Delta_2^2 + 3 Delta_1) / mu^2, 3 Delta_1 / mu))^(-1/2)

(-> sqrt(mu) / Delta_2, the Gaussian's, as mu grows). The Skellam mechanism's RDP
curve is below ``GaussianDpEvent(z_eff)``'s at every order, so ONE round without
sampling, and the composition of rounds, are accounted rigorously by the Gaussian.

The approximation: the round's event is the existing sampled event
(:func:`jaxqfl.privacy.round_event`'s) around ``GaussianDpEvent(z_eff)``, and
``dp-accounting`` computes the amplification by sampling with formulas specific
to the Gaussian (Wang, Balle, Kasiviswanathan 2019 for sampling without
replacement; Mironov et al. 2019 for Poisson). Dominance of the unsampled RDP
curve does not by itself imply dominance after sampling, so for the sampled
Skellam mechanism the epsilon reported is that of the Gaussian it is close to,
not a proof. The accountant is RDP at integer orders only (the orders Agarwal et
al. account at), also for Poisson sampling (PLD would need the Gaussian's whole
privacy-loss distribution, which the Skellam bound does not give).

FedBuff's flushes (``sampling="async"``, :mod:`jaxqfl.privacy.accounting`) are not
sampled: the round's event is ``GaussianDpEvent(z_eff)`` itself, composed over the
flushes, so there the dominance above makes the reported epsilon a rigorous bound.

Sensitivities: with fixed-size sampling or FedBuff's flushes (replace-one relation) the sum moves by
``2 Delta_2`` / ``2 Delta_1``; with Poisson sampling (add/remove one), by
``Delta_2`` / ``Delta_1``. No extra delta: the rounded norm bound holds with
probability 1 (``jaxqfl.aggregate.distributed_dp``), the server's view mod 2^b is a
post-processing of the noised sum, and a round with fewer than the accounted
survivors is never unmasked.

References:
  Agarwal, Kairouz, Liu. The Skellam Mechanism for Differentially Private
  Federated Learning. NeurIPS 2021.
"""
from __future__ import annotations

import math

import dp_accounting
from dp_accounting import rdp

from jaxqfl.privacy.accounting import REPLACE_ONE, SAMPLINGS, _check_delta, _check_population

RDP_ORDERS = tuple(range(2, 65)) + (80, 96, 128, 160, 192, 256, 384, 512, 1024)


def skellam_rdp(order: float, l2_sensitivity: float, l1_sensitivity: float, variance: float) -> float:
    """Agarwal et al. (2021), Cor. 4.1: the Skellam mechanism's RDP at ``order`` (module docstring)."""
    a, d2, d1, mu = order, l2_sensitivity, l1_sensitivity, variance
    return a * d2 ** 2 / (2 * mu) + min(((2 * a - 1) * d2 ** 2 + 6 * d1) / (4 * mu ** 2), 3 * d1 / (2 * mu))


def gaussian_equivalent(l2_sensitivity: float, l1_sensitivity: float, variance: float) -> float:
    """``z_eff``: the noise multiplier of a Gaussian whose RDP dominates the Skellam bound at every order >= 1."""
    if variance <= 0:
        return 0.0
    d2, d1, mu = l2_sensitivity, l1_sensitivity, variance
    return (d2 ** 2 / mu + min((d2 ** 2 + 3 * d1) / mu ** 2, 3 * d1 / mu)) ** -0.5


def skellam_noise_multiplier(l2_sensitivity: float, l1_sensitivity: float, variance: float, *,
                             sampling: str = "fixed") -> float:
    """``z_eff`` against the relation of ``sampling`` (replace-one doubles both sensitivities)."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    factor = 2.0 if sampling in REPLACE_ONE else 1.0
    return gaussian_equivalent(factor * l2_sensitivity, factor * l1_sensitivity, variance)


def distributed_round_event(z_eff: float, *, num_clients: int, cohort_size: float,
                            sampling: str = "fixed") -> dp_accounting.DpEvent:
    """One round's event: the sampling's event around ``GaussianDpEvent(z_eff)``."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    _check_population(sampling, num_clients, cohort_size)
    gaussian = dp_accounting.GaussianDpEvent(z_eff)
    if sampling == "async":
        return gaussian
    if sampling == "fixed":
        return dp_accounting.SampledWithoutReplacementDpEvent(num_clients, cohort_size, gaussian)
    return dp_accounting.PoissonSampledDpEvent(cohort_size / num_clients, gaussian)


def distributed_accountant(sampling: str = "fixed") -> dp_accounting.PrivacyAccountant:
    """RDP at integer orders; replace-one for fixed-size sampling and FedBuff, add/remove one for Poisson."""
    relation = (dp_accounting.NeighboringRelation.REPLACE_ONE if sampling in REPLACE_ONE
                else dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    return rdp.RdpAccountant(orders=list(RDP_ORDERS), neighboring_relation=relation)


def distributed_epsilon(z_eff: float, delta: float, rounds: int, *, num_clients: int, cohort_size: float,
                        sampling: str = "fixed") -> float:
    """Epsilon after ``rounds`` rounds of the equivalent Gaussian (``inf`` without noise; 0 after 0 rounds)."""
    _check_delta(delta)
    if not (isinstance(rounds, int) and rounds >= 0):
        raise ValueError(f"rounds must be a non-negative integer, got {rounds!r}")
    event = distributed_round_event(z_eff, num_clients=num_clients, cohort_size=cohort_size, sampling=sampling)
    if rounds == 0:
        return 0.0
    if z_eff <= 0:
        return math.inf
    acc = distributed_accountant(sampling)
    acc.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return float(acc.get_epsilon(delta))


def distributed_noise_for_epsilon(target_epsilon: float, delta: float, rounds: int, z_eff_of, *,
                                  num_clients: int, cohort_size: float, sampling: str = "fixed") -> float:
    """The noise multiplier z whose ``distributed_epsilon(z_eff_of(z), ...)`` is ``target_epsilon``.

    ``z_eff_of(z)`` maps the mechanism's noise multiplier to its equivalent
    Gaussian's (it depends on the grid, which depends on z); solved with
    ``dp_accounting.calibrate_dp_mechanism``.
    """
    _check_delta(delta)
    if not (isinstance(target_epsilon, (int, float)) and 0 < target_epsilon < math.inf):
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    if not (isinstance(rounds, int) and rounds >= 1):
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    _check_population(sampling, num_clients, cohort_size)

    def make_event(z):
        event = distributed_round_event(z_eff_of(z), num_clients=num_clients, cohort_size=cohort_size,
                                        sampling=sampling)
        return dp_accounting.SelfComposedDpEvent(event, rounds)

    z = dp_accounting.calibrate_dp_mechanism(
        lambda: distributed_accountant(sampling), make_event, target_epsilon, delta,
        bracket_interval=dp_accounting.LowerEndpointAndGuess(1e-3, 1.0), tol=1e-5)
    return float(z)
