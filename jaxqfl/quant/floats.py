"""Narrow floating-point formats: fp16, bf16, fp8 (e4m3fn, e5m2).

``cast(dtype)`` stores ``x`` in the narrow format (``QTensor.codes`` has that
dtype; ``scale`` is ``None`` unless ``scaled=True``). Values beyond the format's
largest finite value saturate to it (``float8_e4m3fn`` has no infinity; a plain
cast would give NaN).

Rounding: ``'nearest'`` is the hardware cast (round to nearest, ties to even).
``'stochastic'`` rounds to one of the two neighbouring representable values with
probabilities that make it unbiased. With ``e = max(floor(log2 |x|), e_min)`` (``e_min``
the smallest normal exponent, so subnormals share the spacing of the lowest
binade) and ``m`` mantissa bits, the spacing at ``x`` is ``ulp = 2^(e - m)`` and

    sr(x) = ulp * (floor(x / ulp) + Bernoulli(x / ulp - floor(x / ulp))),

``E[sr(x)] = x``, ``Var <= ulp^2 / 4`` (Gupta et al. 2015; for bf16 training see also
Zamirai et al. 2020). The scaling by ``ulp`` is a power of two, hence exact in float32.

``scaled=True`` first divides by a per-tensor (or per-``axis``) scale
``absmax / max_finite`` so the tensor fills the format's range (the usual fp8
recipe, Micikevicius et al. 2022) and stores the float32 scale.

``fake_quant`` uses the identity straight-through estimator.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxqfl.quant import rounding as rnd
from jaxqfl.quant.qtensor import (
    QTensor,
    Quantizer,
    check_choice,
    check_float,
    normalize_axis,
    reduce_axes,
    safe_scale,
    straight_through,
)

FORMATS = {
    "float16": jnp.float16,
    "fp16": jnp.float16,
    "bfloat16": jnp.bfloat16,
    "bf16": jnp.bfloat16,
    "float8_e4m3fn": jnp.float8_e4m3fn,
    "e4m3": jnp.float8_e4m3fn,
    "fp8_e4m3": jnp.float8_e4m3fn,
    "float8_e5m2": jnp.float8_e5m2,
    "e5m2": jnp.float8_e5m2,
    "fp8_e5m2": jnp.float8_e5m2,
}


def _resolve_dtype(dtype):
    if isinstance(dtype, str):
        if dtype not in FORMATS:
            raise ValueError(f"cast: unknown format {dtype!r}; expected one of {sorted(FORMATS)}")
        return jnp.dtype(FORMATS[dtype])
    dt = jnp.dtype(dtype)
    if dt not in {jnp.dtype(v) for v in FORMATS.values()}:
        raise ValueError(f"cast: dtype {dt} is not a supported narrow float; expected one of {sorted(FORMATS)}")
    return dt


def round_float_stochastic(x: jax.Array, dtype, key: jax.Array) -> jax.Array:
    """Unbiased stochastic rounding of float32 ``x`` onto the values of ``dtype``
    (result in float32, exactly representable in ``dtype``; no saturation)."""
    info = jnp.finfo(dtype)
    xf = x.astype(jnp.float32)
    e = jnp.maximum(rnd.floor_log2(xf), info.minexp)
    shift = e - info.nmant  # ulp = 2^shift
    return jnp.where(xf == 0, 0.0, jnp.ldexp(rnd.round_stochastic(jnp.ldexp(xf, -shift), key), shift))


def cast(dtype="bfloat16", *, rounding: str = "nearest", scaled: bool = False, axis: int | None = None) -> Quantizer:
    """Quantizer that stores values in a narrow float ``dtype`` (module docstring).

    Args:
      dtype: ``'fp16'``/``'float16'``, ``'bf16'``/``'bfloat16'``, ``'e4m3'``/``'float8_e4m3fn'``,
        ``'e5m2'``/``'float8_e5m2'`` or the jnp dtype itself.
      rounding: ``'nearest'`` (hardware cast) or ``'stochastic'`` (unbiased; needs a key).
      scaled: divide by ``absmax / max_finite`` first (per tensor or per ``axis``).
    """
    dt = _resolve_dtype(dtype)
    check_choice(rounding, ("nearest", "stochastic"), "rounding", "cast")
    info = jnp.finfo(dt)
    fmax = float(info.max)
    stochastic = rounding == "stochastic"

    def quantize(x, key=None) -> QTensor:
        check_float(x, "cast.quantize")
        xf = x.astype(jnp.float32)
        s = None
        if scaled:
            ax = normalize_axis(axis, x.ndim, "cast.quantize")
            amax = jnp.max(jnp.abs(xf), axis=reduce_axes(x.ndim, ax), keepdims=True)
            s = safe_scale(amax / fmax)
            xf = xf / s
        xf = jnp.clip(xf, -fmax, fmax)
        if stochastic and key is not None:
            xf = jnp.clip(round_float_stochastic(xf, dt, key), -fmax, fmax)
        return QTensor(xf.astype(dt), s)

    def dequantize(q: QTensor):
        y = q.codes.astype(jnp.float32)
        return y if q.scale is None else y * q.scale

    fake_quant = straight_through(quantize, dequantize, None)
    name = f"{dt.name}/{rounding}" + ("/scaled" if scaled else "")
    return Quantizer(quantize, dequantize, fake_quant, 8 * dt.itemsize, name, stochastic)
