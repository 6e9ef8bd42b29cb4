"""Natural compression: unbiased random rounding to a power of two (Horvath et al. 2019).

Horvath, Ho, Horvath, Sahu, Canini, Richtarik, "Natural Compression for
Distributed Deep Learning", 2019. For ``t != 0`` with ``2^a <= |t| < 2^(a+1)``::

    C(t) = sign(t) 2^a       with probability (2^(a+1) - |t|) / 2^a,
           sign(t) 2^(a+1)   with probability (|t| - 2^a) / 2^a,

and ``C(0) = 0``. ``E[C(t)] = t`` and ``E[C(t)^2] <= (9/8) t^2`` (the worst
case is ``|t| = (4/3) 2^a``). Exact powers of two are unchanged.

Every output is a float32 with a zero mantissa, so it travels as 9 bits: the
sign bit and the 8-bit exponent field. The rounding works on those fields:
``low`` is ``|t|`` with its mantissa cleared, ``high`` the next exponent, and
the probability of ``high`` is the cleared mantissa over the gap, which is
exact in float32. Two edge cases keep the 9-bit code honest:

* subnormals (``|t| < 2^-126``) round between 0 and ``2^-126`` with the same
  unbiased rule (``low = 0``); a backend that flushes subnormals to zero
  sends them as 0;
* ``|t| >= 2^127`` rounds down to ``2^127`` (``2^128`` is not a float32), the
  only biased case; inf stays inf, and NaN is sent as inf of its sign (the
  9-bit code has no mantissa).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxqfl.compress.base import Codec, leafwise, numel
from jaxqfl.quant.rounding import round_stochastic

NATURAL_BITS = 9  # sign bit + 8 exponent bits of a float32
_EXPONENT_ONE = 1 << 23
_EXPONENT_MAX_FINITE = 254


class NaturalMessage(NamedTuple):
    """One tensor: ``(sign << 8) | exponent_field`` of the rounded float32, per coordinate."""

    codes: jax.Array  # uint16 in [0, 511], shape of the tensor


def _round_up_probability(x: jax.Array):
    """For float32 ``x``: P(round |x| up to the next power of two), and the rounded-down word."""
    word = jax.lax.bitcast_convert_type(x, jnp.uint32)
    magnitude_word = word & jnp.uint32(0x7FFFFFFF)
    exponent = magnitude_word >> 23
    low_word = magnitude_word & jnp.uint32(0x7F800000)  # mantissa cleared
    low = jax.lax.bitcast_convert_type(low_word, jnp.float32)
    high = jax.lax.bitcast_convert_type(low_word + jnp.uint32(_EXPONENT_ONE), jnp.float32)
    can_round_up = exponent < _EXPONENT_MAX_FINITE
    gap = jnp.where(can_round_up, high - low, 1.0)
    p_up = jnp.where(can_round_up, (jnp.abs(x) - low) / gap, 0.0)
    return p_up, (word, low_word)


def _rounded(up: jax.Array, aux) -> jax.Array:
    """The power of two (as a float32 word) after the draw ``up`` in {0, 1}."""
    word, low_word = aux
    # inf and NaN (exponent field 255) have p_up = 0 and keep the field without the
    # mantissa: NaN is sent as inf.
    rounded_word = jnp.where(up > 0, low_word + jnp.uint32(_EXPONENT_ONE), low_word)
    return rounded_word | (word & jnp.uint32(0x80000000))


def natural_round(x: jax.Array, key: jax.Array) -> jax.Array:
    """``C(x)``: unbiased stochastic rounding of float32 ``x`` to a signed power of two (or 0)."""
    x = jnp.asarray(x, jnp.float32)
    p_up, aux = _round_up_probability(x)
    return jax.lax.bitcast_convert_type(_rounded(round_stochastic(p_up, key), aux), jnp.float32)


def natural() -> Codec:
    """Natural compression ``C_nat`` per coordinate.

    Bits per tensor of ``n`` elements: ``9 n`` (sign + 8-bit exponent; no
    scale). Unbiased, ``E[C(t)^2] <= 9/8 t^2``. No integer-domain aggregation
    (no common grid); the server sums the floats.
    """

    def prepare_leaf(x):
        return _round_up_probability(x.astype(jnp.float32))

    def encode_leaf(up, aux):
        word = _rounded(up, aux)
        code = ((word >> 31) << 8) | ((word >> 23) & jnp.uint32(0xFF))
        return NaturalMessage(code.astype(jnp.uint16))

    def decode_leaf(m):
        code = m.codes.astype(jnp.uint32)
        word = ((code >> 8) << 31) | ((code & jnp.uint32(0xFF)) << 23)
        return jax.lax.bitcast_convert_type(word, jnp.float32)

    def leaf_bits(m):
        return NATURAL_BITS * numel(m.codes)

    return leafwise(encode_leaf, decode_leaf, leaf_bits, NaturalMessage, prepare_leaf=prepare_leaf)
