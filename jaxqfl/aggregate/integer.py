"""Integer-domain aggregation: codes summed as integers on a cohort-shared scale.

When every client of a cohort quantizes against the SAME scale, the server (or
a secure-aggregation protocol, which works on integers mod 2^k) adds the codes
and applies the scale once (``jaxqfl.compress.integer_sum``)::

    sum_i w_i decode(c_i; S) = A(S, W) + B(S) * sum_i w_i c_i,     W = sum_i w_i

with integer weights ``w_i`` (example counts or 1). The pre-pass collects each
client's scale statistic; the cohort's elementwise maximum (``pmax`` over
devices) is the shared scale ``S``. Each client then quantizes against ``S``
(its uplink key: ``keys.purpose_key(client key, UPLINK)``), the engine sums the int32
``w_i c_i`` (``psum``), and the server returns ``dequantize_sum(sum, S, W) / W``.

Overflow: codes are summed in int32, so ``W * max_abs_code`` must stay below 2^31.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxqfl import keys
from jaxqfl.aggregate.base import Aggregator, CohortStatistics, no_state


def integer_mean(codec) -> Aggregator:
    """Weighted mean of the updates, aggregated in the integer domain with ``codec``'s grid.

    Args:
      codec: a ``jaxqfl.compress`` codec whose ``integer_sum`` is not None (uniform,
        QSGD, TernGrad, without error feedback or a Hadamard rotation).
    """
    isum = getattr(codec, "integer_sum", None)
    if isum is None:
        raise ValueError(
            "integer aggregation needs an uplink codec that can be summed in the integer domain "
            "(uniform, qsgd or terngrad, with a static bucket size, without error feedback or a Hadamard rotation)"
        )

    def statistics(update, weight, client_state, state, info):
        del weight, client_state, state, info
        return CohortStatistics(maxes=isum.scale_stats(update))

    def shared_scale(stats):
        # An empty cohort leaves -inf; any finite scale will do for all-zero sums.
        return jax.tree.map(lambda s: jnp.where(jnp.isfinite(s), s, 0.0), stats.maxes)

    def client(update, weight, client_state, state, stats, info):
        del state
        codes = isum.quantize(update, shared_scale(stats), keys.purpose_key(info.key, keys.UPLINK))
        w = jnp.round(weight).astype(jnp.int32)
        summand = (jax.tree.map(lambda c: w * c, codes), w)
        return summand, client_state, {"uplink_bits": jnp.asarray(isum.bits(codes), jnp.int32)}

    def server(reduced, state, stats, cohort):
        del cohort
        code_sum, total = reduced
        summed = isum.dequantize_sum(code_sum, shared_scale(stats), total)
        mean = jax.tree.map(lambda s: s / jnp.maximum(total, 1).astype(jnp.float32), summed)
        return mean, state, {}

    return Aggregator(
        init=no_state, client_state_init=no_state, reduction="sum", client=client, server=server,
        statistics=statistics, encodes_uplink=True,
    )
