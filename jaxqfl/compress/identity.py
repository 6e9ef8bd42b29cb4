"""The identity codec: updates travel as raw floats."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxqfl.compress.base import Codec, no_state, numel, to_bits_scalar


def identity() -> Codec:
    """No compression: the message is the update itself.

    Bits: ``sum over tensors of n * w``, with ``w`` the float width of the
    tensor's dtype (32 for float32), so ``32 n`` for a float32 model.

    Stateless; ``decode`` returns the message unchanged. Aggregation is a float
    sum (there are no integer codes).
    """

    def encode(delta, state, key):
        del key
        return jax.tree.map(jnp.asarray, delta), state

    def decode(message):
        return message

    def bits(message):
        return to_bits_scalar(
            sum(numel(x) * jnp.dtype(x.dtype).itemsize * 8 for x in jax.tree.leaves(message))
        )

    return Codec(init=no_state, encode=encode, decode=decode, bits=bits)
