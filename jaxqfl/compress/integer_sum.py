"""Integer-domain aggregation: sum the clients' integer codes, scale once.

When every client of a cohort quantizes against the SAME scale, the server
(or a secure-aggregation protocol, which works on integers mod 2^k) can add
the codes and apply the scale once::

    sum_i w_i decode(c_i; S) = A(S, W) + B(S) * sum_i w_i c_i,   W = sum_i w_i

with integer weights ``w_i`` (1, or example counts). This needs one extra
exchange before the codes: each client reports a scale statistic, the cohort's
elementwise maximum is the shared scale ``S`` broadcast back. Quantizing
against a larger scale than its own keeps a client's codes unbiased (the value
stays inside the grid) at the price of more variance.

Codecs that allow it carry an :class:`IntegerSum` in ``Codec.integer_sum``:

====================  =====================================  ==================
codec                 shared statistic (max over cohort)     decode of a sum
====================  =====================================  ==================
``uniform(b)``        per bucket ``(-min, max)``             ``W lo + step sum``
``qsgd(s)``           per bucket ``||v||_2``                 ``(||v||/s) sum``
``terngrad()``        per tensor ``||g||_inf`` (TernGrad's    ``s_t sum``
                      "scaler sharing")
====================  =====================================  ==================

All others return ``None``: ``sign``'s scales differ per client (its vote is
taken on floats), ``natural`` has no common grid, sparsifiers send different
coordinates, wrappers (``error_feedback``, ``hadamard``) keep per-client state
or per-client rotations.

Overflow: codes are summed in int32, so ``W * max_abs_code`` must stay below
``2**31`` (e.g. 8-bit uniform codes, ``max_abs_code = 255``: W < 8.4M).

:func:`aggregate_in_integers` is the reference implementation the engine can
call inside ``shard_map`` (``axis_name="clients"``) on its vmapped cohort.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp


class IntegerSum(NamedTuple):
    """What the engine needs to aggregate a codec's codes as integers.

    Attributes:
      scale_stats: ``scale_stats(delta) -> stats``, one client's float32
        statistics; the cohort's are combined by elementwise MAX.
      quantize: ``quantize(delta, shared_stats, key) -> codes``, int32 codes
        shaped like ``delta`` on the grid of the shared scale.
      dequantize_sum: ``dequantize_sum(code_sum, shared_stats, total_weight)
        -> float32 pytree`` equal to ``sum_i w_i decode_i`` given
        ``code_sum = sum_i w_i codes_i`` and ``total_weight = sum_i w_i``.
      max_abs_code: the largest ``|code|``; keep ``total_weight * max_abs_code < 2**31``.
      bits: ``bits(codes) -> int32``, one client's uplink: its codes at their
        true width plus the statistic it reports (same formula as the codec's
        own message). The broadcast of the shared scale is downlink and not
        counted here.
    """

    scale_stats: Callable
    quantize: Callable
    dequantize_sum: Callable
    max_abs_code: int
    bits: Callable


class IntegerAggregate(NamedTuple):
    """Result of :func:`aggregate_in_integers`."""

    mean: Any  # float32 pytree: sum_i w_i decode_i / W
    code_sum: Any  # int32 pytree: sum_i w_i codes_i
    shared_stats: Any  # the shared scale the cohort used
    total_weight: jax.Array  # int32 scalar W


def aggregate_in_integers(
    integer_sum: IntegerSum,
    deltas: Any,
    weights: jax.Array,
    keys: jax.Array,
    axis_name: Optional[str] = None,
) -> IntegerAggregate:
    """Weighted mean of a cohort's updates, aggregated in the integer domain.

    Args:
      integer_sum: ``codec.integer_sum``.
      deltas: the cohort's updates, every leaf with a leading client axis ``[M, ...]``.
      weights: ``[M]`` non-negative integer weights (1, or example counts; 0 masks a
        padded client).
      keys: ``[M]`` per-client keys.
      axis_name: when called inside ``shard_map`` over the clients axis, its
        name: the shared scale is ``pmax``-ed and the code sums ``psum``-ed
        across devices, so every device returns the cohort-wide result.
    """
    weights = jnp.asarray(weights, jnp.int32)
    stats = jax.vmap(integer_sum.scale_stats)(deltas)
    # Weight-0 (padded) clients do not widen the shared scale.
    def cohort_max(s):
        present = (weights > 0).reshape((-1,) + (1,) * (s.ndim - 1))
        return jnp.max(jnp.where(present, s, -jnp.inf), axis=0)

    shared = jax.tree.map(cohort_max, stats)
    if axis_name is not None:
        shared = jax.tree.map(lambda s: jax.lax.pmax(s, axis_name), shared)
    # An empty cohort leaves -inf; any finite scale will do for all-zero sums.
    shared = jax.tree.map(lambda s: jnp.where(jnp.isfinite(s), s, 0.0), shared)
    codes = jax.vmap(integer_sum.quantize, in_axes=(0, None, 0))(deltas, shared, keys)

    def weighted_code_sum(c):
        w = weights.reshape((-1,) + (1,) * (c.ndim - 1))
        return jnp.sum(w * c, axis=0, dtype=jnp.int32)

    code_sum = jax.tree.map(weighted_code_sum, codes)
    total = jnp.sum(weights)
    if axis_name is not None:
        code_sum = jax.lax.psum(code_sum, axis_name)
        total = jax.lax.psum(total, axis_name)
    summed = integer_sum.dequantize_sum(code_sum, shared, total)
    mean = jax.tree.map(lambda s: s / jnp.maximum(total, 1).astype(jnp.float32), summed)
    return IntegerAggregate(mean=mean, code_sum=code_sum, shared_stats=shared, total_weight=total)
