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

A traced fraction (one compiled program for several fractions, e.g. a sweep
``--uplink topk:0.01,topk:0.1,topk:0.5``): ``topk(fraction, choices=(0.01,
0.1, 0.5))`` takes ``fraction`` as a traced float32 scalar equal to one of the
static ``choices``. Per tensor of ``n`` elements the host computes each
choice's exact ``k_i = ceil(c_i n)`` (as above), the message keeps the static
container of ``k_max = max_i k_i`` entries, and the traced ``k`` is read from
the table ``(k_i)`` at the choice nearest to the traced fraction (no float
``ceil`` inside the program). Entries past rank ``k`` carry the value 0 (and,
for top-k, their index), so decode and the traced ``bits(message)`` (an
int32) equal the static codec's of that ``k``. The cost: every member sends
``k_max``-long containers through the program and runs ``top_k(., k_max)``.
"""
from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxqfl.compress.base import (
    FLOAT_BITS,
    SEED_BITS,
    Codec,
    bounded_total,
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

    def k_max(self, n: int, codec_name: str) -> int:
        """The length of a tensor's containers: ``k`` itself (nothing is traced)."""
        return self.k(n, codec_name)

    def scale(self, n: int, codec_name: str) -> float:
        """The unbiased random-k scale ``n / k``."""
        return n / self.k(n, codec_name)

    def check(self, params, codec_name: str) -> None:
        for x in jax.tree.leaves(params):
            self.k(numel(x), codec_name)


class SparsityChoices(NamedTuple):
    """A fraction that is one of static ``choices``, possibly traced: ``choices[index]``.

    ``index`` is a Python int (the fraction was a Python float) or a traced int32 scalar
    (the choice nearest to the traced fraction). A tensor of ``n`` elements keeps
    ``k = (k_0, ..., k_m)[index]`` coordinates, ``k_i = SparsityLevel(choices[i]).k(n)``,
    in containers of ``k_max = max_i k_i``.
    """

    choices: tuple
    index: Any

    def table(self, n: int, codec_name: str) -> tuple:
        """Every choice's exact static ``k_i`` for a tensor of ``n`` elements."""
        return tuple(SparsityLevel(c, None).k(n, codec_name) for c in self.choices)

    def _pick(self, table: tuple, dtype):
        if isinstance(self.index, int):
            return table[self.index]
        return jnp.asarray(table, dtype)[self.index]

    def k(self, n: int, codec_name: str):
        """``k`` of the chosen fraction: a Python int, or a traced int32 read from :meth:`table`."""
        return self._pick(self.table(n, codec_name), jnp.int32)

    def k_max(self, n: int, codec_name: str) -> int:
        """The length of a tensor's containers: ``max_i k_i`` (static)."""
        return max(self.table(n, codec_name))

    def scale(self, n: int, codec_name: str):
        """``n / k`` of the chosen fraction: each choice's static float32 ``n / k_i``, picked by ``index``."""
        return self._pick(tuple(n / kk for kk in self.table(n, codec_name)), jnp.float32)

    def check(self, params, codec_name: str) -> None:
        del params, codec_name  # every k_i is in [1, n]


def _is_array(value) -> bool:
    return isinstance(value, (jax.Array, np.ndarray, np.generic))


def _choices(codec_name: str, fraction, k, choices) -> SparsityChoices:
    """``choices`` checked (fractions in (0, 1], distinct in float32) and the index of ``fraction`` among them."""
    if k is not None:
        raise ValueError(f"{codec_name}: choices= selects among fractions; it cannot be combined with k={k!r} "
                         f"(a fixed count is static already)")
    if isinstance(choices, (str, bytes)) or not isinstance(choices, (tuple, list)) or not choices:
        raise ValueError(f"{codec_name} choices must be a non-empty tuple of fractions in (0, 1], got {choices!r}")
    choices = tuple(check_fraction(f"{codec_name} choice", c) for c in choices)
    as_float32 = [float(np.float32(c)) for c in choices]
    for j, c in enumerate(as_float32):
        if c in as_float32[:j]:
            i = as_float32.index(c)
            raise ValueError(f"{codec_name} choices {choices[i]!r} and {choices[j]!r} are the same float32 "
                             f"(a traced fraction could not tell them apart); give each fraction once")
    if fraction is None:
        raise ValueError(f"{codec_name}: with choices={choices!r}, give fraction (one of them, or a traced "
                         f"float32 scalar equal to one of them)")
    if _is_array(fraction):
        # exact for a fraction equal (in float32) to a choice; anything else gets the nearest choice
        distance = jnp.abs(jnp.asarray(fraction).astype(jnp.float32) - jnp.asarray(as_float32, jnp.float32))
        return SparsityChoices(choices, jnp.argmin(distance).astype(jnp.int32))
    fraction = check_fraction(f"{codec_name} fraction", fraction)
    if fraction not in choices:
        raise ValueError(f"{codec_name} fraction {fraction!r} is not one of the choices {choices!r}")
    return SparsityChoices(choices, choices.index(fraction))


def _sparsity(codec_name: str, fraction, k, choices=None):
    if choices is not None:
        return _choices(codec_name, fraction, k, choices)
    if (fraction is None) == (k is None):
        raise ValueError(f"{codec_name}: give exactly one of fraction (in (0, 1]) or k (a count >= 1), "
                         f"got fraction={fraction!r}, k={k!r}")
    if fraction is not None:
        if isinstance(fraction, jax.Array):
            raise ValueError(f"{codec_name}: a traced (array) fraction needs choices= (the static fractions "
                             f"it may take), got {fraction!r}")
        return SparsityLevel(check_fraction(f"{codec_name} fraction", fraction), None)
    return SparsityLevel(None, check_positive_int(f"{codec_name} k", k, low=1))


