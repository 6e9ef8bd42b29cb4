"""What a malicious client sends: the behaviours of the threat model (``jaxqfl.aggregate.threat``).

An ``Attack`` turns the update a malicious client trained into the one it sends,
``craft(update, honest, key) -> update``, before the uplink codec. Omniscient
attacks read ``honest``: the statistics of the HONEST clients of the same round
(unweighted, coordinate-wise), gathered by the aggregator pre-pass:

    mu = mean of the honest updates,  sigma = their coordinate-wise standard deviation,
    V  = mean_i ||x_i - mu||^2 = sum_k sigma_k^2,  n = real clients in the cohort,
    f  = malicious clients in the cohort,  n_h = n - f

Behaviours (``scale`` is the attack's strength; None picks the default in brackets):

* sign flip:      -scale u                                   [1]
* scaling:        scale u  (model replacement, Bagdasaryan et al. 2020)   [10]
* Gaussian:       scale z, z ~ N(0, I), key fold_in(client key, ATTACK)   [1]
* label flipping: u unchanged; the client trained on labels y -> K - 1 - y
                  (``threat.label_flip_transform`` hands the engine the relabelling)
* ALIE:           mu - z sigma,  z = Phi^-1((n - s) / n),  s = floor(n/2 + 1) - f    (Baruch et al. 2019)
                  (the ratio is clamped to [0.5, 1 - 1e-6]: z <= 4.75 when f >= n/2, where the paper's z is infinite)
* IPM:            -eps mu                                    [eps = 0.1]   (Xie et al. 2020)
* min-max / min-sum (Shejwalkar & Houmansadr 2021, AGR-agnostic): mu + gamma p with
                  p = -mu / ||mu|| (their inverse-unit-vector perturbation) and the largest
                  gamma that keeps the malicious update as close to the honest ones as they are
                  to each other. The pre-pass sees sums, not per-client distances, so the
                  criteria use the benign AVERAGE where the paper uses the benign MAXIMUM:
                  min-max: mean_i ||m - x_i||^2 <= mean_{i != j} ||x_i - x_j||^2, i.e.
                           ||m - mu||^2 + V <= 2 V n_h / (n_h - 1)  ->  gamma = sqrt(V (n_h + 1) / (n_h - 1))
                  min-sum: sum_i ||m - x_i||^2 <= mean_i sum_j ||x_i - x_j||^2, i.e.
                           n_h ||m - mu||^2 + n_h V <= 2 n_h V        ->  gamma = sqrt(V)
                  The paper's search for gamma (its Algorithm 1: halving steps up on success,
                  down on failure) converges on these monotone criteria to the closed forms
                  above. Against the paper's criteria (min-max: max_i ||m - x_i|| <= max_{i,j}
                  ||x_i - x_j||; min-sum: the right side's max over i): min-sum's gamma is never
                  larger than the paper's (a mean is at most the max); min-max's is smaller when
                  the honest deviations are spread across many directions (the usual case), but
                  can be larger when they lie along mu (tests/test_attacks_reference.py).

References:
  Baruch, Baruch, Goldberg. "A Little Is Enough: Circumventing Defenses for
  Distributed Learning." NeurIPS 2019.
  Xie, Koyejo, Gupta. "Fall of Empires: Breaking Byzantine-tolerant SGD by
  Inner Product Manipulation." UAI 2020.
  Shejwalkar, Houmansadr. "Manipulating the Byzantine: Optimizing Model
  Poisoning Attacks and Defenses for Federated Learning." NDSS 2021.
  Bagdasaryan et al. "How To Backdoor Federated Learning." AISTATS 2020.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtri

PyTree = Any


class HonestStatistics(NamedTuple):
    """The honest clients of a round, as an omniscient attacker sees them."""

    mean: PyTree  # mu, shaped like an update
    std: PyTree  # sigma, coordinate-wise (population standard deviation)
    num_honest: jax.Array  # () float32, n_h
    num_malicious: jax.Array  # () float32, f (in this cohort)


class Attack(NamedTuple):
    """A malicious client's behaviour.

    Attributes:
      name: the CLI name.
      craft: ``craft(update, honest: HonestStatistics | None, key) -> update`` (what the client sends).
      omniscient: True when ``craft`` reads the honest statistics (the aggregator runs a pre-pass).
      flips_labels: True when the behaviour is in the training labels (``threat.label_flip_transform``).
    """

    name: str
    craft: Callable
    omniscient: bool = False
    flips_labels: bool = False


def _scale(scale, default):
    if scale is None:
        return float(default)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (scale >= 0 and scale < float("inf")):
        raise ValueError(f"the attack scale must be a finite number >= 0, got {scale!r}")
    return float(scale)


def _norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(a)) for a in jax.tree.leaves(tree)))


def sign_flip(scale: float | None = None) -> Attack:
    """Send ``-scale u`` (default scale 1)."""
    s = _scale(scale, 1.0)
    return Attack("sign-flip", lambda u, honest, key: jax.tree.map(lambda a: -s * a, u))


def scaling(scale: float | None = None) -> Attack:
    """Model replacement: send ``scale u`` (default 10)."""
    s = _scale(scale, 10.0)
    return Attack("scale", lambda u, honest, key: jax.tree.map(lambda a: s * a, u))


def gaussian(scale: float | None = None) -> Attack:
    """Send ``scale z``, ``z ~ N(0, I)`` (default scale 1), drawn from the client's ATTACK key."""
    s = _scale(scale, 1.0)

    def craft(u, honest, key):
        leaves, treedef = jax.tree.flatten(u)
        ks = jax.random.split(key, len(leaves))
        return jax.tree.unflatten(treedef, [s * jax.random.normal(k, a.shape, a.dtype) for k, a in zip(ks, leaves)])

    return Attack("gaussian", craft)


