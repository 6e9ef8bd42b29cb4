"""Scaled sign compression with a majority-vote finalize (signSGD).

Bernstein, Wang, Azizzadenesheli, Anandkumar, "signSGD: Compressed
Optimisation for Non-Convex Problems", ICML 2018 (sign compression and the
majority vote of Sec. 3), and Karimireddy, Rebjock, Stich, Jaggi, "Error
Feedback Fixes SignSGD and other Gradient Compression Schemes", ICML 2019
(the scaled sign ``C(x) = (||x||_1 / n) sign(x)``, the one to pair with error
feedback).

Per tensor of ``n`` elements::

    encode:    bit_i = [x_i >= 0],   scale = ||x||_1 / n
    decode:    x^_i = scale * (+1 if bit_i else -1)
    finalize:  m -> (||m||_1 / n) * sign(m)      (m: weighted mean of the x^)

Conventions for zero:

* On the wire, ``sign(0) = +1``: one bit cannot say 0, and ``x_i >= 0`` sends
  ``+1`` (also for ``-0.0``). An all-zero tensor has ``scale = 0`` and still
  decodes to exactly 0.
* In the vote, ``sign(0) = 0``: a coordinate whose (weighted) votes cancel
  exactly is not moved.

The vote is weighted by each client's scale (``m`` is the mean of the scaled
signs) and its result is rescaled to the aggregate's mean magnitude, so that
``finalize`` is the same scaled-sign compressor applied to the aggregate: it
returns ``m`` itself when every client agrees on every sign with one scale,
and a server learning rate of 1 keeps FedAvg's step size.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxqfl.compress.base import FLOAT_BITS, Codec, leafwise, numel


class SignMessage(NamedTuple):
    """One tensor: sign bits (True = +) and the float32 scale ``||x||_1 / n``."""

    positive: jax.Array  # bool, shape of the tensor
    scale: jax.Array  # float32 scalar


def majority_vote(mean_of_decoded):
    """``(||m||_1 / n) sign(m)`` per tensor; a tied coordinate (``m_i = 0``) gets 0."""

    def leaf(m):
        m = jnp.asarray(m, jnp.float32)
        return jnp.mean(jnp.abs(m)) * jnp.sign(m)

    return jax.tree.map(leaf, mean_of_decoded)


def sign() -> Codec:
    """Scaled sign (``(||x||_1 / n) sign(x)`` per tensor) with a majority-vote ``finalize``.

    Bits per tensor of ``n`` elements: ``n + 32`` (one sign bit per
    coordinate, the float32 scale).

    Biased (pair it with ``error_feedback``). No integer-domain aggregation:
    client scales differ, so the vote is taken on the floats.
    """

    def encode_leaf(x):
        x = x.astype(jnp.float32)
        return SignMessage(x >= 0, jnp.mean(jnp.abs(x)))

    def decode_leaf(m):
        return jnp.where(m.positive, m.scale, -m.scale)

    def leaf_bits(m):
        return numel(m.positive) + FLOAT_BITS * numel(m.scale)

    return leafwise(encode_leaf, decode_leaf, leaf_bits, SignMessage, finalize=majority_vote)
