"""Rounding primitives shared by quantizers (``jaxqfl.quant``) and codecs (``jaxqfl.compress``).

Round-to-nearest: ``rn(x) = floor(x + 1/2)`` (ties go up, unlike ``jnp.round``'s
ties-to-even, so the error bound |rn(x) - x| <= 1/2 holds with a simple proof and
the grid is symmetric under no assumption about the backend).

Stochastic rounding (Gupta et al. 2015, "Deep learning with limited numerical
precision"): ``sr(x) = floor(x) + 1[u < x - floor(x)]`` with ``u ~ U[0, 1)``.
It is unbiased, ``E[sr(x)] = x``, and its variance is ``p (1 - p) <= 1/4`` with
``p = x - floor(x)``.

Built on these, for non-uniform grids:

* ``round_to_grid_index(x, grid, key)``: onto an arbitrary sorted 1-D grid
  (codebooks, NF4), nearest or unbiased between the two neighbouring points;
* ``round_pow2(x, key)``: onto powers of two, nearest (linear domain) or
  unbiased (natural compression, Horvath et al. 2019), with the exponent taken
  exactly from ``frexp`` (``floor_log2``), not from a rounded ``log2``.

All are pure ``jnp`` and take the key as a traced argument, so they work under
``jit``, ``vmap`` (per-client keys) and ``grad`` (no gradient flows through them;
estimators are defined by the callers' ``custom_vjp``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def round_nearest(x: jax.Array) -> jax.Array:
    """``floor(x + 0.5)``: nearest integer, ties up. Error at most 1/2."""
    return jnp.floor(x + 0.5)


def round_stochastic(x: jax.Array, key: jax.Array) -> jax.Array:
    """Unbiased stochastic rounding: ``floor(x) + Bernoulli(x - floor(x))``."""
    lo = jnp.floor(x)
    u = jax.random.uniform(key, x.shape, dtype=x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32)
    return lo + (u < (x - lo)).astype(lo.dtype)


def round_to_int(x: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """Round-to-nearest when ``key`` is None, stochastic rounding otherwise."""
    return round_nearest(x) if key is None else round_stochastic(x, key)


def round_to_grid_index(x: jax.Array, grid: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """Index into a sorted 1-D ``grid`` of the value ``x`` rounds to (int32).

    With ``i`` such that ``grid[i] <= x < grid[i+1]`` and ``t = (x - grid[i]) /
    (grid[i+1] - grid[i])``, the index is ``i + round_to_int(t, key)``: nearest
    grid point (ties up) without a key, and with a key ``grid[i+1]`` with
    probability ``t``, so ``E[grid[index]] = x`` for ``x`` inside the grid
    (unbiased). Values outside ``[grid[0], grid[-1]]`` clip to the end points;
    repeated grid points (zero-width cells) round down.
    """
    k = grid.shape[-1]
    i = jnp.clip(jnp.searchsorted(grid, x, side="right") - 1, 0, k - 2)
    lo, hi = grid[i], grid[i + 1]
    width = hi - lo
    t = jnp.where(width > 0, (x - lo) / jnp.where(width > 0, width, 1), 0)
    up = round_to_int(jnp.clip(t, 0, 1), key)
    return (i + up.astype(i.dtype)).astype(jnp.int32)


def floor_log2(x: jax.Array) -> jax.Array:
    """``floor(log2 |x|)`` as int32, exact (from ``frexp``, no ``log`` round-off).

    ``|x| = m 2^e`` with ``m`` in ``[1/2, 1)`` gives ``floor(log2 |x|) = e - 1``.
    Undefined (returns ``-1``) for ``x = 0``; callers mask zeros.
    """
    _, e = jnp.frexp(x)
    return (e - 1).astype(jnp.int32)


def round_pow2(x: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """Exponent of the power of two ``|x|`` rounds to, in the linear domain (int32).

    With ``e = floor(log2 |x|)`` and ``p = |x| / 2^e - 1`` in ``[0, 1)`` the result is
    ``e + round_to_int(p, key)``: the nearer of ``2^e`` and ``2^(e+1)`` (ties up)
    without a key; with a key, ``2^(e+1)`` with probability ``p``, which is the
    unbiased "natural compression" of Horvath et al. 2019: ``E[2^result] = |x|``
    because ``2^e (1 + p) = |x|``. Zero inputs give garbage; callers mask them.
    """
    e = floor_log2(x)
    p = jnp.ldexp(jnp.abs(x).astype(jnp.float32), -e) - 1.0  # exact: scaling by 2^-e
    return e + round_to_int(p, key).astype(jnp.int32)
