"""How a round's cohort is drawn: a fixed-size cohort, or Poisson sampling into a static maximum of slots.

* ``"fixed"``: M clients uniformly without replacement (``round.sample_cohort``);
  every slot is a real client. Accounted as ``SampledWithoutReplacementDpEvent``.
* ``"poisson"``: each of the C clients joins independently with probability
  ``q = cohort_size / C`` (``cohort_size`` is then the EXPECTED cohort q C); the
  joiners fill ``max_cohort`` (M_max) static slots and the rest are masked out
  (``sample_poisson_cohort``). Accounted as ``PoissonSampledDpEvent``
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

import jax
import jax.numpy as jnp

from jaxqfl import keys

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


def sample_poisson_cohort(rkey: jax.Array, num_clients: int, rate: float, max_cohort: int, available=None):
    """``(ids [M_max] int32, joined [M_max] bool, num_joined () int32)``: Poisson sampling into M_max slots.

    Client i joins iff ``u_i < q`` for C i.i.d. uniforms ``u`` drawn with
    ``keys.purpose_key(round_key, COHORT)`` (independent Bernoulli(q) draws, one per
    client). The slots hold the M_max clients with the SMALLEST ``u`` in increasing
    order (``lax.top_k`` of ``-u``), so the joiners come first and ``joined`` is a
    prefix mask. Given who joined, their ``u_i / q`` are i.i.d. uniform, so when more
    than M_max join (an overflow) the kept ones are a uniformly random M_max-subset
    of the joiners. ``num_joined`` is the true count (it may exceed M_max).

    ``available`` ([C] bool, ``jaxqfl.systems.availability``): client i joins iff it is
    available and ``u_i < q`` (an unavailable client's ``u`` is taken as 2, above any q).
    """
    ckey = keys.purpose_key(rkey, keys.COHORT)
    u = jax.random.uniform(ckey, (num_clients,))
    if available is not None:
        u = jnp.where(available, u, 2.0)
    neg_u, ids = jax.lax.top_k(-u, max_cohort)
    joined = -neg_u < rate
    num_joined = jnp.sum((u < rate).astype(jnp.int32))
    return ids.astype(jnp.int32), joined, num_joined


def sample_distinct(rkey: jax.Array, num_clients: int, cohort_size: int) -> jax.Array:
    """[M] int32 distinct ids, a uniform M-subset of [0, C), in O(M) memory (Floyd's algorithm).

    Bentley and Floyd, "A sample of brilliance", CACM 30(9), 1987: for j = 0..M-1, with
    i = C - M + j, draw t uniform in [0, i]; take t unless already taken, else i. Every
    M-subset is equally likely (by induction on j). The M draws ``t`` come at once from
    ``keys.purpose_key(round_key, COHORT)``; the membership tests are a ``fori_loop`` of
    O(M) compares each (O(M^2) work, no [C] array: ``round.sample_cohort`` draws C uniforms,
    400 MB at C = 1e8). Slot j holds the j-th pick, so the order is not a uniform shuffle.
    """
    C, M = int(num_clients), int(cohort_size)
    ckey = keys.purpose_key(rkey, keys.COHORT)
    top = C - M + jnp.arange(M, dtype=jnp.int32)  # i for each j
    t = jax.random.randint(ckey, (M,), 0, top + 1, dtype=jnp.int32)

    def pick(j, chosen):
        taken = jnp.any(chosen == t[j])
        return chosen.at[j].set(jnp.where(taken, top[j], t[j]))

    return jax.lax.fori_loop(0, M, pick, jnp.full((M,), -1, jnp.int32))
