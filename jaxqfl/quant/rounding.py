"""Rounding primitives shared by quantizers (``jaxqfl.quant``) and codecs (``jaxqfl.compress``).

Round-to-nearest: ``rn(x) = floor(x + 1/2)`` (ties go up, unlike ``jnp.round``'s
ties-to-even, so the error bound |rn(x) - x| <= 1/2 holds with a simple proof and
the grid is symmetric under no assumption about the backend).

Stochastic rounding (Gupta et al. 2015, "Deep learning with limited numerical
precision"): ``sr(x) = floor(x) + 1[u < x - floor(x)]`` with ``u ~ U[0, 1)``.
It is unbiased, ``E[sr(x)] = x``, and its variance is ``p (1 - p) <= 1/4`` with
``p = x - floor(x)``.

Both are pure ``jnp`` and take the key as a traced argument, so they work under
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
