"""Quantizers with a learned parameter: LSQ step sizes and PACT clipping levels.

LSQ (Esser et al. 2020, "Learned step size quantization"). With step ``s`` and the
integer range ``[-Q_N, Q_P]`` (signed: ``Q_N = 2^(b-1)``, ``Q_P = 2^(b-1) - 1``, the full
two's-complement range as in the paper; unsigned: ``Q_N = 0``, ``Q_P = 2^b - 1``):

    v_bar = round(clip(v / s, -Q_N, Q_P)),      v_hat = v_bar * s

Gradients (straight-through on ``round``):

    d v_hat / d v = 1 if -Q_N < v/s < Q_P else 0
    d v_hat / d s = -Q_N                       if v/s <= -Q_N
                    -v/s + round(v/s)          if -Q_N < v/s < Q_P
                     Q_P                       if v/s >= Q_P

and the step-size gradient is multiplied by ``g = 1 / sqrt(N Q_P)``, ``N`` the number
of elements the step is shared by (weights of the layer, ``N_W``; or features of one
example for activations, ``N_F``, with ``per_example=True``). Initial step:
``s_0 = 2 mean|v| / sqrt(Q_P)``.

PACT (Choi et al. 2018, "PACT: parameterized clipping activation"), for
non-negative activations with a learned clip level ``alpha``:

    y = clip(x, 0, alpha),   y_q = round(y (2^b - 1) / alpha) alpha / (2^b - 1)
    d y_q / d x = 1 if 0 <= x < alpha else 0,     d y_q / d alpha = 1 if x >= alpha else 0

(the L2 penalty on ``alpha`` of the paper belongs in the loss). Both quantizers are
``LearnedQuantizer``s: ``fake_quant(x, param, key)`` with a ``jax.custom_vjp``.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxqfl.quant import rounding as rnd
from jaxqfl.quant.qtensor import LearnedQuantizer, QTensor, check_bits, check_choice, check_float, codes_dtype

_MIN_PARAM = 1e-8  # lower clamp on s and alpha in the forward pass (keeps v/s finite)


def lsq_grid(bits: int, signed: bool) -> tuple[int, int]:
    """``(Q_N, Q_P)`` of LSQ's integer range ``[-Q_N, Q_P]``."""
    return (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def lsq_step_grad(v_over_s: jax.Array, q_n: int, q_p: int) -> jax.Array:
    """Per-element ``d v_hat / d s`` of LSQ (the three regions, before the gradient scale)."""
    inside = -v_over_s + rnd.round_nearest(v_over_s)
    return jnp.where(v_over_s <= -q_n, -float(q_n), jnp.where(v_over_s >= q_p, float(q_p), inside))


def lsq(
    bits: int = 4,
    *,
    signed: bool = True,
    per_example: bool = False,
    grad_scale: float | None = None,
    rounding: str = "nearest",
) -> LearnedQuantizer:
    """LSQ quantizer with a learned per-tensor step ``s`` (a scalar); formulas in the module docstring.

    Args:
      bits: 2 to 16.
      signed: range ``[-2^(b-1), 2^(b-1) - 1]`` (weights) or ``[0, 2^b - 1]`` (post-ReLU activations).
      per_example: ``N`` counts the elements of one example ``x[0]`` (activations, ``N_F``)
        instead of all of ``x`` (weights, ``N_W``).
      grad_scale: override ``g`` (e.g. ``1.0`` for the raw gradient); ``None`` = ``1/sqrt(N Q_P)``.
      rounding: ``'nearest'`` or ``'stochastic'`` (with a key).
    """
    where = "lsq"
    check_bits(bits, 2, 16, where)
    check_choice(rounding, ("nearest", "stochastic"), "rounding", where)
    q_n, q_p = lsq_grid(bits, signed)
    dtype = codes_dtype(-q_n, q_p)
    stochastic = rounding == "stochastic"

    def init(x):
        check_float(x, f"{where}.init")
        s0 = 2.0 * jnp.mean(jnp.abs(x.astype(jnp.float32))) / math.sqrt(q_p)
        return jnp.maximum(s0, _MIN_PARAM)

    def _codes(x, s, key):
        v = jnp.clip(x.astype(jnp.float32) / s, -q_n, q_p)
        return jnp.clip(rnd.round_to_int(v, key if stochastic else None), -q_n, q_p)

    def quantize(x, s, key=None) -> QTensor:
        check_float(x, f"{where}.quantize")
        s = jnp.maximum(jnp.asarray(s, jnp.float32), _MIN_PARAM)
        return QTensor(_codes(x, s, key).astype(dtype), s)

    def dequantize(q: QTensor):
        return q.codes.astype(jnp.float32) * q.scale

    @jax.custom_vjp
    def _fq(x, s, key):
        s_eff = jnp.maximum(s, _MIN_PARAM)
        return (_codes(x, s_eff, key) * s_eff).astype(x.dtype)

    def _fwd(x, s, key):
        s_eff = jnp.maximum(s, _MIN_PARAM)
        v = x.astype(jnp.float32) / s_eff
        codes = jnp.clip(rnd.round_to_int(jnp.clip(v, -q_n, q_p), key if stochastic else None), -q_n, q_p)
        return (codes * s_eff).astype(x.dtype), (v, codes, s)

    def _bwd(res, g):
        v, codes, s = res
        gf = g.astype(jnp.float32)
        inside = (v > -q_n) & (v < q_p)
        gx = jnp.where(inside, gf, 0.0).astype(g.dtype)
        # d v_hat / d s, three regions; ``codes`` are round(v) inside the range
        ds = jnp.where(v <= -q_n, -float(q_n), jnp.where(v >= q_p, float(q_p), codes - v))
        n = v[0].size if (per_example and v.ndim > 0) else v.size
        gscale = (1.0 / math.sqrt(n * q_p)) if grad_scale is None else grad_scale
        gs = (gscale * jnp.sum(gf * ds)).astype(s.dtype).reshape(jnp.shape(s))
        return gx, gs, None

    _fq.defvjp(_fwd, _bwd)

    def fake_quant(x, s, key=None):
        check_float(x, f"{where}.fake_quant")
        return _fq(x, jnp.asarray(s, jnp.float32), key)

    name = f"lsq{bits}/{'signed' if signed else 'unsigned'}/{rounding}"
    return LearnedQuantizer(init, quantize, dequantize, fake_quant, bits, name, "scale", stochastic)


def pact(bits: int = 4, *, alpha_init: float = 10.0, rounding: str = "nearest") -> LearnedQuantizer:
    """PACT activation quantizer with a learned clip level ``alpha`` (scalar); codes ``uint8``
    in ``[0, 2^b - 1]`` with step ``alpha / (2^b - 1)``. Formulas in the module docstring."""
    where = "pact"
    check_bits(bits, 1, 16, where)
    check_choice(rounding, ("nearest", "stochastic"), "rounding", where)
    if not alpha_init > 0:
        raise ValueError(f"{where}: alpha_init={alpha_init} must be positive")
    levels = 2**bits - 1
    dtype = codes_dtype(0, levels)
    stochastic = rounding == "stochastic"

    def init(x):
        del x
        return jnp.asarray(alpha_init, jnp.float32)

    def _codes(x, alpha, key):
        y = jnp.clip(x.astype(jnp.float32), 0.0, alpha)
        return jnp.clip(rnd.round_to_int(y * (levels / alpha), key if stochastic else None), 0, levels)

    def quantize(x, alpha, key=None) -> QTensor:
        check_float(x, f"{where}.quantize")
        alpha = jnp.maximum(jnp.asarray(alpha, jnp.float32), _MIN_PARAM)
        return QTensor(_codes(x, alpha, key).astype(dtype), alpha / levels)

    def dequantize(q: QTensor):
        return q.codes.astype(jnp.float32) * q.scale

    @jax.custom_vjp
    def _fq(x, alpha, key):
        a = jnp.maximum(alpha, _MIN_PARAM)
        return (_codes(x, a, key) * (a / levels)).astype(x.dtype)

    def _fwd(x, alpha, key):
        return _fq(x, alpha, key), (x, alpha)

    def _bwd(res, g):
        x, alpha = res
        gf = g.astype(jnp.float32)
        xf = x.astype(jnp.float32)
        gx = jnp.where((xf >= 0) & (xf < alpha), gf, 0.0).astype(g.dtype)
        ga = jnp.sum(jnp.where(xf >= alpha, gf, 0.0)).astype(alpha.dtype).reshape(jnp.shape(alpha))
        return gx, ga, None

    _fq.defvjp(_fwd, _bwd)

    def fake_quant(x, alpha, key=None):
        check_float(x, f"{where}.fake_quant")
        return _fq(x, jnp.asarray(alpha, jnp.float32), key)

    return LearnedQuantizer(init, quantize, dequantize, fake_quant, bits, f"pact{bits}/{rounding}", "alpha", stochastic)
