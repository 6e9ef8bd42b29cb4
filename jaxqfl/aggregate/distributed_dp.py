"""Distributed DP: the Skellam mechanism (Agarwal, Kairouz, Liu 2021) summed under secure aggregation.

The server only ever sees the NOISED sum: each client adds its own share of
integer noise to its integer codes before secure aggregation masks them. One
round, client i (inside the vmap), with the update flattened to n coordinates::

    x_i <- x_i min(1, c / ||x_i||_2)                         clip (whole update, L2)
    y_i  = H D x_i / (sqrt(block) gamma)                      randomized Hadamard rotation, scale 1/gamma
    r_i  = conditional randomized rounding of y_i             ||r_i||_2 <= Delta_2 always (below)
    q_i  = r_i + Pois(lambda) - Pois(lambda)                  per coordinate, lambda = mu / (2 s)
    send q_i mod 2^b through jaxqfl.aggregate.secure (masks, dropouts, Shamir)

and the server gets ``S = sum_{survivors} q_i`` mod 2^b, reads it as a signed
integer in ``[-2^(b-1), 2^(b-1))``, and returns
``gamma D H S / sqrt(block)`` (padding dropped) divided by the number of survivors W.

* Rotation: ``jaxqfl.compress.hadamard`` (``rotate`` / ``unrotate``), the whole
  update padded to the next power of two d (or blocks of ``block_size``). Every
  client and the server use the SAME signs D: a public seed, the cohort's
  maximum of the clients' seeds ``draw_seed(purpose_key(client key, ROTATION))``
  published in the key-advertising pre-pass (32 bits each).
* Conditional randomized rounding (Kairouz, Liu, Steinke 2021, Sec. 4.1): round
  each coordinate up with probability its fractional part (unbiased), and retry
  (``fold_in(purpose_key(client key, UPLINK), try)``) until
  ``||r||_2 <= Delta_2 = min(c' + sqrt(d), sqrt(c'^2 + d/4 + sqrt(2 ln(1/beta)) (c' + sqrt(d)/2)))``,
  ``c' = c / gamma`` (one try fails with probability <= beta). After
  ``max_rounding_tries`` failures the client rounds toward zero (``|r_j| <= |y_j|``,
  so ``||r|| <= c' <= Delta_2``): the bound holds with probability 1, at a bias
  that occurs with probability <= beta^tries. ``Delta_1 = min(sqrt(d) Delta_2, Delta_2^2)``
  (integer vectors: ``|r_j| <= r_j^2``).
* Noise: Skellam, the difference of two Poissons (``jax.random.poisson``, jittable;
  its float32 arithmetic loses accuracy at large rates, so gamma is also kept
  large enough for ``lambda <= MAX_POISSON_RATE = 1e5``, where its variance is
  right to 0.2%: a coarser grid, whose rounding inflation the accounting
  includes), key ``purpose_key(client key, DP)``. Sums of Skellams are Skellam, so
  any W >= s surviving clients add ``Sk`` of variance ``W mu / s >= mu`` with
  ``mu = (z c / gamma)^2``: the noise std on the sum is at least z c, as central
  DP-FedAvg's. s (``noise_shares``) defaults to the survivors guaranteed up to
  probability 1e-6 (:func:`min_survivors`); with fewer survivors the clients
  refuse to unmask and the round fails like a SecAgg failure (the server learns nothing).
* Wrap-around (the sum is taken mod 2^b): the server's reading is exact unless
  some coordinate of the true sum leaves ``[-2^(b-1), 2^(b-1))``. With the
  shared rotation, coordinate j of the survivors' scaled sum v (``||v|| <= M c'``)
  satisfies ``P(|(Rv)_j| > a) <= 2 exp(-a^2 block / (2 M^2 c'^2))`` (Hoeffding over
  the random signs), the rounding errors add less than M, and the noise is
  ``Sk(M lambda, M lambda)`` at most (Chernoff bound on its tail, :func:`skellam_tail`). So::

      P(wrap) <= d [2 exp(-a^2 block / (2 M^2 c'^2)) + P(|Sk| > 2^(b-1) - M - a - 1)]

  for the best split a. Given b, gamma is the SMALLEST grid step (the finest
  grid: least rounding error and sensitivity inflation) whose bound is <=
  ``wrap_probability`` (default 1e-6 per round) and whose lambda is <= 1e5:
  :func:`skellam_parameters`.
  Wrap-around costs accuracy only, never privacy: the server's view (the sum mod
  2^b) is a function of the noised sum.
* Calibration (gamma, Delta_2, Delta_1, mu, the wrap bound): ``jaxqfl.aggregate.skellam_calibration``.
* Accounting: :func:`jaxqfl.privacy.distributed_epsilon` on ``Delta_2``, ``Delta_1``
  and ``mu`` (Agarwal et al.'s Skellam RDP bound, stated as an equivalent Gaussian).
* Weights: every surviving client weighs 1, and the mean is over the W survivors
  (W is public to the server and independent of the data: dividing by it is
  post-processing). Clients are assumed honest (each adds its noise share).

References:
  Agarwal, Kairouz, Liu. The Skellam Mechanism for Differentially Private
  Federated Learning. NeurIPS 2021.
  Kairouz, Liu, Steinke. The Distributed Discrete Gaussian Mechanism for
  Federated Learning with Secure Aggregation. ICML 2021.
"""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxqfl import keys
from jaxqfl.aggregate.base import Aggregator
from jaxqfl.aggregate.secure import IntegerEncoder, secure_encoded_sum
from jaxqfl.aggregate.sensitivity import no_bound
from jaxqfl.aggregate.skellam_calibration import SkellamParameters, min_survivors, skellam_parameters
from jaxqfl.compress.base import draw_seed
from jaxqfl.compress.hadamard import rotate, rotation_signs, unrotate

