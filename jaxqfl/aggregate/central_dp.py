"""Central differential privacy as a wrapper: Gaussian noise on any rule with a declared sensitivity.

``central_gaussian(z, clip_updates(C, rule), cohort_size=M, sampling=s)``, one round:

    client i:  u_i <- u_i min(1, C / ||u_i||_2)                 (``clip_updates``, before the codec)
    server:    a = rule(u_1, ..., u_n) + N(0, (z S)^2 I),     S = rule.dp.bound(C, n, s)

with S the rule's L2 sensitivity over inputs in the C-ball, in the convention of
``jaxqfl.privacy`` (``jaxqfl.aggregate.sensitivity``: S under add/remove-one for
``"poisson"``, half the replace-one sensitivity for ``"fixed"`` / ``"async"``). So the
round is the Gaussian mechanism with multiplier z, and ``jaxqfl.privacy.epsilon(z, ...)``
with the run's sampling is its epsilon (the guarantee is user-level, as for ``dp_mean``).
A rule declaring ``noised="sum"`` (``fixed_denominator_mean``) gets the noise on its
reduced sum before its server divides by the public D; any other, on its output.

* DP-FedAvg (McMahan et al. 2018): ``central_gaussian(z, clip_updates(C, fixed_denominator_mean(D)))``
  equals ``dp_mean(C, z, denominator=D)`` bit for bit (tested).
* DP over the coordinate-wise median: ``central_gaussian(z, clip_updates(C, median()))``:
  S = C whatever n (proof in ``jaxqfl.aggregate.sensitivity``), so the noise is n times
  that of the mean at the same epsilon; the trimmed mean, S = C / (n - 2b), fixed-size
  sampling only.

Noise key: ``fold_in(round key, keys.DP)`` (``jaxqfl.aggregate.dp.add_gaussian_noise``),
a function of the round only. Server metrics: ``dp_sensitivity`` (S), ``dp_noise_std`` (z S).

Refused (ValueError, naming the rule and why):

* a rule with no declared bound (Krum, Multi-Krum, Bulyan, the geometric median, the
  example-weighted mean, centered clipping): ``Aggregator.dp`` says why;
* a rule whose bound does not hold under the sampling (the trimmed mean under Poisson);
* no ``clip_updates`` inside: without a clip no rule's sensitivity is finite;
* an inner rule that encodes the uplink itself (secure or integer aggregation): the codes
  are quantized after the clip (stochastic rounding can leave the ball), and on a secure
  sum the server would see the exact unmasked sum before noising it, so the noise hides
  nothing secure aggregation does; use distributed DP (``distributed_skellam``);
* a rule that already noises (``dp_mean``, ``central_gaussian``): noise twice, accounted once;
* z NaN, negative or infinite; an unknown sampling.

References:
  McMahan, Ramage, Talwar, Zhang. Learning Differentially Private Recurrent Language
  Models. ICLR 2018.
  Dwork, Roth. The Algorithmic Foundations of Differential Privacy, 2014 (Gaussian
  mechanism, post-processing).
"""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from jaxqfl.aggregate.base import Aggregator, check_aggregator, no_state
from jaxqfl.aggregate.compose import check_positive, clip_updates
from jaxqfl.aggregate.dp import add_gaussian_noise
from jaxqfl.aggregate.sensitivity import SAMPLINGS, Sensitivity, no_bound, sum_bound
from jaxqfl.aggregate.stacked import num_valid


def fixed_denominator_mean(denominator: Optional[float] = None, *, weight_cap: Optional[float] = None) -> Aggregator:
    """``sum_i w_i u_i / D`` with bounded weights and a fixed D (DP-FedAvg's estimator, McMahan et al. 2018).

    ``w_i = 1`` for every real client with a positive weight (``weight_cap=None``), or
    ``min(p_i / weight_cap, 1)``; ``D = denominator`` (Poisson sampling: the expected cohort
    weight) or, when None, the number of real cohort slots (fixed-size sampling: the public M).
    Sensitivity of the sum: C (``sensitivity.sum_bound``), i.e. C / D on the aggregate.
    """
    if denominator is not None:
        denominator = check_positive("denominator", denominator)
    if weight_cap is not None:
        weight_cap = check_positive("weight_cap", weight_cap)

    def client(update, weight, client_state, state, stats, info):
        del state, stats, info
        w = jnp.where(weight > 0, 1.0, 0.0) if weight_cap is None else jnp.clip(weight / weight_cap, 0.0, 1.0)
        return {"sum": jax.tree.map(lambda u: w * u, update)}, client_state, {}

    def server(reduced, state, stats, cohort):
        del stats
        denom = jnp.float32(denominator) if denominator is not None else jnp.sum(cohort.valid).astype(jnp.float32)
        denom = jnp.maximum(denom, 1.0)
        return jax.tree.map(lambda s: s / denom, reduced["sum"]), state, {}

    bound = sum_bound()
    if denominator is None:
        bound = bound._replace(samplings=("fixed", "async"), reason=(
            "its denominator is the realised number of cohort slots, which changes when a client is added or "
            "removed; under poisson sampling pass denominator= the expected cohort size"))
    return Aggregator(init=no_state, client_state_init=no_state, reduction="sum", client=client, server=server,
                      dp=bound)


