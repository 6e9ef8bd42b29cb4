"""Randomized Hadamard rotation before quantizing (Suresh et al. 2017, Sec. 4).

Suresh, Yu, Kumar, McMahan, "Distributed Mean Estimation with Limited
Communication", ICML 2017: rotating a vector by ``R = H D / sqrt(m)`` (``H``
the ``m x m`` Sylvester-Hadamard matrix, ``D`` a diagonal of random signs)
spreads its energy evenly over the coordinates, so ``max - min`` (and the
max-norm) shrink to ``O(sqrt(log m / m)) ||x||`` with high probability and a
quantizer of the rotated vector errs less. ``R`` is orthogonal and
``R^-1 = D H / sqrt(m)``, computed with the fast Walsh-Hadamard transform in
``O(m log m)``.

Each tensor is flattened and zero-padded to ``m`` coordinates: the next power
of two (``block_size=None``), or a multiple of ``block_size`` with every block
rotated on its own (less padding, less mixing). The inner codec encodes the
rotated 1-D vectors of length ``m``; padding is real signal after the
rotation, so the inner codec's bits count all ``m`` coordinates.

The signs: the client draws a 32-bit seed from ``purpose_key(key, ROTATION)``,
the message carries it (32 bits per message), and both ends draw all tensors'
signs from ``keys.seed_key(seed)`` in one call (:func:`rotation_signs`). The
server therefore needs nothing but the message. The inner codec encodes with
``purpose_key(key, INNER)`` (``jaxqfl.keys``: sub-keys in their own domain).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxqfl import keys
from jaxqfl.compress.base import (
    SEED_BITS,
    Codec,
    draw_seed,
    inner_bits,
    key_from_seed,
    split_flat,
    to_bits_scalar,
)



@dataclasses.dataclass(frozen=True)
class HadamardMessage:
    """The rotation's 32-bit ``seed``, the ``inner`` codec's message, and the original shapes (static)."""

    seed: jax.Array  # uint32 scalar
    inner: Any  # the inner codec's message for the rotated update
    shapes: tuple = dataclasses.field(metadata=dict(static=True))  # tensors' shapes, in flatten order


jax.tree_util.register_dataclass(HadamardMessage, data_fields=["seed", "inner"], meta_fields=["shapes"])


def fwht(x: jax.Array) -> jax.Array:
    """Orthonormal fast Walsh-Hadamard transform over the last axis (a power of two).

    Equals ``x @ H / sqrt(m)`` with ``H`` the Sylvester-ordered Hadamard matrix;
    it is its own inverse.
    """
    m = x.shape[-1]
    if m & (m - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {m}")
    lead = x.shape[:-1]
    h = 1
    while h < m:
        pairs = x.reshape(lead + (m // (2 * h), 2, h))
        a, b = pairs[..., 0, :], pairs[..., 1, :]
        x = jnp.stack([a + b, a - b], axis=-2).reshape(lead + (m,))
        h *= 2
    return x * (1.0 / math.sqrt(m))


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def rotated_layout(n: int, block_size: Optional[int]) -> tuple:
    """``(num_blocks, block)`` of the rotation of ``n`` coordinates; ``m = num_blocks * block``."""
    if block_size is None:
        return 1, _next_power_of_two(n)
    return math.ceil(n / block_size), block_size


def rotate(x: jax.Array, signs: jax.Array, block_size: Optional[int] = None) -> jax.Array:
    """``H D x / sqrt(block)`` per block: ``x`` flattened and zero-padded to ``m``; float32 ``[m]``.

    ``signs`` is the ``[m]`` diagonal of ``D`` (entries +-1).
    """
    flat = jnp.asarray(x, jnp.float32).reshape(-1)
    num_blocks, block = rotated_layout(flat.size, block_size)
    m = num_blocks * block
    flat = jnp.pad(flat, (0, m - flat.size))
    return fwht((signs * flat).reshape(num_blocks, block)).reshape(m)


def unrotate(y: jax.Array, signs: jax.Array, shape: tuple, block_size: Optional[int] = None) -> jax.Array:
    """Inverse of :func:`rotate`: ``D H y / sqrt(block)``, padding dropped, ``shape`` restored."""
    n = math.prod(shape)
    num_blocks, block = rotated_layout(n, block_size)
    m = num_blocks * block
    flat = signs * fwht(y.reshape(num_blocks, block)).reshape(m)
    return flat[:n].reshape(shape)


def rotation_signs(seed: jax.Array, sizes: Sequence[int], block_size: Optional[int]) -> list:
    """Every tensor's ``[m]`` random signs from a message seed, in one draw on ``key(seed)``."""
    lengths = [math.prod(rotated_layout(n, block_size)) for n in sizes]
    signs = jax.random.rademacher(key_from_seed(seed), (sum(lengths),), jnp.float32)
    return split_flat(signs, [(m,) for m in lengths])


