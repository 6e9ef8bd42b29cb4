"""Uniform integer quantization: symmetric, asymmetric and binary grids.

Grids (``b`` = bits, ``s`` = scale, ``z`` = zero point, codes ``q``):

* symmetric, ``2 <= b <= 16``: ``q`` in ``[-Q, Q]`` with ``Q = 2^(b-1) - 1`` (the
  "restricted" range: int8 is ``[-127, 127]``, 2 bits is ternary ``{-1, 0, 1}``),
  ``x ~ s q``, ``s = r / Q`` where ``r`` is the range statistic (absmax by default).
  Codes are ``int8`` (``int16`` above 8 bits).
* asymmetric, ``2 <= b <= 16``: ``q`` in ``[0, 2^b - 1]``, ``x ~ s (q - z)`` with
  ``lo``, ``hi`` the range statistics, ``z = rn(-lo / s0)`` with
  ``s0 = (hi - lo) / (2^b - 1)``, kept in ``[1, 2^b - 2]`` unless ``lo`` or ``hi`` is exactly 0
  (so 0 is always on the grid; Jacob et al. 2018), and ``s = max(-lo / z, hi / (2^b - 1 - z))
  >= s0`` so the grid covers ``[lo, hi]`` despite the rounded zero point
  (``_asymmetric_scale``). A range of one sign (e.g. ``lo > 0``) thus gets ``z = 1`` and
  ``s = hi / (2^b - 2)``: one code below the range is spent on keeping 0 representable.
  Codes and zero point are ``uint8`` (``uint16`` above 8 bits).
* binary, ``b = 1`` symmetric: ``q`` in ``{-1, +1}`` (``int8``), ``x ~ s q``; by default
  ``s = mean |x|``, the L2-optimal scale for sign codes (Rastegari et al. 2016,
  XNOR-Net); an all-zero tensor/channel gets ``s = 0``, hence zeros. Rounding maps ``t = (clip(x / s, -1, 1) + 1) / 2`` to ``{0, 1}``, so with
  ``scale_method='absmax'`` stochastic binarization is unbiased (BinaryConnect,
  Courbariaux et al. 2015).

Range statistics (``scale_method``): ``'absmax'`` (``max |x|``), ``'minmax'``
(``min x`` and ``max x``; equals absmax for symmetric grids), ``'percentile'``
(``percentile(|x|, p)``, or ``percentile(x, 100 - p)`` / ``percentile(x, p)`` for
asymmetric grids; values beyond clip), ``'mean_abs'`` (binary only). Per tensor
(``axis=None``) or per channel (one scale for each index along ``axis``; the
statistic reduces over all other axes). All-zero tensors/channels use ``s = 1``
and quantize to zero codes (finite outputs, no division by zero).

Rounding: ``'nearest'`` is ``rn(v) = floor(v + 1/2)`` with error ``<= s/2`` inside the
range; ``'stochastic'`` (Gupta et al. 2015) is unbiased with variance
``<= s^2/4`` per element; a ``None`` key always rounds to nearest. Both come from
``jaxqfl.quant.rounding``.

Gradient estimator of ``fake_quant`` (``ste``): ``'clipped'`` passes ``dL/dy`` where
``x`` lies in the representable range widened by half a step,
``q_min - 1/2 <= x / s + z <= q_max + 1/2`` (where clipping changes nothing beyond
rounding; the half step keeps the tensor's own extremes inside despite float
round-off in ``s``), and zero outside (binary: ``|x / s| <= 1``, the hardtanh STE of
Hubara et al. 2016); ``'identity'`` passes it everywhere. With absmax / min-max
statistics (``bits >= 2``) every element lies in range by construction, so the
clipped STE is computed as the identity.

Speed (the QAT step runs this on every kernel and layer input): with the identity
STE, ``fake_quant`` evaluates ``dequantize(quantize(x))`` in float32 without building
integer codes (the same values bit for bit: codes and zero points are small integers,
exact in float32), and min / max / absmax statistics over a non-minor axis fold that
axis in halves elementwise before reducing (``_fold_halves``; exact for max and min).
On the ``qfl`` bench workload this took the QAT round from 1.19x to 1.08x the float
round (``benchmarks/qat_overhead.py``, ``benchmarks/results/qat_overhead.md``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxqfl.quant import rounding as rnd
from jaxqfl.quant.qtensor import (
    QTensor,
    Quantizer,
    check_bits,
    dequantize_affine,
    check_choice,
    check_float,
    codes_dtype,
    normalize_axis,
    reduce_axes,
    safe_scale,
    straight_through,
)

SCALE_METHODS = ("absmax", "minmax", "percentile", "mean_abs")
ROUNDINGS = ("nearest", "stochastic")
STES = ("clipped", "identity")


def code_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """``(q_min, q_max)`` of the grid (see the module docstring)."""
    if bits == 1:
        return -1, 1
    if symmetric:
        q = 2 ** (bits - 1) - 1
        return -q, q
    return 0, 2**bits - 1


def _fold_halves(x, axes, op):
    """``x`` with each non-minor axis of ``axes`` folded in half by the elementwise ``op`` a
    few times (at most ``_FOLDS`` halvings, while the extent is even and at least 16).

    For ``op`` in {``maximum``, ``minimum``} (exact, associative, commutative) a later
    reduction over ``axes`` gives exactly the reduction of ``x``. It is there for speed:
    XLA's CPU reduction over a non-minor axis (a weight's per-output-channel absmax,
    reducing ``[in, out]`` over ``in``) runs about twice as slow as these vectorised
    elementwise folds followed by a reduction over the remaining ``in / 16`` rows.
    The minor axis (a layer input's per-example statistic) reduces fast as it is.
    """
    for a in axes:
        if a == x.ndim - 1:
            continue
        for _ in range(_FOLDS):
            n = x.shape[a]
            if n % 2 or n < 16:
                break
            x = op(lax.slice_in_dim(x, 0, n // 2, axis=a), lax.slice_in_dim(x, n // 2, n, axis=a))
    return x


_FOLDS = 4


def _range_stat(x, axes, symmetric, scale_method, percentile):
    """(lo, hi) of the range to cover, reduced over ``axes`` with keepdims."""
    if scale_method == "percentile":
        if symmetric:
            hi = jnp.percentile(jnp.abs(x), percentile, axis=axes, keepdims=True)
            return -hi, hi
        lo = jnp.percentile(x, 100.0 - percentile, axis=axes, keepdims=True)
        hi = jnp.percentile(x, percentile, axis=axes, keepdims=True)
        return lo, hi
    if scale_method == "mean_abs":
        m = jnp.mean(jnp.abs(x), axis=axes, keepdims=True)
        return -m, m
    if symmetric:  # absmax and minmax coincide on a symmetric grid
        hi = jnp.max(_fold_halves(jnp.abs(x), axes, jnp.maximum), axis=axes, keepdims=True)
        return -hi, hi
    lo = jnp.min(_fold_halves(x, axes, jnp.minimum), axis=axes, keepdims=True)
    hi = jnp.max(_fold_halves(x, axes, jnp.maximum), axis=axes, keepdims=True)
    return lo, hi


def _asymmetric_scale(lo, hi, qmax):
    """Scale and zero point of an asymmetric grid ``s (q - z)``, ``q`` in ``[0, qmax]``,
    that covers ``[lo, hi]`` and 0 (exactly on the grid).

    ``z = rn(-lo / s0)`` with ``s0 = (hi - lo) / qmax`` (kept in ``[1, qmax - 1]`` when the
    range has both signs), then ``s = max(-lo / z, hi / (qmax - z))``, at least ``s0``: the
    rounded zero point would otherwise leave up to half a step of the range
    outside the grid (clipping the extremes and biasing stochastic rounding there).
    ``qmax`` is a Python int or a traced float32 scalar (a traced bit-width); both give
    the same float32 operations, hence the same values.
    """
    s0 = safe_scale((hi - lo) * _reciprocal(qmax))
    z_mid = jnp.clip(rnd.round_nearest(-lo / s0), 1, qmax - 1)
    qmax_f = float(qmax) if isinstance(qmax, int) else qmax
    z = jnp.where(lo == 0, 0.0, jnp.where(hi == 0, qmax_f, z_mid))
    s = jnp.maximum(
        jnp.where(z > 0, -lo / jnp.maximum(z, 1.0), 0.0),
        jnp.where(z < qmax, hi / jnp.maximum(qmax - z, 1.0), 0.0),
    )
    return safe_scale(s), z


def _reciprocal(q):
    """``1 / q`` rounded to float32, for a Python int or a traced float32 ``q``.

    A grid's scale is ``r * (1 / Q)``, not ``r / Q``: XLA's algebraic simplifier turns a
    division by a constant into a multiplication by its rounded reciprocal (so a static
    ``Q`` always computed ``r * (1 / Q)``), while a traced ``Q`` would be divided by
    exactly; writing the product for both keeps static and traced widths bit for bit
    equal. (``float32(1.0 / Q)`` in float64 equals the float32 division ``1 / Q`` for
    every ``Q < 2^16``: checked exhaustively.)
    """
    return 1.0 / q if isinstance(q, int) else jnp.float32(1.0) / q


def traced_code_range(bits: jax.Array, symmetric: bool):
    """``(q_min, q_max)`` as float32 scalars for a traced int32 ``bits`` in ``[2, 16]``:
    ``(-(2^(b-1) - 1), 2^(b-1) - 1)`` symmetric, ``(0, 2^b - 1)`` asymmetric; computed
    exactly (``2^b`` as an integer shift, then one exact conversion: every value is below
    2^16), so they equal ``code_range(b, symmetric)`` converted to float32."""
    b = jnp.asarray(bits, jnp.int32)
    if symmetric:
        q = (jnp.left_shift(jnp.int32(1), b - 1) - 1).astype(jnp.float32)
        return -q, q
    return jnp.float32(0.0), (jnp.left_shift(jnp.int32(1), b) - 1).astype(jnp.float32)


def _bits_argument(bits, max_bits, where: str):
    """``(bits, traced)``: ``bits`` checked as a static int in ``[1, 16]`` (``[2, max_bits]``
    with ``max_bits``), or, with ``max_bits`` only, a traced / array int scalar as int32."""
    if max_bits is None:
        return check_bits(bits, 1, 16, where), False
    check_bits(max_bits, 2, 16, f"{where} max_bits")
    if isinstance(bits, (jax.Array, np.ndarray)) and not isinstance(bits, np.generic):
        if jnp.ndim(bits) != 0 or not jnp.issubdtype(jnp.result_type(bits), jnp.integer):
            raise ValueError(f"{where}: a traced bits must be an integer scalar, got {jnp.result_type(bits)} of shape "
                             f"{jnp.shape(bits)}")
        return jnp.asarray(bits, jnp.int32), True
    if isinstance(bits, np.integer):
        bits = int(bits)
    if isinstance(bits, int) and not isinstance(bits, bool) and bits == 1:
        raise ValueError(f"{where}: bits=1 (binary) has its own scale and STE and is static only; max_bits is for "
                         f"traced widths in [2, max_bits]")
    return check_bits(bits, 2, max_bits, where), False


def uniform(
    bits: int = 8,
    *,
    symmetric: bool = True,
    axis: int | None = None,
    scale_method: str | None = None,
    percentile: float = 99.9,
    rounding: str = "nearest",
    ste: str = "clipped",
    max_bits: int | None = None,
) -> Quantizer:
    """Uniform integer quantizer (grid, statistics, rounding and STE in the module docstring).

    Args:
      bits: 1 (binary, symmetric only) to 16. With ``max_bits``, an integer in
        ``[2, max_bits]`` or a traced int32 scalar (e.g. a client tier's width looked up
        from a traced tier index; per example under ``vmap``).
      symmetric: symmetric grid around 0 (no zero point) or asymmetric with a zero point.
      axis: channel axis for per-channel scales (any axis, negative allowed), ``None`` = per tensor.
      scale_method: ``'absmax'`` (default for ``bits >= 2``), ``'minmax'``, ``'percentile'``,
        ``'mean_abs'`` (default for, and only for, binary).
      percentile: ``p`` in ``(0, 100]`` for ``scale_method='percentile'``.
      rounding: ``'nearest'`` or ``'stochastic'`` (needs a key; ``key=None`` rounds to nearest).
      ste: ``'clipped'`` or ``'identity'`` straight-through estimator for ``fake_quant``.
      max_bits: static bound in ``[2, 16]`` of a traced ``bits``. The grid then follows
        the traced ``b`` in-trace: ``Q = 2^(b-1) - 1`` (symmetric) or ``2^b - 1``
        (asymmetric) as float32 scalars (:func:`traced_code_range`), so ``fake_quant``,
        ``dequantize(quantize(x))`` and the STE's gradient equal the static
        ``uniform(b, ...)``'s bit for bit in float32; codes are stored in the dtype of
        ``max_bits`` (``int8``/``uint8`` up to 8 bits, 16-bit above). A traced ``b`` cannot
        be checked here: it must lie in ``[2, max_bits]`` (binary, ``b = 1``, is static
        only); whoever feeds it checks its values on the host (``bit_family``
        builds it from static presets' widths). The quantizer's ``bits`` field then
        holds ``max_bits`` and ``traced_bits`` the traced width (:class:`Quantizer`):
        consumers that need a static count refuse it (``qtensor.static_bits``).

    Cost: one quantizer for several widths; a traced width adds a few scalar integer
    ops per call and nothing per element (the grid's bounds are scalars either way).
    """
    where = "uniform"
    bits, traced = _bits_argument(bits, max_bits, where)
    if not traced and bits == 1 and not symmetric:
        raise ValueError(f"{where}: bits=1 (binary) is symmetric only; got symmetric={symmetric}")
    if scale_method is None:
        scale_method = "mean_abs" if (not traced and bits == 1) else "absmax"
    check_choice(scale_method, SCALE_METHODS, "scale_method", where)
    if scale_method == "mean_abs" and (traced or bits != 1):
        raise ValueError(f"{where}: scale_method='mean_abs' is for bits=1 only; got bits={'traced' if traced else bits}")
    if not 0.0 < float(percentile) <= 100.0:
        raise ValueError(f"{where}: percentile={percentile} must lie in (0, 100]")
    check_choice(rounding, ROUNDINGS, "rounding", where)
    check_choice(ste, STES, "ste", where)
    spec = ("uniform", (("symmetric", bool(symmetric)), ("axis", axis), ("scale_method", scale_method),
                        ("percentile", float(percentile)), ("rounding", rounding), ("ste", ste)))
    binary_grid = not traced and bits == 1
    if traced:
        qmin, qmax = traced_code_range(bits, symmetric)
        dtype = codes_dtype(*code_range(max_bits, symmetric))
    else:
        qmin, qmax = code_range(bits, symmetric)
        dtype = codes_dtype(*code_range(max_bits or bits, symmetric))
    stochastic = rounding == "stochastic"

    def grid(x: jax.Array):
        """``(x as float32, scale, zero point or None)`` of ``x``'s grid (bits >= 2)."""
        ax = normalize_axis(axis, x.ndim, f"{where}.quantize")
        xf = x.astype(jnp.float32)
        lo, hi = _range_stat(xf, reduce_axes(x.ndim, ax), symmetric, scale_method, percentile)
        if symmetric:
            return xf, safe_scale(hi * _reciprocal(qmax)), None
        s, z = _asymmetric_scale(lo, hi, qmax)
        return xf, s, z

    def quantize(x: jax.Array, key: jax.Array | None = None) -> QTensor:
        check_float(x, f"{where}.quantize")
        k = key if stochastic else None
        if binary_grid:
            ax = normalize_axis(axis, x.ndim, f"{where}.quantize")
            xf = x.astype(jnp.float32)
            _, hi = _range_stat(xf, reduce_axes(x.ndim, ax), symmetric, scale_method, percentile)
            # all-zero channels keep scale 0 so they dequantize to 0 (codes are +-1)
            s = jnp.where(hi >= jnp.finfo(jnp.float32).tiny, hi, 0.0)
            t = (jnp.clip(xf / safe_scale(s), -1.0, 1.0) + 1.0) * 0.5
            codes = 2 * rnd.round_to_int(t, k) - 1
            return QTensor(codes.astype(dtype), s)
        xf, s, z = grid(x)
        if z is None:
            codes = jnp.clip(rnd.round_to_int(xf / s, k), qmin, qmax)
            return QTensor(codes.astype(dtype), s)
        codes = jnp.clip(rnd.round_to_int(xf / s, k) + z, qmin, qmax)
        return QTensor(codes.astype(dtype), s, z.astype(dtype))

    def dequantized(x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """``dequantize(quantize(x, key))`` in float32 throughout (bits >= 2): the codes
        and zero point are integers below 2^16, exact in float32, so this is the same
        value bit for bit, without the integer conversions."""
        k = key if stochastic else None
        xf, s, z = grid(x)
        if z is None:
            return jnp.clip(rnd.round_to_int(xf / s, k), qmin, qmax) * s
        return (jnp.clip(rnd.round_to_int(xf / s, k) + z, qmin, qmax) - z) * s

    dequantize = dequantize_affine

    def in_range(x, q: QTensor):
        z = 0.0 if q.zero_point is None else q.zero_point.astype(jnp.float32)
        v = x.astype(jnp.float32) / safe_scale(q.scale) + z
        if binary_grid:  # hardtanh STE of binarized networks (Hubara et al. 2016)
            return jnp.abs(v) <= 1.0
        return (v >= qmin - 0.5) & (v <= qmax + 0.5)

    # With absmax / min-max statistics the grid covers the whole tensor, so the clipped
    # STE's mask is all true by construction: compute it as the identity (no residual).
    covers = not binary_grid and scale_method in ("absmax", "minmax")
    fake_quant = straight_through(
        quantize, dequantize, in_range if ste == "clipped" and not covers else None,
        None if binary_grid else dequantized,
    )
    kind = "binary" if binary_grid else ("sym" if symmetric else "asym")
    width = f"<={max_bits}" if traced else f"{bits}"
    name = f"int{width}/{kind}/{scale_method}/{'tensor' if axis is None else f'axis={axis}'}/{rounding}"
    if traced:
        return Quantizer(quantize, dequantize, fake_quant, max_bits, name, stochastic, traced_bits=bits, spec=spec)
    return Quantizer(quantize, dequantize, fake_quant, bits, name, stochastic, spec=spec)


def binary(*, scale_method: str = "mean_abs", axis: int | None = None, rounding: str = "nearest", ste: str = "clipped") -> Quantizer:
    """1-bit sign quantizer ``x ~ s sign(x)`` (see ``uniform`` with ``bits=1``)."""
    return uniform(1, symmetric=True, axis=axis, scale_method=scale_method, rounding=rounding, ste=ste)
