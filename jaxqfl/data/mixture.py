"""A federated Gaussian mixture: K components, each client drawing from a few of them.

For a mixture of ``K`` components in ``d`` dimensions over ``C`` clients:

    mu_c ~ N(0, separation^2 I_d),  c = 1..K            component means (shared by all clients)
    pi_k ~ Dirichlet(concentration * 1_K)                 client k's mixing weights
    z ~ Categorical(pi_k),  x = mu_z + N(0, I_d)          each of client k's n_k rows
    n_k = floor(LogNormal(size_mean, size_sigma)) + min_size   (capped at max_size; LEAF's rule)

The label of a row is its component ``z`` (for ARI / NMI; a clustering method
never sees it). ``concentration`` controls how many components a client draws
from: small values (0.1) put nearly all of a client's weight on one or two
components, large values (100) give every client nearly the uniform mixture.
With ``separation`` s, two component means lie about ``s sqrt(2 d)`` apart, and
two points of one component about ``sqrt(2 d)``: the ratio is ``s``, and
``s >= 3`` makes well separated components.

Client k holds out its last ``floor(test_fraction * n_k)`` rows; the pooled
held-out rows are the test set. Generation is streamed in chunks of clients
in float32 (:mod:`jaxqfl.data.generate`), so a million clients take the memory
of their rows. Randomness: ``SeedSequence(seed)`` children 0 (sizes), 1 (the
component means) and 2 (the chunks; chunk ``j`` draws its clients' weights and
then their rows).
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

from jaxqfl.data.generate import check_test_rows, child_seed, chunk_bounds, chunk_rng, client_sizes, fill_population
from jaxqfl.data.population import Population

__all__ = ["MixtureParameters", "gaussian_mixture", "mixture_parameters"]


class MixtureParameters(NamedTuple):
    means: np.ndarray  # [K, d] float32, mu_c
    weights: np.ndarray  # [C, K] float64, pi_k
    sizes: np.ndarray  # [C] int64, n_k (train + test)


def _setup(num_components, num_clients, seed, num_features, concentration, separation, size_mean, size_sigma,
           min_size, max_size):
    for name, value, lowest in (("num_components", num_components, 1), ("num_clients", num_clients, 1),
                                ("num_features", num_features, 1), ("min_size", min_size, 1)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < lowest:
            raise ValueError(f"{name} must be an integer >= {lowest}, got {value!r}")
    for name, value in (("concentration", concentration),):
        if not _real(value) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    for name, value in (("separation", separation), ("size_sigma", size_sigma)):
        if not _real(value) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not _real(size_mean) or not math.isfinite(size_mean):
        raise ValueError(f"size_mean must be a finite number, got {size_mean!r}")
    if max_size is not None and (not isinstance(max_size, numbers.Integral) or isinstance(max_size, bool)
                                 or max_size < min_size):
        raise ValueError(f"max_size must be None or an integer >= min_size={min_size}, got {max_size!r}")
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    sizes = client_sizes(root, num_clients, size_mean, size_sigma, min_size, max_size)
    means = (separation * np.random.default_rng(child_seed(root, 1)).standard_normal(
        (int(num_components), int(num_features)))).astype(np.float32)
    return sizes, means, child_seed(root, 2)


def _client_weights(rng, k: int, num_components: int, concentration: float) -> np.ndarray:
    return rng.dirichlet(np.full(num_components, float(concentration)), size=k)  # [k, K]


def mixture_parameters(num_components: int, num_clients: int, seed, *, num_features: int = 10,
                       concentration: float = 0.3, separation: float = 4.0, size_mean: float = 4.0,
                       size_sigma: float = 2.0, min_size: int = 50, max_size: int | None = None) -> MixtureParameters:
    """The means, client weights and sizes :func:`gaussian_mixture` draws with the same arguments."""
    sizes, means, chunks = _setup(num_components, num_clients, seed, num_features, concentration, separation,
                                  size_mean, size_sigma, min_size, max_size)
    weights = [_client_weights(chunk_rng(chunks, j), hi - lo, num_components, concentration)
               for j, (lo, hi) in enumerate(chunk_bounds(sizes))]
    return MixtureParameters(means, np.concatenate(weights), sizes)


def gaussian_mixture(num_components: int, num_clients: int, seed, *, num_features: int = 10,
                     concentration: float = 0.3, separation: float = 4.0, size_mean: float = 4.0,
                     size_sigma: float = 2.0, min_size: int = 50, max_size: int | None = None,
                     test_fraction: float = 0.1) -> Population:
    """Generate the federated Gaussian mixture of the module docstring as a clustering :class:`Population`.

    Args:
        num_components: ``K >= 1``.
        num_clients: ``C >= 1``.
        seed: seed of ``np.random.SeedSequence``.
        num_features: ``d >= 1``.
        concentration: Dirichlet concentration of the clients' mixing weights, ``> 0``.
        separation: standard deviation of the component means, ``>= 0``.
        size_mean, size_sigma, min_size, max_size: client sizes (as Synthetic's).
        test_fraction: share of each client's rows held out, in ``(0, 1)``.

    Returns:
        ``x`` float32 ``[N, d]``, ``y`` int32 component ids, ``num_classes = K``,
        ``task = "clustering"``.
    """
    if not _real(test_fraction) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    sizes, means, chunks = _setup(num_components, num_clients, seed, num_features, concentration, separation,
                                  size_mean, size_sigma, min_size, max_size)
    check_test_rows(test_fraction, sizes)
    K, d = int(num_components), int(num_features)

    def draw_chunk(rng, lo, hi):
        weights = _client_weights(rng, hi - lo, K, concentration)  # [k, K]
        n = sizes[lo:hi]
        client = np.repeat(np.arange(hi - lo), n)  # [R]
        cdf = np.cumsum(weights, axis=1)  # [k, K]
        u = rng.random(client.size) * cdf[client, -1]  # inverse-CDF draw of z ~ Categorical(pi_k)
        z = np.empty(client.size, np.int32)
        starts = np.cumsum(n) - n
        for i in range(0, hi - lo, 256):  # bounded [rows, K] temporaries
            rows = slice(int(starts[i]), int(starts[min(i + 256, hi - lo) - 1] + n[min(i + 256, hi - lo) - 1]))
            z[rows] = np.minimum((u[rows, None] >= cdf[client[rows]]).sum(axis=1), K - 1)
        x = rng.standard_normal((client.size, d), dtype=np.float32)
        x += means[z]
        return x, z

    x, y, counts, x_test, y_test, test_counts = fill_population(sizes, test_fraction, d, (), np.int32, chunks, draw_chunk)
    return Population(
        x=x, y=y, offsets=np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32),
        counts=counts.astype(np.int32), x_test=x_test, y_test=y_test, num_classes=K,
        name=f"gaussian_mixture(K={K},concentration={concentration:g})", task="clustering",
        test_counts=test_counts.astype(np.int32),
    )


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
