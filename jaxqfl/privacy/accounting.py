"""Privacy accounting of DP-FedAvg rounds through ``dp-accounting`` (no hand-written accountant).

One round releases the noisy sum of clipped updates (and, with adaptive
clipping, the noisy count of unclipped clients) computed on a random cohort.
The event matches the sampling the engine really does:

=========  =====================================================  =================================
sampling   event (one round)                                      accountant, neighbouring relation
=========  =====================================================  =================================
fixed      ``SampledWithoutReplacementDpEvent(N, M, Gaussian(z'))``  RDP, replace-one (N is public)
poisson    ``PoissonSampledDpEvent(q, Gaussian(z'))``                PLD, add-or-remove-one
async      ``Gaussian(z')`` (no sampling)                          RDP, replace-one (N is public)
=========  =====================================================  =================================

composed over the rounds with ``SelfComposedDpEvent``.

``"async"`` is a FedBuff flush (``jaxqfl.engine.fedbuff``: the noisy clipped sum of the
buffer's K arrivals). Who arrives in a flush depends on the clients' speeds, not on a
uniform draw, so no amplification by sampling can be claimed; and a client may arrive
in any flush (at most once per flush: a client in flight is never drawn again), so the
honest bound is the plain Gaussian mechanism composed over every flush,
``SelfComposedDpEvent(GaussianDpEvent(z'), flushes)``. The neighbouring relation is
replace-one as for fixed-size cohorts (the population and the clients' speeds are
public; replacing one client's data moves each flush's sum by at most 2C), so
``z' = z / 2`` and epsilons compare with synchronous fixed-size runs. ``z'`` is the noise
standard deviation over the L2 sensitivity of what is released:

* add/remove one client: the sum of clipped updates moves by at most C, so the
  update's multiplier is ``z``; the centred count ``sum (b_i - 1/2)`` moves by 1/2,
  so its multiplier is ``2 sigma_b``.
* replace one client: the sum moves by at most ``2C`` (two points of the C-ball),
  so the update's multiplier is ``z / 2``; the count moves by 1: ``sigma_b``.

Releasing the update sum and the count together is one Gaussian mechanism on
the concatenated query; scaling each part by its noise makes the noise isotropic,
so its multiplier is ``z' = (z_update^-2 + z_count^-2)^(-1/2)`` (Andrew et al.
2021, Sec. 3.1). The user-level guarantee: (epsilon, delta)-DP with respect to
adding/removing (or replacing) ALL the data of one client.

Epsilon is reported by ``dp-accounting``: ``RdpAccountant(REPLACE_ONE)`` for a
fixed-size cohort (the only accountant of that library supporting sampling
without replacement), ``PLDAccountant(ADD_OR_REMOVE_ONE)`` for Poisson sampling.
"""
from __future__ import annotations

import math
import dp_accounting
from dp_accounting import rdp

SAMPLINGS = ("fixed", "poisson", "async")
REPLACE_ONE = ("fixed", "async")  # samplings accounted under replace-one (the population is public)


def _check_population(sampling: str, num_clients: int, cohort_size: float) -> None:
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if not (isinstance(num_clients, int) and num_clients >= 1):
        raise ValueError(f"num_clients must be a positive integer, got {num_clients!r}")
    if sampling in REPLACE_ONE and not (isinstance(cohort_size, int) and 1 <= cohort_size <= num_clients):
        raise ValueError(f"cohort_size must be an integer in [1, num_clients={num_clients}], got {cohort_size!r}")
    if sampling == "poisson" and not (0 < cohort_size <= num_clients):
        raise ValueError(f"the expected cohort size must be in (0, num_clients={num_clients}], got {cohort_size!r}")


def effective_noise_multiplier(noise_multiplier: float, *, sampling: str = "fixed",
                               count_noise_std: float = 0.0) -> float:
    """``z'``: the round's noise std over the sensitivity of what it releases (module docstring)."""
    if noise_multiplier <= 0:
        return 0.0
    update = noise_multiplier / 2.0 if sampling in REPLACE_ONE else noise_multiplier
    if not count_noise_std:
        return update
    count = count_noise_std if sampling in REPLACE_ONE else 2.0 * count_noise_std
    return (update ** -2 + count ** -2) ** -0.5


#: The largest noise multiplier accounted: dp-accounting's RDP and PLD computations overflow (or leave their
#: domain) past about 1e9; at 1e6 epsilon is already 0.0 and the noise drowns any update.
MAX_NOISE_MULTIPLIER = 1e6


