"""Buckets: a tensor cut into consecutive chunks of ``d`` coordinates, each with its own scale.

Bucketing (Alistarh et al. 2017, Sec. 3.1; Suresh et al. 2017 per vector) bounds
the variance of norm- or range-scaled quantizers by the bucket size ``d``
instead of the tensor size ``n``. A tensor of ``n`` elements is flattened in
row-major order and cut into ``ceil(n / d)`` buckets; the last one is padded up
to ``d`` with a value that does not change its statistic (zeros for norms, the
last element for min/max). Padding never travels: codes are kept in the
tensor's own shape, and bit counts use ``n``.

``bucket_size=None`` means one bucket per tensor (``d = n``).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import jax
import jax.numpy as jnp


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