def _first(values, k):
    """``values`` (``[k_max]``) with the entries at ranks ``>= k`` set to 0 (nothing to do for a static full ``k``)."""
    if isinstance(k, int) and k == values.shape[0]:
        return values
    return jnp.where(jnp.arange(values.shape[0]) < k, values, jnp.zeros_like(values))


def _scatter(values, indices, shape):
    n = math.prod(shape)
    return jnp.zeros((n,), jnp.float32).at[indices].set(values).reshape(shape)


def topk(fraction=None, *, k: Optional[int] = None, choices: Optional[tuple] = None) -> Codec:
    """Top-k sparsification by magnitude, per tensor.

    Args:
      fraction: keep ``k = ceil(fraction * n)`` coordinates of a tensor of
        ``n`` elements, ``0 < fraction <= 1``. With ``choices`` it may be a
        traced float32 scalar equal to one of them (module docstring).
      k: or keep exactly ``k`` per tensor (every tensor needs ``n >= k``).
      choices: the static fractions a traced ``fraction`` may take, each in
        ``(0, 1]`` and distinct in float32; a Python ``fraction`` must be one
        of them. Containers hold ``k_max = max_i ceil(c_i n)`` entries; the
        ranks ``>= k`` carry the value 0. Not with ``k``.

    Bits per tensor: ``32 k + min(k * ceil(log2 n), n)``: the float32 values
    plus their positions, sent as fixed-width indices or as an ``n``-bit
    bitmap, whichever is smaller (both ends know ``k`` and ``n``, so both know
    which). With a traced fraction, a traced int32 of the same formula.

    Ties in magnitude keep the lower index (``lax.top_k``), so the first ``k``
    of ``top_k(|x|, k_max)`` are ``top_k(|x|, k)``: a traced fraction sends the
    static codec's values and positions. Biased; no integer-domain aggregation
    (clients keep different coordinates).
    """
    level = _sparsity("topk", fraction, k, choices)

    def init(params):
        level.check(params, "topk")
        return ()

    def encode_leaf(x):
        flat = x.reshape(-1).astype(jnp.float32)
        n = flat.size
        _, indices = jax.lax.top_k(jnp.abs(flat), level.k_max(n, "topk"))
        values = _first(flat[indices], level.k(n, "topk"))
        return SparseMessage(values, indices.astype(jnp.int32), tuple(x.shape))

    def decode_leaf(m):
        return _scatter(m.values, m.indices, m.shape)  # positions are distinct; ranks >= k add zeros

    def count(n: int, kk):
        if isinstance(kk, int):
            return FLOAT_BITS * kk + min(kk * index_bits(n), n)
        return FLOAT_BITS * kk + jnp.minimum(kk * index_bits(n), n)

    def leaf_bits(m):
        n = math.prod(m.shape)
        return count(n, level.k(n, "topk"))

    def leaf_bound(m):
        n = math.prod(m.shape)
        return count(n, level.k_max(n, "topk"))

    return leafwise(encode_leaf, decode_leaf, leaf_bits, SparseMessage, init=init, leaf_bound=leaf_bound)


def randk(fraction=None, *, k: Optional[int] = None, unbiased: bool = True,
          choices: Optional[tuple] = None) -> Codec:
    """Random-k sparsification, per tensor; positions derived from a 32-bit seed in the message.

    Args:
      fraction / k / choices: as in :func:`topk`.
      unbiased: scale the kept values by ``n / k`` (``E[decode] = x``); with
        a traced fraction, the float32 ``n / k_i`` of the chosen ``k_i``.

    Bits per message: ``32 + sum over tensors of 32 k``: the float32 values
    and one uint32 seed from which both ends draw every tensor's positions, so
    no index is sent. The positions of a tensor of ``n`` elements are those of
    the ``k`` largest of ``n`` uniform 32-bit draws (all tensors' draws come
    from one call on ``key(seed)``): a uniform ``k``-subset, up to ties among
    32-bit draws (broken by the lower index), which only matter at the k-th
    place. A traced fraction takes the first ``k`` of the ``k_max`` largest
    draws (the same positions) and counts its bits as a traced int32.

    No integer-domain aggregation.
    """
    level = _sparsity("randk", fraction, k, choices)
    if not isinstance(unbiased, bool):
        raise ValueError(f"randk unbiased must be True or False, got {unbiased!r}")

    def all_positions(seed, sizes):
        """Every tensor's kept positions: the k_max largest of n uniform 32-bit draws (one draw call)."""
        draws = split_flat(jax.random.bits(key_from_seed(seed), (sum(sizes),), jnp.uint32),
                           [(n,) for n in sizes])
        return [jax.lax.top_k(d, level.k_max(n, "randk"))[1] for d, n in zip(draws, sizes)]

    def init(params):
        level.check(params, "randk")
        return ()

    def encode(delta, state, key):
        seed = draw_seed(key)
        leaves, treedef = jax.tree.flatten(delta)
        flats = [jnp.asarray(x, jnp.float32).reshape(-1) for x in leaves]
        out = []
        for x, flat, kept in zip(leaves, flats, all_positions(seed, [f.size for f in flats])):
            values = _first(flat[kept], level.k(flat.size, "randk"))
            if unbiased:
                values = values * level.scale(flat.size, "randk")
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
        sizes = [math.prod(m.shape) for m in jax.tree.leaves(message.values, is_leaf=is_values)]
        return bounded_total([SEED_BITS] + [FLOAT_BITS * level.k(n, "randk") for n in sizes],
                             [SEED_BITS] + [FLOAT_BITS * level.k_max(n, "randk") for n in sizes])

    return Codec(init=init, encode=encode, decode=decode, bits=bits)