def hadamard(inner: Optional[Codec] = None, *, block_size: Optional[int] = None):
    """Rotate every tensor by a random Hadamard rotation, then encode it with ``inner``.

    Args:
      inner: the codec of the rotated update. When omitted, returns a wrapper
        (``Codec -> Codec``) for :func:`~jaxqfl.compress.chain`.
      block_size: a power of two >= 2 to rotate blocks of that size; ``None``
        rotates each whole tensor padded to the next power of two.

    Bits: ``32 + inner bits`` of the rotated update (one seed per message;
    the inner codec sees tensors of ``m`` coordinates, ``m`` the padded size).

    State: the inner codec's (initialised on the rotated shapes). ``finalize``
    is the inner codec's, applied in the original coordinates. Decoding
    inverts the rotation exactly up to float rounding. No integer-domain
    aggregation (each client has its own rotation).
    """
    if block_size is not None:
        ok = isinstance(block_size, numbers.Integral) and not isinstance(block_size, bool)
        if not ok or block_size < 2 or block_size & (block_size - 1):
            raise ValueError(f"hadamard block_size must be a power of two >= 2 or None, got {block_size!r}")
        block_size = int(block_size)
    if inner is None:
        return functools.partial(hadamard, block_size=block_size)
    if not isinstance(inner, Codec):
        raise TypeError(f"hadamard wraps a Codec, got {type(inner).__name__}")

    def rotated_zeros(params):
        def leaf(p):
            num_blocks, block = rotated_layout(math.prod(jnp.shape(p)), block_size)
            return jnp.zeros((num_blocks * block,), jnp.float32)

        return jax.tree.map(leaf, params)

    def init(params):
        return inner.init(rotated_zeros(params))

    def encode(delta, state, key):
        seed = draw_seed(keys.purpose_key(key, keys.ROTATION))
        leaves, treedef = jax.tree.flatten(delta)
        signs = rotation_signs(seed, [math.prod(jnp.shape(x)) for x in leaves], block_size)
        rotated = [rotate(x, d, block_size) for x, d in zip(leaves, signs)]
        inner_message, state = inner.encode(
            jax.tree.unflatten(treedef, rotated), state, keys.purpose_key(key, keys.INNER))
        shapes = tuple(tuple(jnp.shape(x)) for x in leaves)
        return HadamardMessage(seed, inner_message, shapes), state

    def decode(message):
        leaves, treedef = jax.tree.flatten(inner.decode(message.inner))
        signs = rotation_signs(message.seed, [math.prod(s) for s in message.shapes], block_size)
        restored = [unrotate(y, d, s, block_size) for y, d, s in zip(leaves, signs, message.shapes)]
        return jax.tree.unflatten(treedef, restored)

    def bits(message):
        return to_bits_scalar(SEED_BITS + inner_bits(inner.bits, message.inner))

    return Codec(init=init, encode=encode, decode=decode, bits=bits, finalize=inner.finalize)