def round_event(noise_multiplier: float, *, num_clients: int, cohort_size: float, sampling: str = "fixed",
                count_noise_std: float = 0.0) -> dp_accounting.DpEvent:
    """The ``DpEvent`` of ONE round (``cohort_size``: M for fixed sampling, the expected q N for Poisson,
    the buffer K for ``"async"``, where it does not enter the event: no sampling)."""
    if not (isinstance(noise_multiplier, (int, float)) and 0 <= noise_multiplier <= MAX_NOISE_MULTIPLIER):
        raise ValueError(f"the noise multiplier must be in [0, {MAX_NOISE_MULTIPLIER:g}] (the accountant's range), "
                         f"got {noise_multiplier!r}")
    _check_population(sampling, num_clients, cohort_size)
    z = effective_noise_multiplier(noise_multiplier, sampling=sampling, count_noise_std=count_noise_std)
    gaussian = dp_accounting.GaussianDpEvent(z)
    if sampling == "async":
        return gaussian
    if sampling == "fixed":
        return dp_accounting.SampledWithoutReplacementDpEvent(num_clients, cohort_size, gaussian)
    return dp_accounting.PoissonSampledDpEvent(cohort_size / num_clients, gaussian)


def run_event(noise_multiplier: float, rounds: int, **kw) -> dp_accounting.DpEvent:
    """``SelfComposedDpEvent(round_event(...), rounds)``."""
    if not (isinstance(rounds, int) and rounds >= 0):
        raise ValueError(f"rounds must be a non-negative integer, got {rounds!r}")
    return dp_accounting.SelfComposedDpEvent(round_event(noise_multiplier, **kw), rounds)


def make_accountant(sampling: str = "fixed") -> dp_accounting.PrivacyAccountant:
    """A fresh accountant for the sampling (RDP replace-one, or PLD add/remove)."""
    if sampling in REPLACE_ONE:
        return rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    if sampling == "poisson":
        return dp_accounting.pld.PLDAccountant(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")


def accountant_name(sampling: str) -> str:
    return {"fixed": "rdp (replace-one)", "poisson": "pld (add-or-remove-one)",
            "async": "rdp (replace-one), no sampling amplification"}[sampling]


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, (int, float)) and 0.0 < delta < 1.0):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def epsilon(noise_multiplier: float, delta: float, rounds: int, *, num_clients: int, cohort_size: float,
            sampling: str = "fixed", count_noise_std: float = 0.0) -> float:
    """Epsilon spent after ``rounds`` rounds at ``delta`` (``inf`` without noise; 0 after 0 rounds)."""
    _check_delta(delta)
    event = run_event(noise_multiplier, rounds, num_clients=num_clients, cohort_size=cohort_size,
                      sampling=sampling, count_noise_std=count_noise_std)
    if rounds == 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    acc = make_accountant(sampling)
    acc.compose(event)
    return float(acc.get_epsilon(delta))


#: The smallest noise multiplier the calibration searches (``noise_for_epsilon``'s lower end).
MIN_CALIBRATED_NOISE = 1e-3


def _rdp_poisson_accountant():
    return rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)


def max_target_epsilon(delta: float, rounds: int, *, num_clients: int, cohort_size: float, sampling: str = "fixed",
                       count_noise_std: float = 0.0) -> float:
    """An upper end of the targets ``noise_for_epsilon`` can meet: epsilon at z = ``MIN_CALIBRATED_NOISE``.

    Epsilon falls as z grows, so no z >= that end spends more. For ``"fixed"`` it is
    the accountant's own epsilon there; for ``"poisson"`` the RDP bound of the same
    event (an upper bound on the PLD accountant's epsilon, which is too slow to
    evaluate at such z); a target under it may still find no Poisson z, and
    ``noise_for_epsilon`` then says so. Takes a fraction of a second.
    """
    event = run_event(MIN_CALIBRATED_NOISE, rounds, num_clients=num_clients, cohort_size=cohort_size,
                      sampling=sampling, count_noise_std=count_noise_std)
    acc = make_accountant(sampling) if sampling in REPLACE_ONE else _rdp_poisson_accountant()
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def _beyond_calibration(target_epsilon: float, ceiling: float, rounds: int, sampling: str) -> ValueError:
    return ValueError(
        f"target_epsilon={target_epsilon:g} cannot be calibrated: even the smallest noise multiplier searched "
        f"(z = {MIN_CALIBRATED_NOISE:g}) spends only epsilon {ceiling:.4g} over {rounds} rounds ({sampling} "
        f"sampling); allowed targets lie in (0, {ceiling:.4g}). A target that large protects nothing: pick a "
        f"smaller epsilon, or drop the privacy flags")


