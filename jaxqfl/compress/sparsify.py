"""Sparsification: send k coordinates of each tensor (top-k, random-k).

* top-k (Aji & Heafield 2017, "Sparse Communication for Distributed Gradient
  Descent"; Stich, Cordonnier, Jaggi 2018, "Sparsified SGD with Memory"):
  keep the ``k`` coordinates of largest magnitude. Biased; pair it with
  ``error_feedback``.
* random-k (Stich et al. 2018; Wangni et al. 2018): keep ``k`` coordinates
  drawn uniformly without replacement. With ``unbiased=True`` (the default)
  the kept values are scaled by ``n / k`` so ``E[decode] = x`` (variance
  ``(n/k - 1) ||x||^2``); with ``unbiased=False`` they are sent as they are
  (``E[decode] = (k/n) x``, the form to pair with error feedback).

``k`` is static per tensor: ``ceil(fraction * n)`` (at least 1, at most n), or
a fixed count given as ``k=``; a count larger than a tensor raises
``ValueError`` when the codec meets the params (``init``, or the first trace
of ``encode``). Sparsity is per tensor, not global over the model, so every
shape stays static.
"""
from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from jaxqfl.compress.base import (
    FLOAT_BITS,
    SEED_BITS,
    Codec,
    check_fraction,
    check_positive_int,
    draw_seed,
    index_bits,
    key_from_seed,
    leafwise,
    numel,
    split_flat,
    to_bits_scalar,
)


@dataclasses.dataclass(frozen=True)
class SparseMessage:
    """One tensor, top-k: the kept ``values`` and their flat ``indices``; ``shape`` is static."""

    values: jax.Array  # float32 [k]
    indices: jax.Array  # int32 [k], row-major positions in the tensor
    shape: tuple = dataclasses.field(metadata=dict(static=True))


@dataclasses.dataclass(frozen=True)
class RandomValues:
    """One tensor, random-k: the kept ``values``; positions come from the message seed."""

    values: jax.Array  # float32 [k]
    shape: tuple = dataclasses.field(metadata=dict(static=True))


jax.tree_util.register_dataclass(SparseMessage, data_fields=["values", "indices"], meta_fields=["shape"])
jax.tree_util.register_dataclass(RandomValues, data_fields=["values"], meta_fields=["shape"])


class RandKMessage(NamedTuple):
    """A whole update, random-k: one 32-bit ``seed`` and the per-tensor values."""

    seed: jax.Array  # uint32 scalar
    values: Any  # pytree shaped like the update, RandomValues at the leaves


class SparsityLevel(NamedTuple):
    """How many coordinates a tensor keeps: a fraction or a fixed count (exactly one is set)."""

    fraction: Optional[float]
    count: Optional[int]

    def k(self, n: int, codec_name: str) -> int:
        """The static ``k`` for a tensor of ``n`` elements."""
        if self.count is not None:
            if self.count > n:
                raise ValueError(
                    f"{codec_name}: k={self.count} exceeds a tensor of {n} elements; "
                    f"use a fraction (e.g. {codec_name}(fraction=...)) or k <= {n}"
                )
            return self.count
        # exact: the fraction as the decimal it was written as (0.07 -> 7/100), not its binary float
        # (0.07 * 100 = 7.000000000000001 in floating point, whose ceil would keep 8)
        return min(n, max(1, math.ceil(Fraction(repr(float(self.fraction))) * n)))

    def check(self, params, codec_name: str) -> None:
        for x in jax.tree.leaves(params):
            self.k(numel(x), codec_name)


def _sparsity(codec_name: str, fraction, k) -> SparsityLevel:
    if (fraction is None) == (k is None):
        raise ValueError(f"{codec_name}: give exactly one of fraction (in (0, 1]) or k (a count >= 1), "
                         f"got fraction={fraction!r}, k={k!r}")
    if fraction is not None:
        return SparsityLevel(check_fraction(f"{codec_name} fraction", fraction), None)
    return SparsityLevel(None, check_positive_int(f"{codec_name} k", k, low=1))


def _scatter(values, indices, shape):
    n = math.prod(shape)
    return jnp.zeros((n,), jnp.float32).at[indices].set(values).reshape(shape)


