"""Prime-field arithmetic for the secure-aggregation simulation: Shamir sharing and a toy key agreement.

Field: GF(p), p = 32749 (the largest prime below 2^15), so a product of two
elements stays below 2^30 and every operation is exact in int32 on any device.
A secret of the protocol (a key-agreement secret key, a self-mask seed) is a
vector of ``LIMBS`` field elements.

* Shamir t-of-n sharing (Shamir 1979): ``f(x) = s + a_1 x + ... + a_{t-1} x^{t-1}``
  with uniform ``a_k``; holder ``h`` gets ``f(x_h)`` (``x_h`` distinct, nonzero).
  Any t shares give ``s = sum_j lambda_j f(x_j)``, ``lambda_j = prod_{m != j}
  x_m / (x_m - x_j)`` (Lagrange at 0); fewer reveal nothing.
* Key agreement: Diffie-Hellman in the multiplicative group (generator 2, a
  primitive root mod p), one instance per limb: ``pk = 2^sk``, and
  ``KA(sk_i, pk_j) = pk_j^sk_i = KA(sk_j, pk_i)``.

This is a SIMULATION: a 15-bit group is trivially breakable; the point is that
the server can only unmask with values it really reconstructed from t shares
(a wrong share, a wrong Lagrange weight or too few shares give a wrong sum). The
bit accounting of ``secure_sum`` uses the sizes of a real deployment instead.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

PRIME = 32749
GENERATOR = 2
LIMBS = 2  # field elements per secret
_EXP_BITS = 15  # exponents are < p < 2^15


def mul(a, b):
    """``a b mod p`` (int32; both in [0, p))."""
    return (a * b) % PRIME


def power(base, exponent):
    """``base^exponent mod p`` by square-and-multiply over the 15 exponent bits (elementwise)."""
    base = jnp.asarray(base, jnp.int32) % PRIME
    exponent = jnp.asarray(exponent, jnp.int32)

    def body(i, carry):
        result, sq = carry
        bit = (exponent >> i) & 1
        return jnp.where(bit == 1, mul(result, sq), result), mul(sq, sq)

    result, _ = jax.lax.fori_loop(0, _EXP_BITS, body, (jnp.ones_like(base * exponent), base + 0 * exponent))
    return result


def inverse(a):
    """``a^(p-2) = a^-1 mod p`` (Fermat; a != 0)."""
    return power(a, PRIME - 2)


def product(a, axis=-1):
    """``prod a mod p`` along ``axis`` by pairwise halving (log2 n exact steps)."""
    a = jnp.moveaxis(jnp.asarray(a, jnp.int32), axis, -1)
    while a.shape[-1] > 1:
        if a.shape[-1] % 2:
            a = jnp.concatenate([a, jnp.ones(a.shape[:-1] + (1,), jnp.int32)], -1)
        a = mul(a[..., 0::2], a[..., 1::2])
    return a[..., 0]


def random_elements(key, shape, low=0):
    """Uniform field elements in ``[low, p)``."""
    return jax.random.randint(key, shape, low, PRIME, jnp.int32)


def evaluate_shares(secret, coefficients, xs):
    """Shares ``f(x)`` of ``secret`` [L] with ``coefficients`` [t-1, L] at points ``xs`` [n] -> [n, L] (Horner)."""
    xs = jnp.asarray(xs, jnp.int32)[:, None]
    acc = jnp.zeros((xs.shape[0], secret.shape[-1]), jnp.int32)
    for k in range(coefficients.shape[0] - 1, -1, -1):
        acc = (mul(acc, xs) + coefficients[k][None]) % PRIME
    return (mul(acc, xs) + secret[None]) % PRIME


def lagrange_at_zero(xs):
    """``lambda_j = prod_{m != j} x_m / (x_m - x_j) mod p`` for distinct nonzero points ``xs`` [t] -> [t]."""
    xs = jnp.asarray(xs, jnp.int32)
    t = xs.shape[0]
    diff = (xs[None, :] - xs[:, None]) % PRIME  # [j, m] = x_m - x_j
    eye = jnp.eye(t, dtype=bool)
    numer = product(jnp.where(eye, 1, jnp.broadcast_to(xs[None, :], (t, t))))
    denom = product(jnp.where(eye, 1, diff))
    return mul(numer, inverse(denom))


def reconstruct(shares, xs):
    """The secret [L] from t shares [t, L] held at points ``xs`` [t]."""
    lam = lagrange_at_zero(xs)
    return jnp.sum(mul(lam[:, None], shares), axis=0) % PRIME


def public_key(secret_key):
    """``2^sk mod p`` per limb."""
    return power(GENERATOR, secret_key)


def agree(secret_key, other_public_key):
    """The shared value ``pk_other^sk mod p`` per limb (symmetric in the two parties)."""
    return power(other_public_key, secret_key)


def seed_key(base_key, limbs):
    """A PRG key from a secret's limbs: ``fold_in`` of each limb into ``base_key``."""
    for i in range(limbs.shape[-1]):
        base_key = jax.random.fold_in(base_key, limbs[..., i].astype(jnp.uint32))
    return base_key
