"""Natural compression: unbiased random rounding to a power of two (Horvath et al. 2019).

Horvath, Ho, Horvath, Sahu, Canini, Richtarik, "Natural Compression for
Distributed Deep Learning", 2019. For ``t != 0`` with ``2^a <= |t| < 2^(a+1)``::

    C(t) = sign(t) 2^a       with probability (2^(a+1) - |t|) / 2^a,
           sign(t) 2^(a+1)   with probability (|t| - 2^a) / 2^a,

and ``C(0) = 0``. ``E[C(t)] = t`` and ``E[C(t)^2] <= (9/8) t^2`` (the worst
case is ``|t| = (4/3) 2^a``). Exact powers of two are unchanged. The rounding
is :func:`jaxqfl.quant.rounding.round_pow2`, applied to all tensors of a
message at once (one draw).

Every output is a float32 with a zero mantissa, so it travels as 9 bits: the
sign bit and the 8-bit float32 exponent field ``f`` (``f = 0`` is zero,
``f = a + 127`` for ``2^a``). Edge cases of that code:

* ``|t| < 2^-126`` (subnormal) is sent as 0: the field has no room for
  subnormal powers of two. Biased, by less than ``2^-126`` per coordinate.
* a result of ``2^128`` (``|t| > 2^127``) is sent as ``2^127``; inf stays inf
  and NaN is sent as inf (no mantissa).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxqfl.compress.base import Codec, concat_flat, no_state, numel, split_flat, to_bits_scalar
from jaxqfl.quant.rounding import round_pow2

NATURAL_BITS = 9  # sign + 8-bit exponent field of a float32
_BIAS = 127
_MIN_EXPONENT, _MAX_EXPONENT = -126, 127  # normal float32 powers of two
_INF_FIELD = 255


class NaturalMessage(NamedTuple):
    """One tensor: ``(sign << 8) | exponent_field`` per coordinate."""

    codes: jax.Array  # uint16 in [0, 511], shape of the tensor


def _natural_codes(x: jax.Array, key: jax.Array) -> jax.Array:
    """9-bit codes of ``C(x)`` for float32 ``x`` (any shape)."""
    finite = jnp.isfinite(x)
    nonzero = (x != 0) & finite
    exponent = round_pow2(jnp.where(nonzero, x, 1.0), key)
    sent = nonzero & (exponent >= _MIN_EXPONENT)
    field = jnp.where(sent, jnp.clip(exponent, _MIN_EXPONENT, _MAX_EXPONENT) + _BIAS, 0)
    field = jnp.where(finite, field, _INF_FIELD)
    negative = jnp.signbit(x).astype(jnp.int32)
    return ((negative << 8) | field).astype(jnp.uint16)


def _natural_values(codes: jax.Array) -> jax.Array:
    """float32 values of 9-bit codes: ``sign * 2^(field - 127)``, 0 for field 0, inf for 255."""
    code = codes.astype(jnp.uint32)
    word = ((code >> 8) << 31) | ((code & jnp.uint32(0xFF)) << 23)
    return jax.lax.bitcast_convert_type(word, jnp.float32)


def natural() -> Codec:
    """Natural compression ``C_nat`` per coordinate.

    Bits per tensor of ``n`` elements: ``9 n`` (sign + 8-bit exponent; no
    scale). Unbiased, ``E[C(t)^2] <= 9/8 t^2``. No integer-domain aggregation
    (no common grid); the server sums the floats.
    """

    def is_leaf_message(node):
        return isinstance(node, NaturalMessage)

    def encode(delta, state, key):
        leaves, treedef = jax.tree.flatten(delta)
        leaves = [jnp.asarray(x, jnp.float32) for x in leaves]
        codes = split_flat(_natural_codes(concat_flat(leaves), key), [x.shape for x in leaves])
        return jax.tree.unflatten(treedef, [NaturalMessage(c) for c in codes]), state

    def decode(message):
        return jax.tree.map(lambda m: _natural_values(m.codes), message, is_leaf=is_leaf_message)

    def bits(message):
        leaves = jax.tree.leaves(message, is_leaf=is_leaf_message)
        return to_bits_scalar(sum(NATURAL_BITS * numel(m.codes) for m in leaves))

    return Codec(init=no_state, encode=encode, decode=decode, bits=bits)
