"""Static (calibrated) uniform quantizers: a fixed range instead of a per-call statistic.

``static_uniform(bits, lo, hi)`` quantizes onto the grid that covers the fixed
range ``[lo, hi]`` (``lo <= 0 <= hi`` is enforced by widening, so 0 stays exactly
representable), computed once from calibration data (``jaxqfl.quant.calibrate``),
not from the tensor being quantized. That is what integer inference needs: the
scale of a layer input is a constant of the exported model, not a function of
the batch. Values outside the range clip.

Asymmetric grid (default; as ``uniform(symmetric=False)``): ``q = clip(rn(x / s) + z,
0, 2^b - 1)``, ``x ~ s (q - z)``, with ``s, z`` from ``jaxqfl.quant.uniform._asymmetric_scale``
(Jacob et al. 2018). Symmetric: ``q = clip(rn(x / s), -Q, Q)``, ``s = max(-lo, hi) / Q``.

``lo`` and ``hi`` are scalars (per tensor) or 1-D arrays of length ``C`` for one
range per index along ``axis`` (per channel). ``fake_quant`` uses the clipped
straight-through estimator (gradient zero where the input clips).
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
    check_float,
    codes_dtype,
    dequantize_affine,
    normalize_axis,
    safe_scale,
    straight_through,
)
from jaxqfl.quant.uniform import _asymmetric_scale, code_range


def grid_of_range(lo, hi, bits: int, symmetric: bool = False):
    """``(scale, zero_point)`` (zero point ``None`` if symmetric) of the grid covering ``[lo, hi]``."""
    lo = jnp.minimum(jnp.asarray(lo, jnp.float32), 0.0)
    hi = jnp.maximum(jnp.asarray(hi, jnp.float32), 0.0)
    qmin, qmax = code_range(bits, symmetric)
    if symmetric:
        return safe_scale(jnp.maximum(-lo, hi) / qmax), None
    return _asymmetric_scale(lo, hi, qmax)


def static_uniform(bits: int, lo, hi, *, symmetric: bool = False, axis: int | None = None) -> Quantizer:
    """A uniform quantizer with the fixed range ``[lo, hi]`` (module docstring).

    Args:
      bits: 2 to 16.
      lo, hi: range ends, scalars or 1-D arrays (one per channel along ``axis``).
      symmetric: symmetric grid (no zero point) or asymmetric with a zero point.
      axis: channel axis of the tensors this quantizer will see when ``lo``/``hi`` are 1-D.
    """
    where = "static_uniform"
    check_bits(bits, 2, 16, where)
    lo_a = np.asarray(lo, np.float32)
    hi_a = np.asarray(hi, np.float32)
    if lo_a.shape != hi_a.shape or lo_a.ndim > 1:
        raise ValueError(f"{where}: lo and hi must be scalars or equal-length 1-D arrays, got shapes {lo_a.shape}, {hi_a.shape}")
    if not (np.all(np.isfinite(lo_a)) and np.all(np.isfinite(hi_a))):
        raise ValueError(f"{where}: the range must be finite, got lo={lo_a}, hi={hi_a}")
    if np.any(lo_a > hi_a):
        raise ValueError(f"{where}: lo > hi in the range [{lo_a}, {hi_a}]")
    if lo_a.ndim == 1 and axis is None:
        raise ValueError(f"{where}: per-channel ranges (1-D lo/hi) need a channel axis")
    qmin, qmax = code_range(bits, symmetric)
    dtype = codes_dtype(qmin, qmax)
    s_flat, z_flat = grid_of_range(lo_a, hi_a, bits, symmetric)

    def _shaped(a, ndim):
        if a is None or lo_a.ndim == 0:
            return a
        ax = normalize_axis(axis, ndim, f"{where}.quantize")
        shape = [1] * ndim
        shape[ax] = a.shape[0]
        return a.reshape(shape)

    def quantize(x: jax.Array, key=None) -> QTensor:
        del key
        check_float(x, f"{where}.quantize")
        s, z = _shaped(s_flat, x.ndim), _shaped(z_flat, x.ndim)
        v = rnd.round_nearest(x.astype(jnp.float32) / s)
        if symmetric:
            return QTensor(jnp.clip(v, qmin, qmax).astype(dtype), s)
        return QTensor(jnp.clip(v + z, qmin, qmax).astype(dtype), s, z.astype(dtype))

    dequantize = dequantize_affine

    def in_range(x, q: QTensor):
        z = 0.0 if q.zero_point is None else q.zero_point.astype(jnp.float32)
        v = x.astype(jnp.float32) / q.scale + z
        return (v >= qmin - 0.5) & (v <= qmax + 0.5)

    fake_quant = straight_through(quantize, dequantize, in_range)
    kind = "sym" if symmetric else "asym"
    name = f"int{bits}/{kind}/static/{'tensor' if lo_a.ndim == 0 else f'axis={axis}'}"
    return Quantizer(quantize, dequantize, fake_quant, bits, name, False)


def static_grid(q: Quantizer):
    """``(scale, zero_point)`` of a per-tensor static quantizer, as Python floats / ints
    (read by integer export); ``ValueError`` for any other quantizer."""
    if "/static/tensor" not in q.name:
        raise ValueError(f"integer inference needs a per-tensor static activation quantizer; got {q.name!r}")
    qt = q.quantize(jnp.zeros((1,), jnp.float32))
    z = 0 if qt.zero_point is None else int(qt.zero_point)
    return float(qt.scale), z
