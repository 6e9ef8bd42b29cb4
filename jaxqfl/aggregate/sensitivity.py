"""L2 sensitivity bounds of aggregation rules whose inputs lie in the L2 ball of radius C.

A rule that can sit under central differential privacy
(``jaxqfl.aggregate.central_dp.central_gaussian``) declares a :class:`Sensitivity`
in its ``Aggregator.dp`` field: ``bound(C, n, sampling) -> S``. The Gaussian noise
has std ``z S`` and ``jaxqfl.privacy`` accounts the round with multiplier ``z``. That
accountant's convention (``jaxqfl.privacy.accounting``) fixes what S must bound:

* ``"poisson"`` (add/remove-one): S >= the largest move of the noised quantity when
  ONE client is added or removed (the cohort size n changes by one);
* ``"fixed"`` / ``"async"`` (replace-one, multiplier ``z / 2``): 2 S >= the largest
  move when one client's update is replaced (n is the same in both worlds, so
  ``bound`` may use the realised n, a traced int32).

Every input is a client's update clipped by ``clip_updates`` to ``||x_i||_2 <= C``.

**Mean with a fixed denominator** (``fixed_denominator_mean``; DP-FedAvg, McMahan et al.
2018): the noise goes on ``s = sum_i w_i x_i`` with ``0 <= w_i <= 1``. Adding or removing
client i moves s by ``w_i x_i``, so ``||.|| <= C``; replacing it, by ``<= 2C``. S = C on the
sum, i.e. C / D on the aggregate ``s / D`` (post-processing by the public D). This is
what ``dp_mean`` and ``jaxqfl.privacy`` assume.

**Coordinate-wise median** (``median``): S = C for every n, both relations.

*Proof.* Per coordinate j (dropped from the notation), let Y be the n - 1 inputs the
neighbours share, sorted ``y_(1) <= ... <= y_(n-1)``, and p the client's value.
``clamp(p, a, b) = min(max(p, a), b)`` is 1-Lipschitz in p.

(a) replace-one, n = 2k + 1: ``med(Y + p) = clamp(p, y_(k), y_(k+1))``, so the
    median moves by ``<= |p_j - p'_j|`` per coordinate: ``<= ||p - p'|| <= 2C``.
    n = 2k: ``med(Y + p) = (y_(k) + clamp(p, y_(k-1), y_(k+1))) / 2``: ``<= ||p - p'|| / 2 <= C``.
(b) add/remove-one, n = 2k + 1 -> 2k: the move is ``|clamp(p, a, b) - (a + b)/2| <= g / 2``
    with ``a = y_(k)``, ``b = y_(k+1)``, ``g = b - a``. The k inputs ranked above b are
    >= b and the k below a are <= a, so ``sum_i y_ij^2 >= k (a^2 + b^2) >= k g^2 / 2``
    when ``a <= 0 <= b``, and ``>= k max(a^2, b^2) >= k g^2`` otherwise. Summing over
    coordinates, ``k ||g||^2 / 2 <= sum_i ||y_i||^2 <= 2k C^2``: ``||g|| <= 2C``, move ``<= C``.
(c) add/remove-one, n = 2k -> 2k - 1: the move is ``|clamp(p, y_(k-1), y_(k+1)) - m| / 2``,
    ``m = y_(k)``. Say the clamp lands below m (the other side is symmetric) at c <= m.
    Split the move ``m - c`` into ``mu = max(m, 0) - max(c, 0)`` and ``gamma = min(m, 0) - min(c, 0)``.
    If ``mu > 0``, the k inputs ranked >= k are >= m > 0; if ``gamma > 0``, the k - 1 ranked
    below k are <= y_(k-1) <= c < 0 and ``|p_j| >= |c|``. Summing squares over coordinates:
    ``k ||mu||^2 + (k - 1) ||gamma||^2 <= (2k - 1) C^2`` and ``||gamma|| <= ||p|| <= C``. On
    ``g = ||gamma|| in [0, C]``, ``g + r(g)`` with ``r(g) = sqrt(((2k - 1) C^2 - (k - 1) g^2) / k)``
    (the largest ``||mu||``) grows with g (derivative ``1 - (k - 1) g / (k r(g)) > 0``, as
    ``r(g) >= C`` there), so ``||mu|| + ||gamma|| <= C + C`` and the move is ``<= C``.
(n = 1 -> 0: the rule returns 0, and ``||p|| <= C``.) The bound is attained in one
dimension: Y = {-C, C}, p = C moves the median from 0 to C (add/remove); Y = {-C, C},
p = -C -> C moves it by 2C (replace-one, n = 3). So S = C, with no dependence on n: the
median needs D times the noise of a mean over D clients for the same epsilon. (The
even-n replace-one bound C is not used: the realised n is not always even.)

**Coordinate-wise trimmed mean** (``trimmed_mean``, b = floor(beta n) values dropped at
each end, ``m = n - 2b`` kept): replace-one only, S = C / m. *Proof*: with Y the n - 1
shared values of a coordinate, the kept sum is ``clamp(p, y_(b), y_(n-b)) + sum_{r=b+1}^{n-b-1} y_(r)``
(``y_(0) = -inf``, ``y_(n) = +inf``), 1-Lipschitz in p: the trimmed mean moves by ``<= ||p - p'|| / m <= 2C / m``.
Under add/remove-one b itself can change with n; no bound is derived: refused.

References:
  McMahan, Ramage, Talwar, Zhang. Learning Differentially Private Recurrent Language
  Models. ICLR 2018.
  Yin, Chen, Ramchandran, Bartlett. Byzantine-Robust Distributed Learning: Towards
  Optimal Statistical Rates. ICML 2018 (the median and trimmed mean).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax.numpy as jnp

SAMPLINGS = ("fixed", "poisson", "async")  # jaxqfl.privacy.SAMPLINGS
REPLACE_ONE = ("fixed", "async")


class Sensitivity(NamedTuple):
    """What a rule declares about its L2 sensitivity (``Aggregator.dp``).

    Attributes:
      rule: the rule's name (for messages).
      bound: ``bound(C, n, sampling) -> S`` (float32; ``n`` the realised number of real
        cohort slots, a traced int32), or None: the rule has no bound (``reason`` says why).
      reason: why there is no bound, or why the samplings left out of ``samplings`` are refused.
      samplings: the samplings the bound holds under.
      noised: ``"aggregate"`` (noise added to the server's output) or ``"sum"`` (added to
        ``reduced["sum"]`` before the server, which divides it by a public constant).
      clip: the radius ``clip_updates`` clipped every update to (None: not clipped).
      clips_itself: the rule clips (and maybe noises) the updates itself: ``clip_updates``
        around it is refused.
    """

    rule: str
    bound: Optional[Callable] = None
    reason: str = ""
    samplings: tuple = SAMPLINGS
    noised: str = "aggregate"
    clip: Optional[float] = None
    clips_itself: bool = False


def no_bound(rule: str, reason: str, *, clips_itself: bool = False) -> Sensitivity:
    """A rule that cannot sit under central DP, and why."""
    return Sensitivity(rule=rule, reason=reason, clips_itself=clips_itself)


def _constant(clip, n, sampling):
    del n, sampling
    return jnp.float32(clip)


def sum_bound() -> Sensitivity:
    """A sum of per-client contributions in the C-ball, divided by a public D: S = C on the sum."""
    return Sensitivity(rule="fixed_denominator_mean", bound=_constant, noised="sum")


def median_bound() -> Sensitivity:
    """The coordinate-wise median: S = C (module docstring, proof (a)-(c))."""
    return Sensitivity(rule="median", bound=_constant)


def trimmed_mean_bound(kept: Callable) -> Sensitivity:
    """The coordinate-wise trimmed mean keeping ``kept(n)`` values: S = C / kept(n), replace-one only."""

    def bound(clip, n, sampling):
        del sampling
        return jnp.float32(clip) / jnp.maximum(kept(n), 1).astype(jnp.float32)

    return Sensitivity(rule="trimmed_mean", bound=bound, samplings=REPLACE_ONE,
                       reason="under add/remove-one (poisson sampling) the number of trimmed values floor(beta n) "
                              "changes with n and no sensitivity bound is derived; use fixed-size sampling")
