"""TernGrad: ternary gradients scaled by the max-norm (Wen et al. 2017).

Wen, Xu, Yan, Wu, Wang, Chen, Li, "TernGrad: Ternary Gradients to Reduce
Communication in Distributed Deep Learning", NeurIPS 2017, Eq. (4)-(5), per
tensor (layer-wise)::

    s_t = ||g||_inf,   b_i ~ Bernoulli(|g_i| / s_t),   g~_i = s_t * sign(g_i) * b_i.

``E[g~] = g`` and, per coordinate, ``E[(g~_i - g_i)^2] = s_t |g_i| - g_i^2``,
hence ``E||g~ - g||^2 = ||g||_inf ||g||_1 - ||g||_2^2`` exactly.

The paper's optional gradient clipping (to ``c * sigma`` before ternarizing)
is not part of this codec; clip the update before encoding if you want it.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxqfl.compress.base import FLOAT_BITS, Codec, leafwise, numel, round_stochastic_all, to_bits_scalar
from jaxqfl.compress.integer_sum import IntegerSum

TERNARY_BITS = 2  # {-1, 0, +1} at fixed width


class TernGradMessage(NamedTuple):
    """One tensor: ternary codes ``sign(g) b`` in {-1, 0, 1} and the scalar ``s_t``."""

    codes: jax.Array  # int8, shape of the tensor
    scale: jax.Array  # float32 scalar s_t = max |g|


def _probability(x, scale):
    """``|x| / scale`` in ``[0, 1]`` (0 where the scale is 0): rounding it stochastically draws ``b``."""
    safe_scale = jnp.where(scale > 0, scale, 1.0)
    return jnp.clip(jnp.abs(x) / safe_scale, 0.0, 1.0)


def _signed(b, x):
    return jnp.where(x < 0, -b, b)


def terngrad() -> Codec:
    """TernGrad ternarization, one scale ``s_t = ||g||_inf`` per tensor.

    Bits per tensor of ``n`` elements: ``2 n + 32`` (a 2-bit ternary code per
    coordinate, the float32 ``s_t``).

    Unbiased. Integer-domain aggregation: yes (``codec.integer_sum``), the
    paper's "scaler sharing": the cohort shares ``s = max_i s_t,i`` per tensor,
    codes are in ``{-1, 0, 1}`` and ``sum_i w_i decode_i = s * sum_i w_i code_i``.
    """

    def prepare_leaf(x):
        x = x.astype(jnp.float32)
        scale = jnp.max(jnp.abs(x))
        return _probability(x, scale), (x, scale)

    def encode_leaf(b, aux):
        x, scale = aux
        return TernGradMessage(_signed(b, x).astype(jnp.int8), scale)

    def decode_leaf(m):
        return m.codes.astype(jnp.float32) * m.scale

    def leaf_bits(m):
        return TERNARY_BITS * numel(m.codes) + FLOAT_BITS * numel(m.scale)

    def scale_stats(delta):
        return jax.tree.map(lambda x: jnp.max(jnp.abs(jnp.asarray(x, jnp.float32))), delta)

    def quantize(delta, shared_scale, key):
        leaves, treedef = jax.tree.flatten(delta)
        scales = treedef.flatten_up_to(shared_scale)
        leaves = [jnp.asarray(x, jnp.float32) for x in leaves]
        drawn = round_stochastic_all([_probability(x, s) for x, s in zip(leaves, scales)], key)
        return jax.tree.unflatten(treedef, [_signed(b, x).astype(jnp.int32) for b, x in zip(drawn, leaves)])

    def dequantize_sum(code_sum, shared_scale, total_weight):
        del total_weight
        return jax.tree.map(lambda c, s: c.astype(jnp.float32) * s, code_sum, shared_scale)

    def integer_bits(codes):
        return to_bits_scalar(sum(TERNARY_BITS * numel(c) + FLOAT_BITS for c in jax.tree.leaves(codes)))

    integer_sum = IntegerSum(scale_stats, quantize, dequantize_sum, 1, integer_bits)
    return leafwise(encode_leaf, decode_leaf, leaf_bits, TernGradMessage, prepare_leaf=prepare_leaf,
                    integer_sum=integer_sum)