def topk(fraction: Optional[float] = None, *, k: Optional[int] = None) -> Codec:
    """Top-k sparsification by magnitude, per tensor.

    Args:
      fraction: keep ``k = ceil(fraction * n)`` coordinates of a tensor of
        ``n`` elements, ``0 < fraction <= 1``.
      k: or keep exactly ``k`` per tensor (every tensor needs ``n >= k``).

    Bits per tensor: ``32 k + min(k * ceil(log2 n), n)``: the float32 values
    plus their positions, sent as fixed-width indices or as an ``n``-bit
    bitmap, whichever is smaller (both are static, so both ends know which).

    Ties in magnitude keep the lower index. Biased; no integer-domain
    aggregation (clients keep different coordinates).
    """
    level = _sparsity("topk", fraction, k)

    def init(params):
        level.check(params, "topk")
        return ()

    def encode_leaf(x):
        flat = x.reshape(-1).astype(jnp.float32)
        kk = level.k(flat.size, "topk")
        _, indices = jax.lax.top_k(jnp.abs(flat), kk)
        return SparseMessage(flat[indices], indices.astype(jnp.int32), tuple(x.shape))

    def decode_leaf(m):
        return _scatter(m.values, m.indices, m.shape)

    def leaf_bits(m):
        n, kk = math.prod(m.shape), numel(m.values)
        return FLOAT_BITS * kk + min(kk * index_bits(n), n)

    return leafwise(encode_leaf, decode_leaf, leaf_bits, SparseMessage, init=init)


def randk(fraction: Optional[float] = None, *, k: Optional[int] = None, unbiased: bool = True) -> Codec:
    """Random-k sparsification, per tensor; positions derived from a 32-bit seed in the message.

    Args:
      fraction / k: as in :func:`topk`.
      unbiased: scale the kept values by ``n / k`` (``E[decode] = x``).

    Bits per message: ``32 + sum over tensors of 32 k``: the float32 values
    and one uint32 seed from which both ends draw every tensor's positions, so
    no index is sent. The positions of a tensor of ``n`` elements are those of
    the ``k`` largest of ``n`` uniform 32-bit draws (all tensors' draws come
    from one call on ``key(seed)``): a uniform ``k``-subset, up to ties among
    32-bit draws (broken by the lower index), which only matter at the k-th
    place.

    No integer-domain aggregation.
    """
    level = _sparsity("randk", fraction, k)
    if not isinstance(unbiased, bool):
        raise ValueError(f"randk unbiased must be True or False, got {unbiased!r}")

    def all_positions(seed, sizes):
        """Every tensor's kept positions: the k largest of n uniform 32-bit draws (one draw call)."""
        draws = split_flat(jax.random.bits(key_from_seed(seed), (sum(sizes),), jnp.uint32),
                           [(n,) for n in sizes])
        return [jax.lax.top_k(d, level.k(n, "randk"))[1] for d, n in zip(draws, sizes)]

    def init(params):
        level.check(params, "randk")
        return ()

    def encode(delta, state, key):
        seed = draw_seed(key)
        leaves, treedef = jax.tree.flatten(delta)
        flats = [jnp.asarray(x, jnp.float32).reshape(-1) for x in leaves]
        out = []
        for x, flat, kept in zip(leaves, flats, all_positions(seed, [f.size for f in flats])):
            values = flat[kept]
            if unbiased:
                values = values * (flat.size / kept.size)
            out.append(RandomValues(values, tuple(jnp.shape(x))))
        return RandKMessage(seed, jax.tree.unflatten(treedef, out)), state

    def is_values(node):
        return isinstance(node, RandomValues)

    def decode(message):
        leaves, treedef = jax.tree.flatten(message.values, is_leaf=is_values)
        kept = all_positions(message.seed, [math.prod(m.shape) for m in leaves])
        out = [_scatter(m.values, idx, m.shape) for m, idx in zip(leaves, kept)]
        return jax.tree.unflatten(treedef, out)

    def bits(message):
        leaves = jax.tree.leaves(message.values, is_leaf=is_values)
        return to_bits_scalar(SEED_BITS + sum(FLOAT_BITS * numel(m.values) for m in leaves))

    return Codec(init=init, encode=encode, decode=decode, bits=bits)
