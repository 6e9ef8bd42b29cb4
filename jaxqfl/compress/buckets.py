"""Buckets: a tensor cut into consecutive chunks of ``d`` coordinates, each with its own scale.

Bucketing (Alistarh et al. 2017, Sec. 3.1; Suresh et al. 2017 per vector) bounds
the variance of norm- or range-scaled quantizers by the bucket size ``d``
instead of the tensor size ``n``. A tensor of ``n`` elements is flattened in
row-major order and cut into ``ceil(n / d)`` buckets; the last one is padded up
to ``d`` with a value that does not change its statistic (zeros for norms, the
last element for min/max). Padding never travels: codes are kept in the
tensor's own shape, and bit counts use ``n``.

``bucket_size=None`` means one bucket per tensor (``d = n``).

A traced bucket size (``qsgd(..., min_bucket_size=...)``, ``uniform(...,
min_bucket_size=...)``) has no static ``[ceil(n / d), d]`` layout: the helpers at
the end of this module give each flat coordinate ``i`` its bucket ``i // d`` and
reduce per bucket with segment sums / minima / maxima into a static container of
``ceil(n / d_min)`` slots, the most buckets any ``d >= d_min`` makes.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxqfl.compress.base import check_positive_int


def bucket_layout(n: int, bucket_size: Optional[int]) -> Tuple[int, int]:
    """``(num_buckets, d)`` for a tensor of ``n`` elements: ``d = bucket_size or n``, ``ceil(n / d)`` buckets."""
    d = n if bucket_size is None else min(bucket_size, n)
    d = max(d, 1)
    return math.ceil(n / d), d


def to_buckets(x: jax.Array, bucket_size: Optional[int], pad: str = "zero") -> jax.Array:
    """``x`` flattened and reshaped to ``[num_buckets, d]``.

    Args:
      pad: ``"zero"`` (keeps norms) or ``"edge"`` (repeats the last element,
        keeps min and max) for the tail of the last bucket.
    """
    flat = x.reshape(-1)
    num_buckets, d = bucket_layout(flat.size, bucket_size)
    missing = num_buckets * d - flat.size
    if missing:
        mode = "edge" if pad == "edge" else "constant"
        flat = jnp.pad(flat, (0, missing), mode=mode)
    return flat.reshape(num_buckets, d)


def from_buckets(buckets: jax.Array, shape: tuple) -> jax.Array:
    """Inverse of :func:`to_buckets`: drop the padding, restore ``shape``."""
    n = math.prod(shape)
    return buckets.reshape(-1)[:n].reshape(shape)


# ---- a traced bucket size -------------------------------------------------------------
# With ``d`` a traced int32 the layout ``[ceil(n / d), d]`` has no static shape. Instead every
# flat coordinate ``i`` (row-major) gets its bucket id ``i // d``, per-bucket statistics are
# segment reductions into a static container of ``ceil(n / d_min)`` slots (the most buckets any
# allowed ``d >= d_min`` makes), and each coordinate reads its bucket's statistic back by
# gathering at its id. Slots past ``ceil(n / d)`` receive no coordinate and are set to 0.
# Cost per tensor: one int32 id per coordinate, one segment reduction and one gather of ``n``.

def check_traced_bucket_size(bucket_size, min_bucket_size) -> Tuple[jax.Array, int]:
    """``(d as an int32 scalar, d_min)`` for a bucket size that may be traced, bounded below by ``d_min``.

    ``min_bucket_size`` (``d_min``) must be an integer >= 1; a Python ``bucket_size`` must be an
    integer >= ``d_min``; a traced one cannot be checked here (``jaxqfl.compress.families``
    checks its values on the host). ``None`` (one bucket per tensor, ``d = n``) is refused:
    ``n`` differs per tensor, so it is not one traced value.
    """
    d_min = check_positive_int("min_bucket_size", min_bucket_size, low=1)
    if bucket_size is None:
        raise ValueError("bucket_size None (one bucket per tensor) cannot be combined with min_bucket_size; "
                         "a traced bucket size must be an integer >= min_bucket_size")
    if isinstance(bucket_size, (jax.Array, np.ndarray, np.generic)) and not isinstance(bucket_size, np.integer):
        return jnp.asarray(bucket_size).astype(jnp.int32), d_min
    return jnp.int32(check_positive_int("bucket_size", bucket_size, low=d_min)), d_min


def max_buckets(n: int, min_bucket_size: int) -> int:
    """Static slots for ``n`` elements: ``ceil(n / min(d_min, n))``, the most buckets of any ``d >= d_min``."""
    return bucket_layout(n, min_bucket_size)[0]


def bucket_ids(n: int, bucket_size: jax.Array) -> jax.Array:
    """int32 ``[n]``: the bucket of each flat coordinate, ``i // d`` (a ``d >= n`` gives one bucket)."""
    return jnp.arange(n, dtype=jnp.int32) // bucket_size


def num_buckets(n: int, bucket_size: jax.Array) -> jax.Array:
    """int32 ``ceil(n / d)`` for a traced ``d >= 1``, in integers (``n // d + (n % d > 0)``: no ``n + d`` overflow)."""
    return n // bucket_size + (n % bucket_size > 0).astype(jnp.int32)


def used_slots(slots: int, n: int, bucket_size: jax.Array) -> jax.Array:
    """bool ``[slots]``: which of the static slots hold a bucket (the first ``ceil(n / d)``)."""
    return jnp.arange(slots, dtype=jnp.int32) < num_buckets(n, bucket_size)


def segment_stat(flat: jax.Array, ids: jax.Array, used: jax.Array, how: str) -> jax.Array:
    """Per-bucket ``sum`` / ``min`` / ``max`` of ``flat`` (``[n]``, bucket ``ids``) into ``used.size`` slots.

    Unused slots (``~used``, :func:`used_slots`) are 0 instead of the empty reduction's identity (``inf``).
    A sum's order is XLA's, not the ``[nb, d]`` row sum's: equal to it up to float rounding; min
    and max are exact.
    """
    reduce = {"sum": jax.ops.segment_sum, "min": jax.ops.segment_min, "max": jax.ops.segment_max}[how]
    stat = reduce(flat, ids, num_segments=used.size, indices_are_sorted=True)
    return jnp.where(used, stat, 0.0)