MECHANISMS = ("skellam",)
_NORM_MARGIN = 1e-4  # accept ||r||^2 <= (1 - margin) Delta_2^2: float32 sums of squares err ~1e-6 relative


def conditional_round(y: jax.Array, bound: float, key: jax.Array, max_tries: int):
    """``(r, tries)``: randomized rounding of ``y`` retried until ``||r||_2 <= bound``; toward zero after ``max_tries``."""
    low = jnp.floor(y)
    frac = y - low
    limit = jnp.float32(bound * bound * (1.0 - _NORM_MARGIN))

    def body(carry):
        i, _, _ = carry
        r = low + (jax.random.uniform(jax.random.fold_in(key, i), y.shape) < frac).astype(jnp.float32)
        return i + 1, r, jnp.sum(jnp.square(r)) <= limit

    tries, r, ok = jax.lax.while_loop(lambda c: (~c[2]) & (c[0] < max_tries), body,
                                      (jnp.int32(0), jnp.zeros_like(y), jnp.asarray(False)))
    return jnp.where(ok, r, jnp.trunc(y)).astype(jnp.int32), tries


def skellam_encoder(params: SkellamParameters, template, *, block_size: Optional[int] = None,
                    max_rounding_tries: int = 10) -> IntegerEncoder:
    """The client side (clip, rotate, scale, round, noise) and the server's decoding, as an ``IntegerEncoder``.

    ``template``: a pytree of arrays (or ``jax.ShapeDtypeStruct``) shaped like the update.
    """
    leaves, treedef = jax.tree.flatten(template)
    shapes = [tuple(np.shape(x)) for x in leaves]
    sizes = [math.prod(s) for s in shapes]
    n = sum(sizes)
    if n != params.dimension:
        raise ValueError(f"the template has {n} coordinates, the parameters were computed for {params.dimension}")
    gamma, lam, p = params.scale, params.local_lambda, params

    def signs_of(shared):
        return rotation_signs(shared["rotation_seed"], [n], block_size)[0]

    def statistics(update, info):
        del update
        return {"rotation_seed": draw_seed(keys.purpose_key(info.key, keys.ROTATION))}

    def encode(update, shared, info):
        u_leaves, u_tree = jax.tree.flatten(update)
        if u_tree != treedef or [tuple(np.shape(x)) for x in u_leaves] != shapes:
            raise ValueError(f"distributed DP was built for updates shaped like its template ({treedef}, "
                             f"{n} coordinates); got {u_tree} with shapes {[np.shape(x) for x in u_leaves]}")
        flat = jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in u_leaves])
        norm = jnp.sqrt(jnp.sum(jnp.square(flat)))
        flat = flat * jnp.minimum(1.0, p.clip / jnp.maximum(norm, 1e-30))
        y = rotate(flat, signs_of(shared), block_size) / gamma
        r, tries = conditional_round(y, p.l2_sensitivity, keys.purpose_key(info.key, keys.UPLINK),
                                     max_rounding_tries)
        if lam > 0:
            dkey = keys.purpose_key(info.key, keys.DP)
            noise = (jax.random.poisson(jax.random.fold_in(dkey, 0), lam, r.shape, jnp.int32)
                     - jax.random.poisson(jax.random.fold_in(dkey, 1), lam, r.shape, jnp.int32))
            r = r + noise
        metrics = {"dp_update_norm": norm, "ddp_rounding_tries": tries.astype(jnp.float32)}
        return {"codes": r}, metrics

    def decode_sum(code_sum, shared, survivors):
        del survivors
        y = code_sum["codes"].astype(jnp.float32) * jnp.float32(gamma)
        flat = unrotate(y, signs_of(shared), (n,), block_size)
        offsets = np.cumsum([0] + sizes)
        return jax.tree.unflatten(treedef, [flat[a:b].reshape(s) for a, b, s in zip(offsets, offsets[1:], shapes)])

    return IntegerEncoder(statistics, encode, decode_sum, params.modulus_bits)


