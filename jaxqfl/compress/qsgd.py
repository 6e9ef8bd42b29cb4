"""QSGD: norm-scaled stochastic quantization with ``s`` levels (Alistarh et al. 2017).

Alistarh, Grubic, Li, Tomioka, Vojnovic, "QSGD: Communication-Efficient SGD
via Gradient Quantization and Encoding", NeurIPS 2017. For a bucket ``v`` of
``d`` coordinates and ``s`` levels::

    Q_s(v)_i = ||v||_2 * sign(v_i) * xi_i(v, s) / s,

where ``xi_i = l + 1`` with probability ``s |v_i| / ||v||_2 - l`` and ``l``
otherwise, ``l = floor(s |v_i| / ||v||_2)``: stochastic rounding of
``s |v_i| / ||v||`` to an integer level in ``[0, s]``. Lemma 3.1: ``Q_s`` is
unbiased and ``E||Q_s(v) - v||^2 <= min(d / s^2, sqrt(d) / s) ||v||^2``.

Encoding: fixed width, no Elias code. Per bucket the float32 norm; per
coordinate one sign bit and ``ceil(log2(s + 1))`` bits for the level.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from jaxqfl.compress.base import (
    FLOAT_BITS,
    Codec,
    bounded_parameter,
    check_bucket_size,
    leafwise,
    numel,
    round_stochastic_all,
    to_bits_scalar,
    width_bits,
)
from jaxqfl.compress.buckets import (
    bucket_ids,
    bucket_layout,
    check_traced_bucket_size,
    from_buckets,
    max_buckets,
    num_buckets,
    segment_stat,
    to_buckets,
    used_slots,
)
from jaxqfl.compress.integer_sum import IntegerSum

MAX_LEVELS = 2**15 - 1
DEFAULT_BUCKET_SIZE = 512


class QSGDMessage(NamedTuple):
    """One tensor: signed levels ``sign(v_i) xi_i`` in ``[-s, s]`` (tensor's shape), norm per bucket."""

    codes: jax.Array  # int8 (s <= 127) or int16, shape of the tensor
    norm: jax.Array  # float32 [num_buckets]


def _level_position(buckets, norm, levels):
    """``s |v_i| / ||v||`` for buckets ``[nb, d]`` and norms ``[nb]`` (0 where the norm is 0)."""
    safe_norm = jnp.where(norm > 0, norm, 1.0)
    return jnp.abs(buckets) * (levels / safe_norm[:, None])


def _signed_levels(rounded, x, levels):
    """``sign(x) * xi`` with the rounded level clipped to ``[0, s]``; shapes of ``x``."""
    level = jnp.clip(rounded, 0, levels)
    return jnp.where(x < 0, -level, level)


def level_bits(levels: int) -> int:
    """Bits of one coordinate: a sign bit plus ``ceil(log2(s + 1))`` for the level."""
    return 1 + math.ceil(math.log2(levels + 1))


def traced_level_bits(levels: jax.Array) -> jax.Array:
    """:func:`level_bits` of a traced int32 ``s``: ``1 + bit_length(s)`` (``= ceil(log2(s + 1))``, in integers)."""
    return 1 + (32 - jax.lax.clz(levels))


def qsgd(levels, bucket_size=DEFAULT_BUCKET_SIZE, *, max_levels: Optional[int] = None,
         min_bucket_size: Optional[int] = None) -> Codec:
    """QSGD with ``s = levels`` quantization levels and buckets of ``d = bucket_size``.

    Args:
      levels: ``s`` in ``[1, 32767]`` (``s = 1`` is ternary, like TernGrad with
        the 2-norm). With ``max_levels`` it may be a traced integer scalar (one
        compiled program for several level counts): codes are stored for
        ``max_levels`` and ``bits(message)`` is a traced int32 that follows ``s``.
      bucket_size: ``d``; ``None`` for one bucket per tensor. Default 512.
      max_levels: the largest ``s`` a traced ``levels`` may take, in ``[1, 32767]``.
      min_bucket_size: ``d_min``, the smallest ``d`` a traced ``bucket_size`` may take
        (>= 1). With it ``bucket_size`` may be a traced int32 scalar (an integer, not
        ``None``): coordinate ``i`` of the flattened tensor is in bucket ``i // d``, the
        norms are segment sums into a static container of ``ceil(n / d_min)`` slots
        (``ceil(n / d)`` used, the rest 0), and decode gathers each coordinate's norm
        (``jaxqfl.compress.buckets``; cost: a segment sum and two gathers of ``n``). The
        norms are the static codec's up to float rounding (another summation order), so
        decode equals it to ~1e-6 relative and codes equal it except where ``s |v_i| /
        ||v||`` meets a rounding tie; ``bits(message)`` is a traced int32 equal to the
        static count for ``d`` exactly. No integer-domain aggregation (``integer_sum``
        is ``None``): its shared norms need a static layout.

    Bits per tensor of ``n`` elements:
    ``32 * ceil(n / d) + n * (1 + ceil(log2(s + 1)))``.

    Unbiased; ``E||Q(v) - v||^2 <= min(d / s^2, sqrt(d) / s) ||v||^2`` per
    bucket. Integer-domain aggregation: yes (``codec.integer_sum``): the
    cohort shares ``N = max_i ||v_i||`` per bucket (every ``|v_ij| / N <= 1``,
    so codes stay unbiased), codes are in ``[-s, s]`` and
    ``sum_i w_i decode_i = (N / s) * sum_i w_i code_i``.
    """
    levels, most = bounded_parameter("qsgd levels", levels, "qsgd max_levels", max_levels, high=MAX_LEVELS)
    code_dtype = jnp.int8 if most <= 127 else jnp.int16
    static = isinstance(levels, int)
    coordinate_bits = level_bits(levels) if static else traced_level_bits(levels)
    if not static:
        levels = levels.astype(jnp.float32)  # the grid arithmetic of the static codec, in float32

    def leaf_bound(m):  # the count at the largest s (and smallest d): the model total is checked against int32
        return level_bits(most) * numel(m.codes) + FLOAT_BITS * numel(m.norm)

    if min_bucket_size is not None:
        return _traced_bucket_qsgd(levels, code_dtype, coordinate_bits, leaf_bound,
                                   *check_traced_bucket_size(bucket_size, min_bucket_size))
    bucket_size = check_bucket_size(bucket_size)

    def code_bits(elements: int, floats: int):
        return width_bits(coordinate_bits, elements, FLOAT_BITS * floats, level_bits(most))

    def prepare_leaf(x):
        buckets = to_buckets(x.astype(jnp.float32), bucket_size)  # [nb, d], zero padded
        norm = jnp.sqrt(jnp.sum(buckets * buckets, axis=1))
        position = from_buckets(_level_position(buckets, norm, levels), x.shape)
        return position, (x, norm)

    def encode_leaf(rounded, aux):
        x, norm = aux
        return QSGDMessage(_signed_levels(rounded, x, levels).astype(code_dtype), norm)

    def decode_leaf(m):
        codes = to_buckets(m.codes.astype(jnp.float32), bucket_size)
        return from_buckets(codes * (m.norm / levels)[:, None], m.codes.shape)

    def leaf_bits(m):
        return code_bits(numel(m.codes), numel(m.norm))

    # ---- integer-domain aggregation -------------------------------------------------
    def scale_stats(delta):
        def leaf(x):
            buckets = to_buckets(jnp.asarray(x, jnp.float32), bucket_size)
            return jnp.sqrt(jnp.sum(buckets * buckets, axis=1))

        return jax.tree.map(leaf, delta)

    def quantize(delta, shared_norm, key):
        leaves, treedef = jax.tree.flatten(delta)
        norms = treedef.flatten_up_to(shared_norm)
        leaves = [jnp.asarray(x, jnp.float32) for x in leaves]
        positions = [from_buckets(_level_position(to_buckets(x, bucket_size), norm, levels), x.shape)
                     for x, norm in zip(leaves, norms)]
        rounded = round_stochastic_all(positions, key)
        out = [_signed_levels(r, x, levels).astype(jnp.int32) for r, x in zip(rounded, leaves)]
        return jax.tree.unflatten(treedef, out)

    def dequantize_sum(code_sum, shared_norm, total_weight):
        del total_weight  # symmetric grid: no offset term

        def leaf(c, norm):
            buckets = to_buckets(c.astype(jnp.float32), bucket_size)
            return from_buckets(buckets * (norm / levels)[:, None], c.shape)

        return jax.tree.map(leaf, code_sum, shared_norm)

    def integer_bits(codes):
        total = 0
        for c in jax.tree.leaves(codes):
            num_buckets, _ = bucket_layout(numel(c), bucket_size)
            total = total + code_bits(numel(c), num_buckets)
        return to_bits_scalar(total)

    integer_sum = IntegerSum(scale_stats, quantize, dequantize_sum, most, integer_bits)
    return leafwise(encode_leaf, decode_leaf, leaf_bits, QSGDMessage, prepare_leaf=prepare_leaf,
                    integer_sum=integer_sum, leaf_bound=leaf_bound)


def _traced_bucket_qsgd(grid, code_dtype, coordinate_bits, leaf_bound, bucket_size: jax.Array,
                        min_bucket_size: int) -> Codec:
    """:func:`qsgd` with a traced int32 ``d >= d_min``: segment norms, static ``ceil(n / d_min)`` slots.

    ``grid`` (``s``: an int, or a traced float32), ``code_dtype``, ``coordinate_bits`` and
    ``leaf_bound`` are :func:`qsgd`'s.
    """

    def prepare_leaf(x):
        flat = x.astype(jnp.float32).reshape(-1)
        ids = bucket_ids(flat.size, bucket_size)
        used = used_slots(max_buckets(flat.size, min_bucket_size), flat.size, bucket_size)
        norm = jnp.sqrt(segment_stat(flat * flat, ids, used, "sum"))
        safe_norm = jnp.where(norm > 0, norm, 1.0)
        position = jnp.abs(flat) * (grid / safe_norm)[ids]  # the static _level_position, per coordinate
        return position.reshape(x.shape), (x, norm)

    def encode_leaf(rounded, aux):
        x, norm = aux
        return QSGDMessage(_signed_levels(rounded, x, grid).astype(code_dtype), norm)

    def decode_leaf(m):
        codes = m.codes.astype(jnp.float32).reshape(-1)
        ids = bucket_ids(codes.size, bucket_size)
        return (codes * (m.norm / grid)[ids]).reshape(m.codes.shape)

    def leaf_bits(m):  # 1 + ceil(log2(s + 1)) a coordinate, a float32 norm per used bucket
        n = numel(m.codes)
        return jnp.asarray(coordinate_bits, jnp.int32) * n + FLOAT_BITS * num_buckets(n, bucket_size)

    return leafwise(encode_leaf, decode_leaf, leaf_bits, QSGDMessage, prepare_leaf=prepare_leaf,
                    leaf_bound=leaf_bound)
