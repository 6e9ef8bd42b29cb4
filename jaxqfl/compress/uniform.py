"""Stochastic b-bit uniform quantization with min-max scales (Suresh et al. 2017).

Suresh, Yu, Kumar, McMahan, "Distributed Mean Estimation with Limited
Communication", ICML 2017, stochastic k-level quantization: for a vector (here
a bucket) ``x`` with ``lo = min x``, ``hi = max x`` and ``L = 2**b`` levels,
the grid is ``lo + r * step``, ``step = (hi - lo) / (L - 1)``, ``r = 0..L-1``,
and every coordinate is rounded stochastically to one of its two neighbours::

    code_j = sr((x_j - lo) / step),   decode_j = lo + step * code_j,

so ``E[decode] = x`` and ``Var[decode_j] <= step**2 / 4``.
"""
from __future__ import annotations

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

MAX_BITS = 16


class UniformMessage(NamedTuple):
    """One tensor: ``codes`` in ``[0, 2**b - 1]`` (tensor's shape), per bucket ``low`` and ``step``."""

    codes: jax.Array  # uint8 (b <= 8) or uint16, shape of the tensor
    low: jax.Array  # float32 [num_buckets]
    step: jax.Array  # float32 [num_buckets]


class UniformRange(NamedTuple):
    """Per-bucket range statistic, stored so that the cohort combines it by max."""

    neg_low: jax.Array  # -min, float32 [num_buckets]
    high: jax.Array  # max, float32 [num_buckets]


def _grid_position(buckets, low, step):
    """Real-valued grid index of ``buckets`` ([nb, d]) on ``low + r * step`` (0 where ``step == 0``)."""
    safe_step = jnp.where(step > 0, step, 1.0)
    return (buckets - low[:, None]) / safe_step[:, None]


def uniform(bits, bucket_size=None, *, max_bits: Optional[int] = None,
            min_bucket_size: Optional[int] = None) -> Codec:
    """Stochastic ``bits``-bit quantization with a min-max scale per bucket.

    Args:
      bits: code width ``b`` in ``[1, 16]``; ``2**b`` levels. With ``max_bits``
        it may be a traced integer scalar (one compiled program for several
        widths, e.g. a sweep): codes are then stored for ``max_bits`` and
        ``bits(message)`` is a traced int32 that follows ``b``.
      bucket_size: ``d``, coordinates sharing one ``(low, step)`` pair;
        ``None`` for one pair per tensor.
      max_bits: the largest ``b`` a traced ``bits`` may take, in ``[1, 16]``.
      min_bucket_size: ``d_min``, the smallest ``d`` a traced ``bucket_size`` may take
        (>= 1). With it ``bucket_size`` may be a traced int32 scalar (an integer, not
        ``None``): coordinate ``i`` of the flattened tensor is in bucket ``i // d``,
        ``low`` and ``step`` come from segment minima and maxima into static containers
        of ``ceil(n / d_min)`` slots (``ceil(n / d)`` used, the rest 0), and decode
        gathers each coordinate's pair (``jaxqfl.compress.buckets``; cost: two segment
        reductions and a few gathers of ``n``). Min and max do not depend on the order of
        reduction, so codes and decode are the static codec's and ``bits(message)``, a
        traced int32, its exact count for ``d``. No integer-domain aggregation
        (``integer_sum`` is ``None``): its shared ranges need a static layout.

    Bits per tensor of ``n`` elements: ``b * n + 64 * ceil(n / d)`` (a float32
    ``low`` and a float32 ``step`` per bucket).

    Unbiased. Integer-domain aggregation: yes (``codec.integer_sum``): the
    cohort shares ``lo = min_i lo_i`` and ``hi = max_i hi_i`` per bucket;
    codes are in ``[0, 2**b - 1]`` and
    ``sum_i w_i decode_i = W * lo + step * sum_i w_i code_i``.

    A constant bucket (``lo == hi``) gets ``step = 0`` and decodes exactly.
    """
    bits, widest = bounded_parameter("uniform bits", bits, "uniform max_bits", max_bits, high=MAX_BITS)
    num_levels = 2**bits if isinstance(bits, int) else jnp.left_shift(jnp.int32(1), bits).astype(jnp.float32)
    code_dtype = jnp.uint8 if widest <= 8 else jnp.uint16

    def leaf_bound(m):  # the count at the widest b (and smallest d): the model total is checked against int32
        return widest * numel(m.codes) + FLOAT_BITS * (numel(m.low) + numel(m.step))

    if min_bucket_size is not None:
        bucket, smallest = check_traced_bucket_size(bucket_size, min_bucket_size)
        return _traced_bucket_uniform(bits, num_levels, code_dtype, leaf_bound, bucket, smallest)
    bucket_size = check_bucket_size(bucket_size)

    def code_bits(elements: int, floats: int):
        return width_bits(bits, elements, FLOAT_BITS * floats, widest)

    def prepare_leaf(x):
        buckets = to_buckets(x.astype(jnp.float32), bucket_size, pad="edge")  # [nb, d]
        low = jnp.min(buckets, axis=1)
        step = (jnp.max(buckets, axis=1) - low) / (num_levels - 1)
        return _grid_position(buckets, low, step), (low, step, x.shape)

    def encode_leaf(rounded, aux):
        low, step, shape = aux
        codes = jnp.clip(rounded, 0, num_levels - 1)
        return UniformMessage(from_buckets(codes, shape).astype(code_dtype), low, step)

    def decode_leaf(m):
        codes = to_buckets(m.codes.astype(jnp.float32), bucket_size)
        return from_buckets(m.low[:, None] + m.step[:, None] * codes, m.codes.shape)

    def leaf_bits(m):
        return code_bits(numel(m.codes), numel(m.low) + numel(m.step))

    # ---- integer-domain aggregation -------------------------------------------------
    def scale_stats(delta):
        def leaf(x):
            buckets = to_buckets(jnp.asarray(x, jnp.float32), bucket_size, pad="edge")
            return UniformRange(-jnp.min(buckets, axis=1), jnp.max(buckets, axis=1))

        return jax.tree.map(leaf, delta)

    def shared_grid(r):
        low = -r.neg_low
        return low, (r.high - low) / (num_levels - 1)

    def quantize(delta, shared, key):
        leaves, treedef = jax.tree.flatten(delta)
        ranges = treedef.flatten_up_to(shared)
        positions = []
        for x, r in zip(leaves, ranges):
            low, step = shared_grid(r)
            positions.append(_grid_position(to_buckets(jnp.asarray(x, jnp.float32), bucket_size), low, step))
        rounded = round_stochastic_all(positions, key)
        out = [from_buckets(jnp.clip(c, 0, num_levels - 1), jnp.shape(x)).astype(jnp.int32)
               for c, x in zip(rounded, leaves)]
        return jax.tree.unflatten(treedef, out)

    def dequantize_sum(code_sum, shared, total_weight):
        def leaf(c, r):
            low, step = shared_grid(r)
            w = jnp.asarray(total_weight, jnp.float32)
            buckets = to_buckets(c.astype(jnp.float32), bucket_size)
            return from_buckets(w * low[:, None] + step[:, None] * buckets, c.shape)

        return jax.tree.map(leaf, code_sum, shared)

    def integer_bits(codes):
        total = 0
        for c in jax.tree.leaves(codes):
            num_buckets, _ = bucket_layout(numel(c), bucket_size)
            total = total + code_bits(numel(c), 2 * num_buckets)
        return to_bits_scalar(total)

    integer_sum = IntegerSum(scale_stats, quantize, dequantize_sum, 2**widest - 1, integer_bits)
    return leafwise(encode_leaf, decode_leaf, leaf_bits, UniformMessage, prepare_leaf=prepare_leaf,
                    integer_sum=integer_sum, leaf_bound=leaf_bound)