def label_flip() -> Attack:
    """Train on flipped labels ``y -> K - 1 - y``; the update is sent unchanged."""
    return Attack("label-flip", lambda u, honest, key: u, flips_labels=True)


def alie(z: float | None = None) -> Attack:
    """A Little Is Enough (Baruch et al. 2019): ``mu - z sigma``; None computes ``z`` from ``n`` and ``f``."""
    fixed = None if z is None else _scale(z, 0.0)

    def craft(u, honest, key):
        n = honest.num_honest + honest.num_malicious
        s = jnp.floor(n / 2 + 1) - honest.num_malicious
        zz = jnp.maximum(ndtri(jnp.clip((n - s) / jnp.maximum(n, 1.0), 0.5, 1 - 1e-6)), 0.0)
        zz = zz if fixed is None else fixed
        return jax.tree.map(lambda m, sd: m - zz * sd, honest.mean, honest.std)

    return Attack("alie", craft, omniscient=True)


def ipm(epsilon: float | None = None) -> Attack:
    """Inner Product Manipulation (Xie et al. 2020): ``-epsilon mu`` (default epsilon 0.1)."""
    eps = _scale(epsilon, 0.1)
    return Attack("ipm", lambda u, honest, key: jax.tree.map(lambda m: -eps * m, honest.mean), omniscient=True)


def _min_distance_attack(name, gamma_sq_over_v, scale):
    fixed = None if scale is None else _scale(scale, 0.0)

    def craft(u, honest, key):
        v = sum(jnp.sum(jnp.square(sd)) for sd in jax.tree.leaves(honest.std))
        gamma = jnp.sqrt(v * gamma_sq_over_v(honest.num_honest)) if fixed is None else fixed
        unit = gamma / jnp.maximum(_norm(honest.mean), 1e-30)
        return jax.tree.map(lambda m: m - unit * m, honest.mean)

    return Attack(name, craft, omniscient=True)


def min_max(scale: float | None = None) -> Attack:
    """Min-Max (Shejwalkar & Houmansadr 2021), average criterion; ``scale`` fixes gamma instead."""
    return _min_distance_attack("minmax", lambda nh: (nh + 1) / jnp.maximum(nh - 1, 1.0), scale)


def min_sum(scale: float | None = None) -> Attack:
    """Min-Sum (Shejwalkar & Houmansadr 2021), average criterion; ``scale`` fixes gamma instead."""
    return _min_distance_attack("minsum", lambda nh: jnp.ones_like(nh), scale)


def by_name(name: str, scale: float | None = None) -> Attack:
    """The attack called ``name`` (an entry of ``jaxqfl.registry.attacks``, which builds it) with strength
    ``scale`` (None: the entry's default strength)."""
    from jaxqfl.registry import attacks as registry

    if name not in registry.BEHAVIOURS:
        raise ValueError(f"unknown attack {name!r}; choose one of {sorted(registry.BEHAVIOURS)}")
    entry = registry.BY_NAME[name]
    return entry.build(entry.scale if scale is None else scale)
