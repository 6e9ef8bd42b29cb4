"""How a round's cohort is drawn: a fixed-size cohort, or Poisson sampling into a static maximum of slots.

* ``"fixed"``: M clients uniformly without replacement (``round.sample_cohort``);
  every slot is a real client. Accounted as ``SampledWithoutReplacementDpEvent``.
* ``"poisson"``: each of the C clients joins independently with probability
  ``q = cohort_size / C`` (``cohort_size`` is then the EXPECTED cohort q C); the
  joiners fill ``max_cohort`` (M_max) static slots and the rest are masked out
  (``round.sample_poisson_cohort``). Accounted as ``PoissonSampledDpEvent``
  (McMahan et al. 2018; ``jaxqfl.privacy``).

M_max is static (shapes never depend on data), so a round with more than M_max
joiners cannot hold them all: it keeps a uniformly random M_max of them and
reports the overflow (``RoundMetrics.overflow``). In such a round the released
sum is no longer exactly the Poisson-sampled mechanism the accountant assumes,
so the reported epsilon is then an approximation. The default M_max makes that
event negligible: the smallest m with ``P(Binomial(C, q) > m) <= 1e-9``
(``default_max_cohort``, computed on the host with ``scipy.stats.binom``, which
JAX already depends on). Every slot trains (padding costs compute), so a
smaller M_max is faster and overflows more often.
"""
from __future__ import annotations

SAMPLINGS = ("fixed", "poisson")
OVERFLOW_TAIL = 1e-9  # the default M_max's overflow probability per round


def default_max_cohort(num_clients: int, rate: float, tail: float = OVERFLOW_TAIL) -> int:
    """The smallest m in [1, C] with ``P(Binomial(C, q) > m) <= tail`` (``scipy.stats.binom.sf``)."""
    from scipy.stats import binom

    if not (isinstance(num_clients, int) and num_clients >= 1):
        raise ValueError(f"num_clients must be a positive integer, got {num_clients!r}")
    if not (0.0 < rate <= 1.0):
        raise ValueError(f"the sampling rate must be in (0, 1], got {rate!r}")
    if not (0.0 < tail < 1.0):
        raise ValueError(f"tail must be in (0, 1), got {tail!r}")
    m = int(binom.isf(tail, num_clients, rate))
    m = min(max(m, 0), num_clients)
    while m < num_clients and binom.sf(m, num_clients, rate) > tail:
        m += 1
    while m > 0 and binom.sf(m - 1, num_clients, rate) <= tail:
        m -= 1
    return max(1, m)


def overflow_probability(num_clients: int, rate: float, max_cohort: int) -> float:
    """``P(Binomial(C, q) > M_max)``: the chance that a round overflows its slots."""
    from scipy.stats import binom

    return float(binom.sf(max_cohort, num_clients, rate))


def check_sampling(sampling: str, num_clients: int, cohort_size: int, max_cohort) -> int:
    """Validate the sampling options and return the number of cohort slots (M, or M_max for Poisson)."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if sampling == "fixed":
        if max_cohort is not None:
            raise ValueError(f"max_cohort applies to Poisson sampling only (sampling='fixed', got {max_cohort!r})")
        return cohort_size
    if max_cohort is None:
        return default_max_cohort(num_clients, cohort_size / num_clients)
    if not (isinstance(max_cohort, int) and not isinstance(max_cohort, bool) and 1 <= max_cohort <= num_clients):
        raise ValueError(f"max_cohort must be an integer in [1, num_clients={num_clients}], got {max_cohort!r}")
    return max_cohort