def noise_for_epsilon(target_epsilon: float, delta: float, rounds: int, *, num_clients: int, cohort_size: float,
                      sampling: str = "fixed", count_noise_std: float = 0.0) -> float:
    """The smallest update noise multiplier z whose ``epsilon(z, ...)`` is ``target_epsilon``.

    Solved by ``dp_accounting.calibrate_dp_mechanism`` (Brent's method on the
    accountant of ``sampling``) over ``z >= MIN_CALIBRATED_NOISE``. With adaptive
    clipping (``count_noise_std > 0``) the count's noise alone may already spend
    more than the target: then no z exists and a ValueError says so. A target at
    or above ``max_target_epsilon`` (e.g. 1e9) is refused with that range, never
    left to the root finder (whose search then fails inside the accountant).
    """
    _check_delta(delta)
    if not (isinstance(target_epsilon, (int, float)) and 0 < target_epsilon < math.inf):
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    if not (isinstance(rounds, int) and rounds >= 1):
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    kw = dict(num_clients=num_clients, cohort_size=cohort_size, sampling=sampling, count_noise_std=count_noise_std)
    _check_population(sampling, num_clients, cohort_size)
    if count_noise_std:
        floor = epsilon(1e6, delta, rounds, **kw)
        if floor >= target_epsilon:
            raise ValueError(f"the adaptive clip's count noise (std {count_noise_std}) alone spends epsilon "
                             f"{floor:.4g} >= the target {target_epsilon}; raise count_noise_std")
    ceiling = max_target_epsilon(delta, rounds, **kw)
    if target_epsilon >= ceiling:
        raise _beyond_calibration(target_epsilon, ceiling, rounds, sampling)
    bracket = dp_accounting.LowerEndpointAndGuess(MIN_CALIBRATED_NOISE, 1.0)
    if sampling == "poisson":
        # PLD is slow (and memory-hungry) at tiny z: bracket with the RDP bound of the
        # same Poisson event (an upper bound on epsilon, so z_rdp >= the PLD answer).
        hi = dp_accounting.calibrate_dp_mechanism(_rdp_poisson_accountant, lambda z: run_event(z, rounds, **kw),
                                                  target_epsilon, delta, bracket_interval=bracket, tol=1e-4)
        lo = 0.5 * hi
        eps_lo = epsilon(lo, delta, rounds, **kw)
        while lo > 1e-2 and eps_lo < target_epsilon:
            lo *= 0.5
            eps_lo = epsilon(lo, delta, rounds, **kw)
        if eps_lo < target_epsilon:  # below ~1e-2 the PLD accountant is too slow to search further
            raise ValueError(
                f"target_epsilon={target_epsilon:g} cannot be calibrated with Poisson sampling: the smallest noise "
                f"multiplier searched (z = {lo:.3g}) spends only epsilon {eps_lo:.4g} over {rounds} rounds; "
                f"allowed targets lie in (0, {eps_lo:.4g})")
        bracket = dp_accounting.ExplicitBracketInterval(lo, hi * 1.001)
    z = dp_accounting.calibrate_dp_mechanism(
        lambda: make_accountant(sampling),
        lambda z: run_event(z, rounds, **kw),
        target_epsilon, delta, bracket_interval=bracket, tol=1e-5,
    )
    return float(z)


def describe(noise_multiplier: float, delta: float, rounds: int, *, num_clients: int, cohort_size: float,
             sampling: str = "fixed", count_noise_std: float = 0.0) -> dict:
    """A JSON-ready description of the run's privacy event and its epsilon (for summary.json)."""
    kw = dict(num_clients=num_clients, cohort_size=cohort_size, sampling=sampling, count_noise_std=count_noise_std)
    eps = epsilon(noise_multiplier, delta, rounds, **kw)
    return {
        "dp_epsilon": eps if math.isfinite(eps) else None,
        "dp_delta": delta,
        "dp_accountant": accountant_name(sampling),
        "dp_event": repr(run_event(noise_multiplier, rounds, **kw)),
        "dp_effective_noise_multiplier": effective_noise_multiplier(
            noise_multiplier, sampling=sampling, count_noise_std=count_noise_std),
    }
