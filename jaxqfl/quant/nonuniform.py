"""Non-uniform grids: powers of two, natural compression, codebooks (k-means, NF4).

* ``power_of_two(bits)`` (Miyashita et al. 2016, "Convolutional neural networks
  using logarithmic data representation"): ``x ~ sign(x) s 2^(-j)``, ``j`` in
  ``[0, M - 1]`` with ``M = 2^(b-1) - 1``, or 0. The scale is the power of two
  ``s = 2^ceil(log2 max|x|)`` so every value is a pure power of two (multiplies
  become shifts). Codes (``int8``): ``0`` for zero, ``sign(x) (M - j)`` otherwise.
  Round-to-nearest is in the log domain, ``j = -round(log2(|x| / s))`` (Miyashita's
  LogQuant), values with ``j > M - 1`` flush to 0; stochastic rounding is
  unbiased in the linear domain between neighbouring levels (including between
  0 and the smallest level ``s 2^-(M-1)``).

* ``natural_compression()`` (Horvath et al. 2019, "Natural compression for
  distributed deep learning"): ``C(t) = sign(t) 2^floor(log2|t|) (1 + Bernoulli(p))``
  with ``p = |t| / 2^floor(log2|t|) - 1``, so ``E[C(t)] = t`` and
  ``Var <= t^2 / 8``. No scale; the code is the sign and float32 exponent
  (9 bits): ``int16`` codes ``sign * (e + 150)``, 0 for zero. Without a key it
  rounds to the nearer power of two (ties up).

* ``codebook(table)``: ``x ~ s table[q]`` for a fixed sorted table in ``[-1, 1]`` and
  ``s = absmax`` (per tensor or channel); ``nf4()`` is the 16-value NormalFloat4
  table of QLoRA (Dettmers et al. 2023). ``kmeans(levels)`` fits the table per
  tensor with Lloyd's algorithm (fixed iterations, static shapes, runs inside
  jit/vmap): centroids start at the quantiles ``(k + 1/2) / K`` of ``x``; each
  iteration assigns values to the nearest centroid (a ``searchsorted`` over
  the midpoints, ``O(N log K)``, not an ``N x K`` distance matrix) and moves each
  centroid to the mean of its values (empty clusters stay put). Codes are
  ``uint8`` indices; nearest or unbiased stochastic rounding between the two
  neighbouring table values.

``fake_quant`` uses the identity straight-through estimator by default
(``ste='clipped'`` zeros gradients outside ``[-s, s]`` / ``[table_min, table_max]``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxqfl.quant import rounding as rnd
from jaxqfl.quant.qtensor import (
    QTensor,
    Quantizer,
    check_bits,
    check_choice,
    check_float,
    normalize_axis,
    reduce_axes,
    safe_scale,
    straight_through,
)

_ROUNDINGS = ("nearest", "stochastic")
_STES = ("identity", "clipped")


def _pow2_scale(amax):
    """Smallest power of two ``>= amax`` (exact, via frexp); 1 for ``amax = 0``."""
    m, e = jnp.frexp(amax)  # amax = m 2^e, m in [1/2, 1)
    s = jnp.ldexp(jnp.ones_like(amax), jnp.where(m == 0.5, e - 1, e))
    return safe_scale(jnp.where(amax > 0, s, 1.0))


def power_of_two(
    bits: int = 4, *, axis: int | None = None, rounding: str = "nearest", ste: str = "identity"
) -> Quantizer:
    """Logarithmic (power-of-two) quantizer of Miyashita et al. 2016; see the module docstring."""
    where = "power_of_two"
    check_bits(bits, 2, 8, where)
    check_choice(rounding, _ROUNDINGS, "rounding", where)
    check_choice(ste, _STES, "ste", where)
    m_levels = 2 ** (bits - 1) - 1  # nonzero magnitudes s 2^0 ... s 2^-(M-1)
    e_min = -(m_levels - 1)
    stochastic = rounding == "stochastic"

    def quantize(x, key=None) -> QTensor:
        check_float(x, f"{where}.quantize")
        ax = normalize_axis(axis, x.ndim, f"{where}.quantize")
        xf = x.astype(jnp.float32)
        s = _pow2_scale(jnp.max(jnp.abs(xf), axis=reduce_axes(x.ndim, ax), keepdims=True))
        r = jnp.minimum(jnp.abs(xf) / s, 1.0)  # in [0, 1]; exact division by a power of two
        nonzero = r > 0
        r_safe = jnp.where(nonzero, r, 1.0)
        if stochastic and key is not None:
            k_hi, k_lo = jax.random.split(key)
            e = rnd.round_pow2(r_safe, k_hi)
            smallest = 2.0**e_min
            # below the smallest level: 0 or 2^e_min, unbiased
            under = r < smallest
            keep = rnd.round_stochastic(r / smallest, k_lo) > 0
            e = jnp.where(under, e_min, e)
            nonzero = nonzero & (~under | keep)
        else:
            e = rnd.round_nearest(jnp.log2(r_safe)).astype(jnp.int32)  # log-domain nearest
            nonzero = nonzero & (e >= e_min)
        e = jnp.clip(e, e_min, 0)
        codes = jnp.where(nonzero, jnp.sign(xf).astype(jnp.int32) * (m_levels + e), 0)
        return QTensor(codes.astype(jnp.int8), s)

    def dequantize(q: QTensor):
        c = q.codes.astype(jnp.int32)
        mag = jnp.ldexp(jnp.ones(c.shape, jnp.float32), jnp.abs(c) - m_levels)
        return jnp.where(c == 0, 0.0, jnp.sign(c).astype(jnp.float32) * mag) * q.scale

    def in_range(x, q):
        return jnp.abs(x.astype(jnp.float32)) <= q.scale

    fake_quant = straight_through(quantize, dequantize, in_range if ste == "clipped" else None)
    name = f"log{bits}/{'tensor' if axis is None else f'axis={axis}'}/{rounding}"
    return Quantizer(quantize, dequantize, fake_quant, bits, name, stochastic)


_NC_OFFSET = 150  # code = sign * (exponent + 150): exponents -149..127 -> 1..277


def natural_compression() -> Quantizer:
    """Natural compression of Horvath et al. 2019 (module docstring): unbiased with a key."""

    def quantize(x, key=None) -> QTensor:
        check_float(x, "natural_compression.quantize")
        xf = x.astype(jnp.float32)
        nonzero = xf != 0
        e = rnd.round_pow2(jnp.where(nonzero, xf, 1.0), key)
        e = jnp.clip(e, -149, 127)
        codes = jnp.where(nonzero, jnp.sign(xf).astype(jnp.int32) * (e + _NC_OFFSET), 0)
        return QTensor(codes.astype(jnp.int16))

    def dequantize(q: QTensor):
        c = q.codes.astype(jnp.int32)
        mag = jnp.ldexp(jnp.ones(c.shape, jnp.float32), jnp.abs(c) - _NC_OFFSET)
        return jnp.where(c == 0, 0.0, jnp.sign(c).astype(jnp.float32) * mag)

    fake_quant = straight_through(quantize, dequantize, None)
    return Quantizer(quantize, dequantize, fake_quant, 9, "natural_compression", True)


def nf4_table() -> np.ndarray:
    """The 16 NormalFloat4 values (Dettmers et al. 2023, QLoRA), ascending in [-1, 1].

    Construction: with ``delta = (1 - 1/(2*15) + 1 - 1/(2*16)) / 2``, 8 positive values
    ``Phi^-1`` of ``linspace(delta, 1/2, 9)[:-1]``, 7 negative values ``-Phi^-1`` of
    ``linspace(delta, 1/2, 8)[:-1]``, and 0, normalized by the largest. The test
    suite checks this table against that construction.
    """
    return np.array(
        [
            -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
            -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
            0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
            0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
        ],
        dtype=np.float32,
    )  # fmt: skip


def codebook(
    table, *, axis: int | None = None, rounding: str = "nearest", ste: str = "identity", name: str = "codebook"
) -> Quantizer:
    """Fixed-table quantizer ``x ~ absmax * table[q]`` (module docstring)."""
    table_np = np.sort(np.asarray(table, np.float32).reshape(-1))
    k = table_np.size
    if not 2 <= k <= 256:
        raise ValueError(f"codebook: the table has {k} entries; expected 2 to 256")
    if np.max(np.abs(table_np)) > 1:
        raise ValueError("codebook: table values must lie in [-1, 1] (they are scaled by absmax)")
    check_choice(rounding, _ROUNDINGS, "rounding", "codebook")
    check_choice(ste, _STES, "ste", "codebook")
    bits = int(np.ceil(np.log2(k)))
    stochastic = rounding == "stochastic"

    def quantize(x, key=None) -> QTensor:
        check_float(x, f"{name}.quantize")
        ax = normalize_axis(axis, x.ndim, f"{name}.quantize")
        xf = x.astype(jnp.float32)
        s = safe_scale(jnp.max(jnp.abs(xf), axis=reduce_axes(x.ndim, ax), keepdims=True))
        grid = jnp.asarray(table_np)
        idx = rnd.round_to_grid_index(xf / s, grid, key if stochastic else None)
        return QTensor(idx.astype(jnp.uint8), s, None, grid)

    def dequantize(q: QTensor):
        return q.codebook[q.codes.astype(jnp.int32)] * q.scale

    def in_range(x, q):
        xf = x.astype(jnp.float32)
        return (xf >= table_np[0] * q.scale) & (xf <= table_np[-1] * q.scale)

    fake_quant = straight_through(quantize, dequantize, in_range if ste == "clipped" else None)
    label = f"{name}/{'tensor' if axis is None else f'axis={axis}'}/{rounding}"
    return Quantizer(quantize, dequantize, fake_quant, bits, label, stochastic)


def nf4(*, axis: int | None = None, rounding: str = "nearest") -> Quantizer:
    """NF4: ``codebook(nf4_table())`` with absmax scaling (QLoRA, Dettmers et al. 2023)."""
    return codebook(nf4_table(), axis=axis, rounding=rounding, name="nf4")


def kmeans_fit(x: jax.Array, levels: int, iters: int) -> jax.Array:
    """Lloyd's algorithm on the values of ``x``: ``levels`` sorted centroids (float32).

    Static shapes throughout; runs under jit and vmap (module docstring).
    """
    v = x.astype(jnp.float32).reshape(-1)
    c0 = jnp.quantile(v, (jnp.arange(levels, dtype=jnp.float32) + 0.5) / levels)

    def step(_, c):
        mids = 0.5 * (c[1:] + c[:-1])
        idx = jnp.searchsorted(mids, v)
        sums = jax.ops.segment_sum(v, idx, num_segments=levels)
        counts = jax.ops.segment_sum(jnp.ones_like(v), idx, num_segments=levels)
        c_new = jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), c)
        return jnp.sort(c_new)  # 1-D Lloyd keeps order; sort guards round-off

    return jax.lax.fori_loop(0, iters, step, c0)


def kmeans(bits: int = 4, *, iters: int = 10, rounding: str = "nearest", ste: str = "identity") -> Quantizer:
    """Codebook fitted per tensor by k-means with ``2^bits`` levels (module docstring)."""
    where = "kmeans"
    check_bits(bits, 1, 8, where)
    check_choice(rounding, _ROUNDINGS, "rounding", where)
    check_choice(ste, _STES, "ste", where)
    if not (isinstance(iters, int) and iters >= 0):
        raise ValueError(f"{where}: iters={iters!r} must be a non-negative integer")
    levels = 2**bits
    stochastic = rounding == "stochastic"

    def quantize(x, key=None) -> QTensor:
        check_float(x, f"{where}.quantize")
        table = kmeans_fit(x, levels, iters)
        idx = rnd.round_to_grid_index(x.astype(jnp.float32), table, key if stochastic else None)
        return QTensor(idx.astype(jnp.uint8), jnp.ones((), jnp.float32), None, table)

    def dequantize(q: QTensor):
        return q.codebook[q.codes.astype(jnp.int32)] * q.scale

    def in_range(x, q):
        xf = x.astype(jnp.float32)
        return (xf >= q.codebook[0]) & (xf <= q.codebook[-1])

    fake_quant = straight_through(quantize, dequantize, in_range if ste == "clipped" else None)
    return Quantizer(quantize, dequantize, fake_quant, bits, f"kmeans{bits}/iters={iters}/{rounding}", stochastic)