def _traced_bucket_uniform(bits, num_levels, code_dtype, leaf_bound, bucket_size: jax.Array,
                           min_bucket_size: int) -> Codec:
    """:func:`uniform` with a traced int32 ``d >= d_min``: segment min / max, static ``ceil(n / d_min)`` slots.

    The static codec rounds its edge-padded ``[ceil(n / d), d]`` buckets, so tensor ``l`` takes
    the uniforms ``o_l .. o_l + n_l - 1`` of the message's draw, ``o_l`` the padded sizes of the
    tensors before it. To use the same uniforms (same codes for the same key), the positions
    are written at those traced offsets into one static buffer of ``sum_l n_l + p_l`` entries
    (``p_l = n_l - 1`` when ``d_min < n_l`` may pad, else 0), rounded with one draw, and read
    back. This relies on ``jax.random.uniform(key, (N,))`` being a prefix of the draw of any
    longer 1-D shape (so with ``jax_threefry_partitionable``, JAX's default, and ``rbg``);
    the cost is up to twice the static codec's uniforms.
    """

    def statistics(x):
        flat = x.astype(jnp.float32).reshape(-1)
        ids = bucket_ids(flat.size, bucket_size)
        used = used_slots(max_buckets(flat.size, min_bucket_size), flat.size, bucket_size)
        low = segment_stat(flat, ids, used, "min")
        step = (segment_stat(flat, ids, used, "max") - low) / (num_levels - 1)
        safe_step = jnp.where(step > 0, step, 1.0)
        return (flat - low[ids]) / safe_step[ids], low, step  # the static _grid_position, per coordinate

    def padded_size(n: int):  # the static codec's nb * d for this d: min(d, n) * ceil(n / min(d, n))
        d = jnp.minimum(bucket_size, n)
        return d * num_buckets(n, d)

    def encode(delta, state, key):
        leaves, treedef = jax.tree.flatten(delta)
        leaves = [jnp.asarray(x) for x in leaves]
        sizes = [numel(x) for x in leaves]
        room = sum(n + (n - 1 if min_bucket_size < n else 0) for n in sizes[:-1]) + (sizes[-1] if sizes else 0)
        buffer = jnp.zeros((room,), jnp.float32)
        offsets, offset, stats = [], jnp.int32(0), []
        for x, n in zip(leaves, sizes):
            position, low, step = statistics(x)
            buffer = jax.lax.dynamic_update_slice(buffer, position, (offset,))
            offsets.append(offset)
            stats.append((low, step))
            offset = offset + padded_size(n)
        rounded = round_stochastic_all([buffer], key)[0] if leaves else buffer
        messages = []
        for x, n, o, (low, step) in zip(leaves, sizes, offsets, stats):
            codes = jnp.clip(jax.lax.dynamic_slice(rounded, (o,), (n,)), 0, num_levels - 1)
            messages.append(UniformMessage(codes.reshape(x.shape).astype(code_dtype), low, step))
        return jax.tree.unflatten(treedef, messages), state

    def decode_leaf(m):
        codes = m.codes.astype(jnp.float32).reshape(-1)
        ids = bucket_ids(codes.size, bucket_size)
        return (m.low[ids] + m.step[ids] * codes).reshape(m.codes.shape)

    def leaf_bits(m):  # b a coordinate, a float32 low and step per used bucket
        n = numel(m.codes)
        return jnp.asarray(bits, jnp.int32) * n + 2 * FLOAT_BITS * num_buckets(n, bucket_size)

    codec = leafwise(None, decode_leaf, leaf_bits, UniformMessage, leaf_bound=leaf_bound)
    return codec._replace(encode=encode)
