"""Norm bounding as a wrapper: ``clip_updates(C, inner)`` clips every update before ``inner`` sees it.

Per client, over the WHOLE update pytree (``||.||_2`` over every leaf)::

    u <- u * min(1, C / ||u||_2)

It runs in the aggregator's ``prepare``, i.e. before the engine's uplink codec and
before the inner rule's client side, and as the LAST step of ``prepare`` (after the
inner rule's own ``prepare``, e.g. an attack crafted by ``with_attack``), so whatever
leaves the client for the codec lies in the ball of radius C. When the inner rule has
a cohort pre-pass (``statistics``: secure aggregation's shared scale, integer
aggregation), the pre-pass sees the clipped update too (recomputed there, equal up to
float32 rounding), so the shared scale is the one of what is then encoded. It composes
with every rule, on both reductions:

* ``clip_updates(C, secure_sum(codec, ...))``: norm bounding (Sun et al. 2019) before
  secure aggregation; the server learns only the sum of the clipped updates' codes.
* ``central_gaussian(z, clip_updates(C, median()), ...)``: central DP over a robust rule
  (``jaxqfl.aggregate.central_dp``); the clip is what the rule's sensitivity is
  computed from, recorded in the wrapper's ``dp`` field.

Refused (ValueError): a rule that already clips (``dp_mean``, ``norm_bound``,
``centered_clip``, distributed DP, or ``clip_updates`` itself): two radii, and the
sensitivity would be ambiguous; pick one radius. With a lossy uplink codec the decoded
update can leave the ball (e.g. stochastic rounding); see ``jaxqfl.aggregate.dp``.

Per-client metrics: ``clip_update_norm`` (``||u||`` before clipping) and ``clip_clipped``
(1 when the clip scaled the update).

References:
  Sun, Kairouz, Suresh, McMahan. Can You Really Backdoor Federated Learning? 2019.
  McMahan, Ramage, Talwar, Zhang. Learning Differentially Private Recurrent Language
  Models. ICLR 2018 (the per-client L2 clip of DP-FedAvg).
"""
from __future__ import annotations

import math

import jax.numpy as jnp

from jaxqfl.aggregate.base import Aggregator, check_aggregator
from jaxqfl.aggregate.dp import clip_by_global_norm
from jaxqfl.aggregate.sensitivity import Sensitivity


def check_positive(name: str, value) -> float:
    """``value`` as a float when it is a finite number > 0, else a ValueError naming it."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def clip_updates(radius: float, inner: Aggregator) -> Aggregator:
    """``inner`` fed the clients' updates clipped to L2 norm ``radius`` (over the whole pytree).

    Args:
      radius: C, a finite number > 0.
      inner: any aggregator that does not clip itself.

    Returns:
      An ``Aggregator`` with ``inner``'s reduction, state and server; its ``dp`` field is
      ``inner``'s sensitivity declaration with ``clip=C`` (or ``None`` when ``inner`` has none).
    """
    radius = check_positive("the clip radius", radius)
    check_aggregator(inner)
    decl = inner.dp
    if isinstance(decl, Sensitivity) and (decl.clip is not None or decl.clips_itself):
        what = f"clip_updates({decl.clip:g}, ...)" if decl.clip is not None else decl.rule
        raise ValueError(f"clip_updates({radius:g}, ...) around {what}: that rule already clips the updates "
                         f"({decl.reason or 'clip_updates'}); clip once, with one radius")

    def clip(update):
        return clip_by_global_norm(update, jnp.float32(radius))

    def statistics(update, weight, client_state, state, info):
        return inner.statistics(clip(update)[0], weight, client_state, state, info)

    def prepare(update, weight, client_state, state, stats, info):
        update, weight, client_state, metrics = inner.prepare(update, weight, client_state, state, stats, info)
        clipped, norm = clip(update)
        return clipped, weight, client_state, {**metrics, "clip_update_norm": norm,
                                               "clip_clipped": (norm > radius).astype(jnp.float32)}

    return inner._replace(prepare=prepare, statistics=statistics if inner.statistics is not None else None,
                          dp=decl._replace(clip=radius) if isinstance(decl, Sensitivity) else None)
