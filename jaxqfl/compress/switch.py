"""One codec per client, chosen by a traced index: what a tier of clients sends.

``switch(codecs, index)`` is a codec that encodes with ``codecs[index]`` for a
traced integer ``index`` (a client's tier, inside the engine's vmap over
clients). Every codec encodes and the decoded update and bit count of the
chosen one are kept (``jnp.select``): under ``vmap`` a batched index selects per
client, which XLA cannot do by branching, so the cost is the sum of the codecs'
encode costs (codecs are cheap next to local training; the exact bit count is
the chosen codec's). ``None`` in ``codecs`` is the float32 update (``identity``).

State: a tuple with one slot per codec; codec ``i`` reads and writes slot ``i``
only, so a client keeps its own codec's state (an error-feedback residual) and
the other slots stay as they are.

Not switchable: a codec whose ``finalize`` is not the identity (``sign``'s
majority vote is taken over the whole cohort, which a mixed cohort does not
send) and integer-domain sums (the cohort shares no grid). Both are refused
when the switch is built.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from jaxqfl.compress.base import Codec, _identity
from jaxqfl.compress.identity import identity


def switchable(codecs: Sequence[Optional[Codec]], names: Sequence[str] | None = None) -> tuple:
    """The codecs with ``None`` as ``identity()``; refuses a codec with a cohort-wide ``finalize``."""
    out = []
    for i, c in enumerate(codecs):
        c = identity() if c is None else c
        if c.finalize is not _identity:
            name = names[i] if names is not None else f"codec {i}"
            raise ValueError(f"{name} finalizes over the whole cohort (sign's majority vote); clients with "
                             f"different codecs cannot use it: choose another codec for that tier")
        out.append(c)
    return tuple(out)


def switch(codecs: Sequence[Optional[Codec]], index) -> Codec:
    """The codec ``codecs[index]`` for a traced int32 ``index`` (module docstring)."""
    codecs = switchable(codecs)

    def init(params):
        return tuple(c.init(params) for c in codecs)

    def encode(delta, states, key):
        messages, new_states = [], []
        for i, c in enumerate(codecs):
            message, state = c.encode(delta, states[i], key)
            messages.append(message)
            new_states.append(jax.tree.map(lambda new, old, i=i: jnp.where(index == i, new, old), state, states[i]))
        return tuple(messages), tuple(new_states)

    def pick(values):  # a chain of selects: a non-chosen codec's inf or NaN never reaches the result
        def leaf(*leaves):
            out = leaves[0]
            for i, v in enumerate(leaves[1:], start=1):
                out = jnp.where(index == i, v, out)
            return out

        return jax.tree.map(leaf, *values)

    def decode(messages):
        decoded = [jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), c.decode(m)) for c, m in zip(codecs, messages)]
        return pick(decoded)

    def bits(messages):
        return pick([jnp.asarray(c.bits(m), jnp.int32) for c, m in zip(codecs, messages)])

    return Codec(init=init, encode=encode, decode=decode, bits=bits)

