"""How large a population will be before it is built: its rows, its bytes and its largest client.

A population of ``N`` training and ``N_test`` held-out rows of ``d`` features holds

    bytes = (N + N_test) x (d + t) x 4

(float32 features; int32 labels, ``t = 1``, or float32 targets of ``t`` columns).
:mod:`jaxqfl.engine.streaming` gathers each round's cohort slot-major, so one
streamed block of ``M`` clients holds ``M x n_max x (d + t) x 4`` bytes, with
``n_max`` the largest client's training rows.

Generated populations (synthetic, synthetic-regression, gaussian-mixture) have
``n_k = min(floor(X_k) + m, M_cap)``, ``X_k ~ LogNormal(mu, sigma)`` (LEAF's rule,
:func:`jaxqfl.data.generate.lognormal_sizes`), of which ``floor(f n_k)`` are held
out (``f = 0.1``). Up to :data:`EXACT_CLIENTS` clients the sizes are drawn exactly
as the generator will draw them (``K`` int64s: about 0.1 s for four million
clients), so rows and ``n_max`` are exact. Beyond, from the distribution, with
``c = M_cap - m`` (no cap: ``c = 2^62``, the generator's) and ``Phi`` the
standard normal CDF:

    E[n_k] <= E[min(X, c)] + m
    E[min(X, c)] = e^(mu + sigma^2 / 2) Phi((ln c - mu - sigma^2) / sigma) + c (1 - Phi((ln c - mu) / sigma))

(the right side exceeds the exact expectation by less than one row per client,
the floor's share), so ``N + N_test ~ K E[n_k]`` (the sum of ``K`` draws is close to
``K`` times their mean for such ``K``), and ``n_max`` is the median of the largest of
``K`` draws, the quantile ``q = 2^(-1/K)``:

    n_max = min(floor(exp(mu + sigma Phi^-1(q))) + m, M_cap)

NumPy only (no JAX): the command line sizes a run with it before JAX starts.
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

from jaxqfl.data.build import data_and_partition_seeds
from jaxqfl.data.generate import client_sizes

#: Test clients a procedural population draws at a time (``jaxqfl.data.procedural``), padded to its row cap:
#: the memory check (``jaxqfl.experiment.memory_guard.procedural_estimate``) counts one such chunk.
PROCEDURAL_TEST_CHUNK = 256

__all__ = ["EXACT_CLIENTS", "PopulationFootprint", "client_size_quantile", "expected_client_size",
           "generated_footprint", "footprint_of", "TEST_FRACTION"]

#: Up to this many clients the generated sizes are drawn exactly; beyond, their distribution is used.
EXACT_CLIENTS = 1 << 23
#: Share of each generated client's rows held out (the generators' default, which ``data.build`` keeps).
TEST_FRACTION = 0.1
_NO_CAP = 2.0**62  # lognormal_sizes' cap without max_size
_LOG_HUGE = 200.0  # e^200 rows: far past any memory, and still a finite float


class PopulationFootprint(NamedTuple):
    """The sizes of a population (built or not); ``exact`` False when they are expectations."""

    num_clients: int
    train_rows: int
    test_rows: int
    largest_client: int  # training rows of the largest client (n_max)
    feature_dim: int
    target_width: int  # t: 1 for labels, k for [N, k] regression targets
    num_classes: int  # 0 for regression
    exact: bool
    feature_shape: tuple | None = None  # a row's shape where it is not (feature_dim,) (images: (28, 28, 1))

    @property
    def row_bytes(self) -> int:
        return (self.feature_dim + self.target_width) * 4

    @property
    def bytes(self) -> int:
        """Host bytes of the population: ``(N + N_test) (d + t) 4``."""
        return (self.train_rows + self.test_rows) * self.row_bytes

    def cohort_block_bytes(self, cohort: int) -> int:
        """Bytes of one streamed cohort block: ``M n_max (d + t) 4`` (``engine.streaming.gather_rows``)."""
        return int(cohort) * self.largest_client * self.row_bytes


def _cap(min_size: int, max_size: int | None) -> float:
    return _NO_CAP if max_size is None else float(max_size - min_size)


def expected_client_size(size_mean: float, size_sigma: float, min_size: int, max_size: int | None = None) -> float:
    """``E[min(X, c)] + m`` of the module docstring: an upper bound on ``E[n_k]``, less than one row above it."""
    c = _cap(min_size, max_size)
    if c <= 0:
        return float(min_size)
    if size_sigma == 0:
        return min(math.exp(min(size_mean, _LOG_HUGE)), c) + min_size
    phi = NormalDist().cdf
    log_c = math.log(c)
    below = phi((log_c - size_mean - size_sigma**2) / size_sigma)
    log_part = size_mean + size_sigma**2 / 2 + (math.log(below) if below > 0 else -math.inf)
    body = math.exp(min(log_part, _LOG_HUGE))
    return body + c * (1.0 - phi((log_c - size_mean) / size_sigma)) + min_size


def client_size_quantile(q: float, size_mean: float, size_sigma: float, min_size: int,
                         max_size: int | None = None) -> int:
    """The ``q``-quantile of ``n_k``: ``min(floor(exp(mu + sigma Phi^-1(q))) + m, M_cap)``."""
    z = NormalDist().inv_cdf(q) if 0 < q < 1 else (math.inf if q >= 1 else -math.inf)
    log_x = size_mean + size_sigma * z if size_sigma > 0 else size_mean
    raw = min(math.exp(min(log_x, _LOG_HUGE)), _cap(min_size, max_size))
    return int(raw) + min_size


def _held(n: int) -> int:
    return math.floor(TEST_FRACTION * n)


def generated_footprint(dataset: str, *, num_clients: int, seed: int = 0, size_mean: float = 4.0,
                        size_sigma: float = 2.0, min_size: int = 50, max_size: int | None = None,
                        num_features: int | None = None, num_outputs: int = 1,
                        components: int = 10) -> PopulationFootprint:
    """The footprint of ``data.build(dataset, ...)`` for a generated dataset, with the same arguments.

    Exact (the sizes drawn as the generator draws them) up to :data:`EXACT_CLIENTS`
    clients, else from the size distribution (module docstring). Takes well under
    a second and ``16 K`` bytes at most.
    """
    if dataset not in ("synthetic", "synthetic-regression", "gaussian-mixture"):
        raise ValueError(f"generated_footprint sizes the generated datasets, not {dataset!r}")
    d = int(num_features or (10 if dataset == "gaussian-mixture" else 60))
    t = int(num_outputs) if dataset == "synthetic-regression" else 1
    classes = {"synthetic": 10, "synthetic-regression": 0, "gaussian-mixture": int(components)}[dataset]
    K = int(num_clients)
    if K <= EXACT_CLIENTS:
        sizes = client_sizes(data_and_partition_seeds(seed)[0], K, size_mean, size_sigma, min_size, max_size)
        held = np.floor(TEST_FRACTION * sizes).astype(np.int64)
        if float(sizes.sum(dtype=np.float64)) < 2.0**62:  # exact integer sums
            total, test = int(sizes.sum()), int(held.sum())
        else:  # past int64: Python integers (such a population is refused anyway)
            total, test = sum(int(v) for v in sizes), sum(int(v) for v in held)
        largest = int(sizes.max())
        return PopulationFootprint(K, total - test, test, largest - _held(largest), d, t, classes, True)
    mean = expected_client_size(size_mean, size_sigma, min_size, max_size)
    total = int(K * mean)
    largest = client_size_quantile(0.5 ** (1.0 / K), size_mean, size_sigma, min_size, max_size)
    return PopulationFootprint(K, total - _held(total), _held(total), largest - _held(largest), d, t, classes, False)


def footprint_of(population) -> PopulationFootprint:
    """The exact footprint of a built :class:`jaxqfl.data.population.Population`."""
    t = int(np.prod(population.y.shape[1:], dtype=np.int64))
    return PopulationFootprint(population.num_clients, population.num_examples, int(population.x_test.shape[0]),
                               int(population.max_count), int(np.prod(population.feature_shape, dtype=np.int64)),
                               t, population.num_classes, True)
