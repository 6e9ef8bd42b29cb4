"""Quantized tensors and the quantizer interfaces.

A quantizer is built by a factory whose arguments are its hyper-parameters and
is a NamedTuple of pure functions (the optax style, DESIGN.md):

    q = jaxqfl.quant.uniform(bits=4, axis=-1, rounding="stochastic")
    qt = q.quantize(x, key)        # QTensor: integer codes + scale (+ zero point)
    y = q.dequantize(qt)           # float32 again
    y = q.fake_quant(x, key)       # = dequantize(quantize(x, key)) with a custom VJP

``key`` is a traced ``jax.random`` key (per-client under ``vmap``) or ``None``
for deterministic round-to-nearest. Learned quantizers (LSQ, PACT) carry one
trainable parameter (a scale or a clipping level) as an explicit argument:
``fake_quant(x, param, key)``, with ``init(x) -> param``.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


class QTensor(NamedTuple):
    """A quantized tensor: ``codes`` (integer or narrow-float array, the shape of the
    input), ``scale`` (broadcastable to ``codes``: one per tensor or per channel,
    ``None`` for plain casts), ``zero_point`` (same shape as ``scale``, asymmetric
    grids only) and ``codebook`` (the value table indexed by codes, codebook
    quantizers only). Which formula maps codes back is the quantizer's
    ``dequantize``; a QTensor is plain data and a pytree (vmap/jit friendly)."""

    codes: jax.Array
    scale: jax.Array | None = None
    zero_point: jax.Array | None = None
    codebook: jax.Array | None = None


class Quantizer(NamedTuple):
    """A stateless quantizer.

    quantize(x, key) -> QTensor; dequantize(QTensor) -> float32 array;
    fake_quant(x, key) -> array of x's dtype, whose VJP is the gradient estimator.
    ``bits``: storage bits per element of ``codes`` (for size accounting);
    ``name``: a short description such as ``'int8/sym/axis=-1'``;
    ``needs_key``: whether ``quantize`` uses its key (stochastic rounding); callers
    may pass ``None`` (and skip drawing a key) when it does not.
    ``traced_bits``: ``None`` for a quantizer whose bit-width is a Python int (all but
    one kind); for ``uniform(bits, max_bits=m)`` with a traced ``bits``, that traced
    int32 scalar, and ``bits`` then holds the static bound ``m`` (the width the codes'
    dtype is chosen for), NOT the element's bit count: whoever needs a static count
    (BOPs, model bytes, export, integer inference) reads it through
    :func:`static_bits`, which refuses such a quantizer.
    ``spec``: ``(factory name, ((keyword, value), ...))``, the hyper-parameters other
    than ``bits`` that built the quantizer, where the factory records them (``uniform``
    does; ``()`` otherwise). Two quantizers with equal non-empty specs differ at most
    in their bit-widths (``jaxqfl.quant.bit_family``).
    """

    quantize: Callable[..., QTensor]
    dequantize: Callable[[QTensor], jax.Array]
    fake_quant: Callable[..., jax.Array]
    bits: int
    name: str
    needs_key: bool = False
    traced_bits: Any = None
    spec: tuple = ()


class LearnedQuantizer(NamedTuple):
    """A quantizer with one trainable parameter (LSQ's step size, PACT's clip level).

    init(x) -> param; quantize(x, param, key) -> QTensor; dequantize(QTensor);
    fake_quant(x, param, key) whose VJP gives gradients to both ``x`` and ``param``.
    ``param_name`` names the parameter in a model's params (``'kernel:scale'``);
    ``bits``, ``name``, ``needs_key`` as for ``Quantizer``.
    """

    init: Callable[[jax.Array], jax.Array]
    quantize: Callable[..., QTensor]
    dequantize: Callable[[QTensor], jax.Array]
    fake_quant: Callable[..., jax.Array]
    bits: int
    name: str
    param_name: str
    needs_key: bool = False


AnyQuantizer = Any  # Quantizer | LearnedQuantizer


def check_float(x: jax.Array, where: str) -> None:
    """Quantizers take floating inputs; an integer array is a caller bug."""
    dtype = jnp.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{where}: expected a floating-point array, got dtype {dtype}")


def check_bits(bits: int, lo: int, hi: int, where: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not lo <= bits <= hi:
        raise ValueError(f"{where}: bits={bits!r} is out of range; expected an integer in [{lo}, {hi}]")
    return bits


def static_bits(q, where: str) -> int:
    """``q.bits`` as a static Python int, for a consumer that needs the count at trace time.

    Refuses (ValueError naming ``where``) a quantizer whose bit-width is traced
    (``q.traced_bits`` set: ``uniform(bits, max_bits=...)``), whose ``bits`` field holds
    only the bound ``max_bits``: counting it would silently overstate BOPs and sizes.
    """
    if getattr(q, "traced_bits", None) is not None:
        raise ValueError(f"{where}: quantizer {q.name!r} has a traced bit-width (at most {q.bits}); this needs a "
                         "static bit count: use the tier's own preset (a static quantizer) here")
    return int(q.bits)


def check_choice(value, choices, what: str, where: str):
    if value not in choices:
        raise ValueError(f"{where}: {what}={value!r} is not one of {tuple(choices)}")
    return value


def normalize_axis(axis: int | None, ndim: int, where: str) -> int | None:
    """Channel axis in ``[0, ndim)`` or ``None`` (per-tensor); ValueError if out of range."""
    if axis is None:
        return None
    if not -ndim <= axis < ndim:
        raise ValueError(f"{where}: axis={axis} is out of range for a tensor of rank {ndim}")
    return axis % ndim


def reduce_axes(ndim: int, axis: int | None) -> tuple[int, ...]:
    """The axes a per-channel statistic reduces over: all but the channel axis."""
    return tuple(a for a in range(ndim) if a != axis)


def codes_dtype(lo: int, hi: int):
    """The smallest integer dtype holding every code in ``[lo, hi]``: unsigned when
    ``lo >= 0`` (asymmetric grids: ``uint8``), signed otherwise (``int8``)."""
    candidates = (jnp.uint8, jnp.uint16, jnp.uint32) if lo >= 0 else (jnp.int8, jnp.int16, jnp.int32)
    for dt in candidates:
        info = jnp.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return dt
    raise ValueError(f"no integer dtype holds codes in [{lo}, {hi}]")


def dequantize_affine(q: QTensor) -> jax.Array:
    """``s (q - z)`` in float32 for integer codes on an affine grid (``z = 0`` when symmetric)."""
    codes = q.codes.astype(jnp.int32)
    if q.zero_point is not None:
        codes = codes - q.zero_point.astype(jnp.int32)
    return codes.astype(jnp.float32) * q.scale


def safe_scale(scale: jax.Array) -> jax.Array:
    """Replace zero / subnormal scales (all-zero tensors or channels) by 1, so
    ``x / scale`` is finite; such tensors then quantize to all-zero codes."""
    tiny = jnp.finfo(jnp.float32).tiny
    return jnp.where(scale >= tiny, scale, jnp.ones_like(scale))


def straight_through(
    quantize: Callable, dequantize: Callable, in_range: Callable | None, dequantized: Callable | None = None
) -> Callable:
    """``fake_quant(x, key) = dequantize(quantize(x, key))`` with a straight-through VJP.

    Backward: ``dL/dx = dL/dy`` (identity STE, ``in_range=None``) or
    ``dL/dx = dL/dy * 1[x in representable range]`` (clipped STE, Bengio et al.
    2013; Hubara et al. 2016), where ``in_range(x, qtensor) -> bool mask``.
    Scales computed from ``x`` are treated as constants (no gradient through them).
    The forward pass is ``dequantize(quantize(x))``, so fake-quant and integer
    inference from exported codes agree bit for bit.

    ``dequantized(x, key)``, when given, must compute the same values as
    ``dequantize(quantize(x, key))`` without building the integer codes (e.g.
    ``clip(rn(x / s), q_min, q_max) * s`` kept in float32: every code is an integer of
    at most 16 bits, exact in float32, so the two agree bit for bit); the identity-STE
    forward then uses it, which saves the integer conversions of every element in
    each training step. The clipped STE needs the codes' scale for its mask and
    keeps the two-step path.
    """
    forward = dequantized if dequantized is not None and in_range is None else (lambda x, key: dequantize(quantize(x, key)))

    @jax.custom_vjp
    def fq(x, key):
        return forward(x, key).astype(x.dtype)

    def fwd(x, key):
        if in_range is None:
            return forward(x, key).astype(x.dtype), None
        q = quantize(x, key)
        return dequantize(q).astype(x.dtype), in_range(x, q)

    def bwd(mask, g):
        gx = g if mask is None else jnp.where(mask, g, jnp.zeros_like(g))
        return gx, None

    fq.defvjp(fwd, bwd)

    def fake_quant(x, key=None):
        check_float(x, "fake_quant")
        return fq(x, key)

    return fake_quant
