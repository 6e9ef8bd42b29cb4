"""Giving every client its own test rows from a pooled test set, matched to its labels.

MNIST's and CIFAR-10's official test sets (and a user's npz without test
clients) belong to no client. ``split_test_by_labels`` partitions such a pooled
test set over the clients so that each client's test rows follow its training
label distribution (the per-client test sets of FedRep's and Ditto's
experiments): for every class l, the test rows of class l, in a random order
(``seed``), go to the clients in proportion to their training counts of l,

    t_{c,l} = largest-remainder rounding of  |test rows of l| * n_{c,l} / sum_c' n_{c',l},

so client c holds ``sum_l t_{c,l}`` test rows. Every test row goes to exactly
one client (the rows of a class no client trains on go to none and count in
the pooled metrics only), so the pooled metrics are those of the same rows:
only their order changes (client-major, as ``Population.test_counts`` wants).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxqfl.data.population import Population


def largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Non-negative integers summing to ``total``, proportional to ``weights`` (Hamilton's method; ties by index)."""
    share = total * weights / weights.sum()
    out = np.floor(share).astype(np.int64)
    left = total - int(out.sum())
    out[np.argsort(-(share - out), kind="stable")[:left]] += 1
    return out


def split_test_by_labels(population: Population, seed: int = 0) -> Population:
    """``population`` whose pooled test set is partitioned over its clients by label (module docstring)."""
    if population.task not in ("classification", "clustering") or population.num_classes < 1:
        raise ValueError(f"splitting the test set by labels needs class labels; the {population.task} population "
                         f"{population.name!r} has none: give each client its own test rows instead")
    if population.test_counts is not None:
        raise ValueError(f"population {population.name!r} already gives each client its own test rows")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    C, K = population.num_clients, population.num_classes
    y = np.asarray(population.y).astype(np.int64)  # in [0, K): a Population checks its labels when it is made
    owner_of_row = np.repeat(np.arange(C), population.counts)
    # Per class, the clients' training counts, for the classes of the test rows only: sparse (classes x clients
    # pairs that occur), so a population with many classes (a label of 10**9) costs its rows, not C x K.
    pair, pair_count = np.unique(y * C + owner_of_row, return_counts=True)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x7E57]))
    owner = np.full(population.x_test.shape[0], C, np.int64)  # C: no client
    y_test = np.asarray(population.y_test)
    for label in np.unique(y_test[(y_test >= 0) & (y_test < K)]).tolist():  # increasing: the order of the draws
        rows = rng.permutation(np.flatnonzero(y_test == label))
        lo, hi = np.searchsorted(pair, [label * C, (label + 1) * C])
        if hi == lo or rows.size == 0:
            continue
        train = np.zeros(C, np.float64)
        train[pair[lo:hi] - label * C] = pair_count[lo:hi]
        owner[rows] = np.repeat(np.arange(C), largest_remainder(rows.size, train))
    order = np.argsort(owner, kind="stable")
    test_counts = np.bincount(owner, minlength=C + 1)[:C].astype(np.int32)
    return dataclasses.replace(population, x_test=population.x_test[order], y_test=population.y_test[order],
                               test_counts=test_counts, name=f"{population.name}+client-test")
