"""Central user-level differential privacy: DP-FedAvg with fixed or adaptive clipping.

DP-FedAvg (McMahan et al. 2018), one round over a cohort S of real clients::

    client i:  u_i <- u_i * min(1, C / ||u_i||_2)          (L2 norm over the WHOLE update pytree)
    server:    aggregate = (sum_{i in S} w_i u_i + N(0, (z C)^2 I)) / D

* Clipping happens in ``prepare``, i.e. BEFORE the engine's uplink codec, so a
  lossy codec sees (and sends) the clipped update. The accounting assumes the
  server adds the noise to the sum of what the clients *intended* to send: a
  codec that changes the norm of a clipped update (e.g. stochastic rounding can
  grow it a little) is outside the guarantee unless its output is bounded by C
  too (keep the codec unbiased and its error small, or clip again afterwards).
* The noise is drawn ONCE per round on the server side, with the key
  ``fold_in(round_key, keys.DP)``: it depends on the round only, never on the
  device count or the chunking.
* Fixed denominator ``D`` (never the noisy or realised count of the cohort):
  ``denominator`` if given (Poisson sampling: the EXPECTED cohort size q N),
  otherwise the number of real cohort slots (fixed-size sampling: the public M).
* Weights. The algorithm's example weights are NOT used as they are: a client
  with n_i examples would contribute n_i C and the sensitivity would not be C.
  ``weight_cap=None`` (the default): every real client weighs 1 (uniform
  weighting). ``weight_cap=w``: client weight ``min(p_i / w, 1)`` (the bounded
  weights of McMahan et al. 2018, estimator f~_f), so every contribution stays in
  the ball of radius C; pass ``denominator`` = the expected sum of those weights
  over a cohort, otherwise the mean is scaled by the cohort's mean capped weight.

With a fixed clip, ``dp_mean(C, z, denominator=D, weight_cap=w)`` equals the composed
``central_gaussian(z, clip_updates(C, fixed_denominator_mean(D, weight_cap=w)), ...)``
(``jaxqfl.aggregate.central_dp``) bit for bit: same clip, same summands, the same noise
(:func:`add_gaussian_noise`, shared) on the same sum, the same division. The composed form
puts the noise on any rule that declares a sensitivity (e.g. the coordinate-wise median).

Adaptive clipping (Andrew et al. 2021, "Differentially private learning with
adaptive clipping"): C tracks the ``target_quantile`` gamma of the update norms::

    b_i = 1[||u_i|| <= C]                                       (before clipping)
    b~  = (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / D + 1/2       (noisy unclipped fraction)
    C  <- C * exp(-eta (b~ - gamma))                             (geometric update)

The count is centred (``b_i - 1/2``) so that its sensitivity is 1/2 under
add/remove-one (1 under replace-one); its noise ``count_noise_std`` (sigma_b,
Andrew et al. suggest D / 20) is part of the privacy event
(:func:`jaxqfl.privacy.round_event`). C lives in the aggregator's server state;
clients read it from the state handed to ``prepare``.

Per-client persistent state: with adaptive clipping, one float, the indicator
b_i, carried from ``prepare`` (which sees the unclipped norm) to ``client`` (which
only sees the decoded update); it is rewritten every time the client takes part.
With a fixed clip, none (``()``): the aggregator is stateless per client, which is
what buffered asynchronous rounds (``jaxqfl.engine.fedbuff``) need.

References:
  McMahan, Ramage, Talwar, Zhang. Learning Differentially Private Recurrent
  Language Models. ICLR 2018.
  Andrew, Thakkar, McMahan, Ramaswamy. Differentially Private Learning with
  Adaptive Clipping. NeurIPS 2021.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from jaxqfl import keys
from jaxqfl.aggregate.base import Aggregator
from jaxqfl.aggregate.sensitivity import no_bound

TINY = 1e-30
_UPDATE_NOISE, _COUNT_NOISE = 0, 1  # sub-keys of fold_in(round_key, DP)


class DPState(NamedTuple):
    clip: jax.Array  # () float32, the clip norm C of the next round


def global_norm(tree) -> jax.Array:
    """``||u||_2`` over every leaf of a pytree (float32)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def clip_by_global_norm(tree, clip):
    """``(u * min(1, C / ||u||), ||u||)``: the update scaled into the L2 ball of radius C."""
    norm = global_norm(tree)
    factor = jnp.minimum(1.0, clip / jnp.maximum(norm, TINY))
    return jax.tree.map(lambda x: (x * factor).astype(x.dtype), tree), norm


def add_gaussian_noise(tree, std, round_key):
    """``tree + N(0, std^2 I)``, leaf l drawn from ``split(fold_in(fold_in(round_key, DP), 0), L)[l]``.

    The key depends on the round only (never on the device count or the chunking).
    """
    dkey = keys.purpose_key(round_key, keys.DP)
    leaves, treedef = jax.tree.flatten(tree)
    nkeys = jax.random.split(jax.random.fold_in(dkey, _UPDATE_NOISE), max(len(leaves), 1))
    return jax.tree.unflatten(treedef, [s + std * jax.random.normal(k, s.shape, jnp.float32)
                                        for s, k in zip(leaves, nkeys)])