def _check_noise(noise_multiplier):
    if isinstance(noise_multiplier, jax.Array):  # a sweep's traced z: always drawn (z = 0 adds exactly 0)
        return True
    ok = isinstance(noise_multiplier, (int, float)) and not isinstance(noise_multiplier, bool)
    if not (ok and math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
    return noise_multiplier > 0


def central_gaussian(noise_multiplier, inner: Aggregator, *, sampling: str = "fixed") -> Aggregator:
    """``inner``'s aggregate plus ``N(0, (z S)^2 I)``, S its declared L2 sensitivity (module docstring).

    Args:
      noise_multiplier: z >= 0, finite (a Python number, or a traced scalar in a sweep).
      inner: ``clip_updates(C, rule)`` with ``rule`` declaring a sensitivity (``Aggregator.dp``).
      sampling: the cohort sampling the run accounts for, one of ``jaxqfl.privacy.SAMPLINGS``
        (``"fixed"``, ``"poisson"``, ``"async"``); it picks the neighbouring relation S is for.
    """
    draws = _check_noise(noise_multiplier)
    check_aggregator(inner)
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    decl = inner.dp
    if not isinstance(decl, Sensitivity):
        raise ValueError("central_gaussian: the inner aggregator declares no L2 sensitivity bound (Aggregator.dp is "
                         "None), so no noise scale makes it private")
    if decl.bound is None:
        raise ValueError(f"central_gaussian over {decl.rule} is refused: {decl.rule} {decl.reason}")
    if sampling not in decl.samplings:
        raise ValueError(f"central_gaussian over {decl.rule} with {sampling} sampling is refused: {decl.reason}")
    if decl.clip is None:
        raise ValueError(f"central_gaussian over {decl.rule} needs the updates clipped: wrap it as "
                         f"central_gaussian(z, clip_updates(C, {decl.rule}(...))); without a clip no sensitivity "
                         f"is finite")
    if inner.encodes_uplink:
        raise ValueError(f"central_gaussian over {decl.rule}, which encodes the uplink itself (secure or integer "
                         f"aggregation), is refused: the codes are quantized after the clip, and the server sees "
                         f"the exact sum before noising it; use distributed DP (distributed_skellam)")
    clip, bound = decl.clip, decl.bound

    def server(reduced, state, stats, cohort):
        sensitivity = bound(clip, num_valid(cohort.valid), sampling)
        std = jnp.asarray(noise_multiplier, jnp.float32) * sensitivity
        if decl.noised == "sum":
            if draws:
                reduced = {**reduced, "sum": add_gaussian_noise(reduced["sum"], std, cohort.key)}
            aggregate, state, metrics = inner.server(reduced, state, stats, cohort)
        else:
            aggregate, state, metrics = inner.server(reduced, state, stats, cohort)
            if draws:
                noisy = add_gaussian_noise(aggregate, std, cohort.key)
                aggregate = jax.tree.map(lambda n, a: n.astype(a.dtype), noisy, aggregate)
        return aggregate, state, {**metrics, "dp_sensitivity": sensitivity, "dp_noise_std": std}

    return inner._replace(server=server, dp=no_bound(f"central_gaussian({decl.rule})", "is already noised",
                                                     clips_itself=True))


def central_dp(rule: str, clip: float, noise_multiplier, *, sampling: str = "fixed",
               denominator: Optional[float] = None, trim_fraction: float = 0.2) -> Aggregator:
    """The central-DP aggregator of a rule named as ``--aggregator`` names it (``jaxqfl.choices.AGGREGATORS``).

    ``"mean"`` is DP-FedAvg's ``fixed_denominator_mean(denominator)`` (the example-weighted
    mean has no bound); ``"median"`` and ``"trimmed-mean"`` (``trim_fraction``) are the
    coordinate-wise rules; every other rule is refused with the reason its module declares.
    Returns ``central_gaussian(noise_multiplier, clip_updates(clip, rule), sampling=sampling)``.
    """
    from jaxqfl.aggregate.named import aggregator_by_name

    if rule == "mean":
        inner = fixed_denominator_mean(denominator)
    else:
        if denominator is not None:
            raise ValueError(f"denominator applies to the mean only, not to {rule!r}")
        inner = aggregator_by_name(rule, trim_fraction=trim_fraction)
    return central_gaussian(noise_multiplier, clip_updates(clip, inner), sampling=sampling)
