"""Fixed-point requantization: multiply an int32 accumulator by a real ``M > 0`` in integers.

``M = m0 2^-n`` with ``m0`` an integer in ``[2^30, 2^31)`` (31 significant bits) and a
right shift ``n`` (Jacob et al. 2018, "Quantization and training of neural networks
for efficient integer-arithmetic-only inference", sec. 2.2). ``mul_shift(a, m0, n)``
returns ``floor((a m0 + 2^(n-1)) / 2^n)``, i.e. ``rn(a M)`` with ties up (the rounding
of ``jaxqfl.quant.rounding.round_nearest``), exactly, for any int32 ``a`` (saturating at ``+-(2^31 - 1)``): the 62-bit
product is formed from 16-bit limbs in uint32 arithmetic (JAX runs without 64-bit
integers by default), rounded and shifted as a (high, low) pair of 32-bit words.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

MIN_SHIFT, MAX_SHIFT = 1, 62


def quantize_multiplier(m) -> tuple[np.ndarray, np.ndarray]:
    """``(m0 int32, n int32)`` with ``m0 2^-n`` the nearest 31-bit fixed-point value of each ``m > 0``."""
    m = np.asarray(m, np.float64)
    if np.any(~np.isfinite(m)) or np.any(m <= 0):
        raise ValueError(f"requantization multipliers must be finite and > 0, got {m[~(np.isfinite(m) & (m > 0))][:3]}")
    f, e = np.frexp(m)  # m = f 2^e, f in [1/2, 1)
    m0 = np.round(f * 2.0**31).astype(np.int64)
    carry = m0 == 2**31
    m0 = np.where(carry, 2**30, m0)
    e = e + carry
    n = 31 - e
    if np.any(n > MAX_SHIFT):  # tiny multipliers: shift at most 62 and lose the low bits of m0
        k = np.maximum(n - MAX_SHIFT, 0)
        m0 = np.round(m0 / 2.0**k).astype(np.int64)
        n = np.minimum(n, MAX_SHIFT)
    if np.any(n < MIN_SHIFT):
        raise ValueError(f"requantization multiplier too large for 31-bit fixed point: {m.max()}")
    return m0.astype(np.int32), n.astype(np.int32)


def _u32(x):
    return jnp.asarray(x).astype(jnp.uint32)


def _shl(x, k):
    """``x << k`` for uint32 with shifts of 32 or more giving 0."""
    return jnp.where(k >= 32, jnp.uint32(0), jnp.left_shift(x, jnp.minimum(k, 31).astype(jnp.uint32)))


def _shr(x, k):
    return jnp.where(k >= 32, jnp.uint32(0), jnp.right_shift(x, jnp.minimum(k, 31).astype(jnp.uint32)))


def mul_shift(a, m0, n):
    """``floor((a m0 + 2^(n-1)) / 2^n)`` as int32 (module docstring); ``m0``, ``n`` broadcast with ``a``."""
    a = jnp.asarray(a, jnp.int32)
    neg = a < 0
    ua = _u32(jnp.abs(a))
    um = _u32(m0)
    n = jnp.asarray(n, jnp.int32)
    mask16 = jnp.uint32(0xFFFF)
    a1, a0 = jnp.right_shift(ua, jnp.uint32(16)), ua & mask16
    m1, m0l = jnp.right_shift(um, jnp.uint32(16)), um & mask16
    p00, p01, p10, p11 = a0 * m0l, a0 * m1, a1 * m0l, a1 * m1
    mid = p01 + p10  # < 2^32: a0, m0l < 2^16 and a1, m1 < 2^15
    lo = p00 + jnp.left_shift(mid & mask16, jnp.uint32(16))
    hi = p11 + jnp.right_shift(mid, jnp.uint32(16)) + (lo < p00).astype(jnp.uint32)
    # rounding constant: 2^(n-1) for a >= 0, 2^(n-1) - 1 for the magnitude of a < 0 (floor semantics)
    k = n - 1
    r_lo = _shl(jnp.uint32(1), k)
    r_hi = _shl(jnp.uint32(1), k - 32)
    borrow = neg & (r_lo == 0)
    r_lo = jnp.where(neg, r_lo - jnp.uint32(1), r_lo)
    r_hi = jnp.where(borrow, r_hi - jnp.uint32(1), r_hi)
    lo2 = lo + r_lo
    hi2 = hi + r_hi + (lo2 < lo).astype(jnp.uint32)
    low_part = jnp.where(n >= 32, jnp.uint32(0), _shr(lo2, n) | _shl(hi2, 32 - n))
    high_part = jnp.where(n >= 32, _shr(hi2, n - 32), jnp.uint32(0))
    overflow = jnp.where(n >= 32, jnp.uint32(0), _shr(hi2, n)) != 0  # result >= 2^32: saturate
    mag = jnp.where(overflow, jnp.uint32(2**31 - 1), jnp.minimum(low_part | high_part, jnp.uint32(2**31 - 1)))
    mag = mag.astype(jnp.int32)
    return jnp.where(neg, -mag, mag)


def reference_mul_shift(a: int, m0: int, n: int) -> int:
    """Python big-integer reference of ``mul_shift`` (for tests)."""
    return (int(a) * int(m0) + (1 << (int(n) - 1))) >> int(n)


def multiplier_value(m0, n) -> np.ndarray:
    return np.asarray(m0, np.float64) * np.exp2(-np.asarray(n, np.float64))