def _check(name, value, *, positive=False, allow_inf=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    ok = ok and (value > 0 if positive else value >= 0) and (allow_inf or math.isfinite(value))
    if not ok:
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a number {bound}{'' if allow_inf else ' and finite'}, got {value!r}")


def dp_mean(
    clip: float,
    noise_multiplier: float,
    *,
    target_quantile: Optional[float] = None,
    clip_learning_rate: float = 0.2,
    count_noise_std: float = 0.0,
    denominator: Optional[float] = None,
    weight_cap: Optional[float] = None,
) -> Aggregator:
    """DP-FedAvg's noisy clipped mean on the sum path.

    Args:
      clip: the L2 clip norm C (the initial one with ``target_quantile``); ``inf``
        disables clipping (then no privacy, whatever the noise).
      noise_multiplier: z, the update noise's standard deviation over C; a Python number or a
        traced scalar (a sweep over z, ``jaxqfl.engine.build_sweep``: then the noise is always
        drawn, ``z = 0`` adding exactly zero).
      target_quantile: gamma in (0, 1) for adaptive clipping (Andrew et al. 2021); None keeps C fixed.
      clip_learning_rate: eta of the geometric clip update.
      count_noise_std: sigma_b, the noise of the unclipped count (adaptive clipping only).
      denominator: the fixed denominator D (default: the number of real cohort slots).
      weight_cap: None for uniform weights, or w > 0 for weights ``min(p_i / w, 1)``.

    Returns:
      An ``Aggregator`` (reduction ``"sum"``). Server metrics: ``dp_clip`` (C used
      this round), ``dp_noise_std`` (z C) and, adaptive only, ``dp_unclipped_fraction`` (b~).
    """
    _check("clip", clip, positive=True, allow_inf=True)
    traced_noise = isinstance(noise_multiplier, jax.Array)
    if traced_noise and not math.isfinite(clip):
        raise ValueError("a traced noise multiplier (a sweep) needs a finite clip (the noise std is z C), got clip=inf")
    if not traced_noise:
        _check("noise_multiplier", noise_multiplier)
    if not traced_noise and not math.isfinite(clip) and noise_multiplier > 0:
        raise ValueError(f"noise needs a finite clip (the noise std is z C), got clip=inf, noise_multiplier={noise_multiplier}")
    adaptive = target_quantile is not None
    if adaptive:
        if not (isinstance(target_quantile, (int, float)) and 0.0 < target_quantile < 1.0):
            raise ValueError(f"target_quantile must be in (0, 1), got {target_quantile!r}")
        if not math.isfinite(clip):
            raise ValueError("adaptive clipping needs a finite initial clip, got inf")
        _check("clip_learning_rate", clip_learning_rate, positive=True)
        _check("count_noise_std", count_noise_std)
    if denominator is not None:
        _check("denominator", denominator, positive=True)
    if weight_cap is not None:
        _check("weight_cap", weight_cap, positive=True)

    def init(params):
        del params
        return DPState(clip=jnp.float32(clip))

    def client_state_init(params):
        del params
        return jnp.float32(0.0) if adaptive else ()  # b_i, the last "unclipped" indicator (adaptive only)

    def prepare(update, weight, client_state, state, stats, info):
        del client_state, stats, info
        clipped, norm = clip_by_global_norm(update, state.clip)
        if weight_cap is None:
            w = jnp.where(weight > 0, 1.0, 0.0)
        else:
            w = jnp.clip(weight / weight_cap, 0.0, 1.0)
        unclipped = (norm <= state.clip).astype(jnp.float32) if adaptive else ()
        return clipped, w, unclipped, {"dp_update_norm": norm}

    def client(update, weight, client_state, state, stats, info):
        del state, stats, info
        summand = {"sum": jax.tree.map(lambda u: weight * u, update)}
        if adaptive:
            summand["unclipped"] = jnp.where(weight > 0, client_state - 0.5, 0.0)
        return summand, client_state, {}

    def server(reduced, state, stats, cohort):
        del stats
        denom = jnp.float32(denominator) if denominator is not None else jnp.sum(cohort.valid).astype(jnp.float32)
        denom = jnp.maximum(denom, 1.0)
        dkey = keys.purpose_key(cohort.key, keys.DP)
        std = jnp.asarray(noise_multiplier, jnp.float32) * state.clip
        noisy = add_gaussian_noise(reduced["sum"], std, cohort.key) if traced_noise or noise_multiplier > 0 \
            else reduced["sum"]
        aggregate = jax.tree.map(lambda n: n / denom, noisy)
        metrics = {"dp_clip": state.clip, "dp_noise_std": std}
        if adaptive:
            count_noise = count_noise_std * jax.random.normal(jax.random.fold_in(dkey, _COUNT_NOISE), (), jnp.float32)
            fraction = (reduced["unclipped"] + count_noise) / denom + 0.5
            new_clip = state.clip * jnp.exp(-clip_learning_rate * (fraction - target_quantile))
            state = DPState(clip=new_clip.astype(jnp.float32))
            metrics["dp_unclipped_fraction"] = fraction
        return aggregate, state, metrics

    return Aggregator(init=init, client_state_init=client_state_init, reduction="sum", client=client,
                      server=server, prepare=prepare,
                      dp=no_bound("dp_mean", "clips and noises the updates itself (DP-FedAvg)", clips_itself=True))