def distributed_skellam(
    clip: float,
    noise_multiplier: float,
    *,
    template,
    num_clients: int,
    cohort_size: int,
    bits: int = 20,
    protocol: str = "secagg+",
    dropout: float = 0.0,
    neighbours: Optional[int] = None,
    threshold: float = 0.5,
    noise_shares: Optional[int] = None,
    block_size: Optional[int] = None,
    rounding_beta: float = math.exp(-0.5),
    max_rounding_tries: int = 10,
    wrap_probability: float = 1e-6,
    failure_probability: float = 1e-6,
) -> Aggregator:
    """Distributed DP with the Skellam mechanism, summed under SecAgg / SecAgg+ (module docstring).

    Args:
      clip: c, the L2 clip of a client's whole update.
      noise_multiplier: z: the Skellam noise on the sum has std >= z c (update units), as in DP-FedAvg.
      template: a pytree shaped like the updates (the model's parameters for FedAvg).
      num_clients, cohort_size, protocol, dropout, neighbours, threshold, failure_probability:
        as in :func:`jaxqfl.aggregate.secure_sum`.
      bits: b, the modulus 2^b of the secure sum (1 to 32); gamma follows from it.
      noise_shares: s, the fewest survivors the noise is split for (default :func:`min_survivors`);
        a round with fewer survivors fails.
      block_size: Hadamard block length (a power of two) or None for the whole update.
      rounding_beta: beta of the conditional rounding (Kairouz et al.'s e^-0.5 by default).
      max_rounding_tries: rounding retries before rounding toward zero.
      wrap_probability: the per-round bound on a wrap-around that sets gamma.

    Returns:
      An ``Aggregator`` (reduction ``"sum"``). Server metrics: the secure sum's plus
      ``dp_noise_std`` (the std of the noise on the sum, update units) and ``ddp_scale`` (gamma);
      client metrics ``dp_update_norm`` and ``ddp_rounding_tries``.
    """
    s = min_survivors(cohort_size, dropout, failure_probability) if noise_shares is None else noise_shares
    n = sum(math.prod(np.shape(x)) for x in jax.tree.leaves(template))
    params = skellam_parameters(clip, noise_multiplier, dimension=n, cohort_size=cohort_size, bits=bits,
                                noise_shares=s, block_size=block_size, rounding_beta=rounding_beta,
                                wrap_probability=wrap_probability)
    encoder = skellam_encoder(params, template, block_size=block_size, max_rounding_tries=max_rounding_tries)
    inner = secure_encoded_sum(encoder, num_clients=num_clients, cohort_size=cohort_size, protocol=protocol,
                               neighbours=neighbours, threshold=threshold, dropout=dropout,
                               failure_probability=failure_probability, min_survivors=s,
                               max_weight=None)  # every survivor weighs 1: the sensitivity the noise is for

    def server(reduced, state, stats, cohort):
        mean, state, metrics = inner.server(reduced, state, stats, cohort)
        W = metrics["secagg_survivors"]
        metrics = {**metrics, "dp_noise_std": jnp.float32(params.scale) * jnp.sqrt(2.0 * params.local_lambda * W),
                   "ddp_scale": jnp.float32(params.scale)}
        return mean, state, metrics

    return inner._replace(server=server, dp=no_bound(
        "distributed_skellam", "the clients clip, quantize and noise their updates themselves (distributed DP)",
        clips_itself=True))
