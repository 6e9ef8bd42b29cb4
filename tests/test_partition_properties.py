"""Partition and hold-out sizes (issue 21): what a partitioner checks is what it returns; no row lost or duplicated."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxqfl import data
from jaxqfl.data import partition


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), alpha=st.sampled_from([0.05, 0.3, 2.0]), num_clients=st.integers(2, 12),
       min_size=st.integers(1, 8))
def test_dirichlet_min_size_is_checked_on_the_counts_it_returns(monkeypatch_counts, seed, alpha, num_clients,
                                                                min_size):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 120)
    monkeypatch_counts.clear()
    try:
        parts = partition.dirichlet(labels, num_clients, alpha, seed=seed, min_size=min_size, max_tries=64)
    except ValueError:
        return  # gave up: nothing returned, nothing to compare
    sizes = np.array([p.size for p in parts])
    assert sizes.min() >= min_size
    # the accepted draw's per-client counts (the ones the acceptance test saw) are the returned sizes
    accepted = [c for c in monkeypatch_counts[-1] if c.sum(axis=0).min() >= min_size][0]  # first accepted, [K, C]
    np.testing.assert_array_equal(accepted.sum(axis=0), sizes)
    np.testing.assert_array_equal(accepted, np.stack([np.bincount(labels[p], minlength=4) for p in parts], 1))
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(labels.size))


@pytest.fixture(scope="module")
def monkeypatch_counts():
    """Record every batch of cut counts ``dirichlet`` computes (``[b, K, C]``)."""
    seen = []
    original = partition._counts_from_shares

    def spy(shares, class_sizes):
        counts = original(shares, class_sizes)
        seen.append(counts.copy())
        return counts

    partition._counts_from_shares = spy
    yield seen
    partition._counts_from_shares = original


@settings(max_examples=30, deadline=None)
@given(n=st.integers(12, 300), test_fraction=st.floats(0.01, 0.95), name=st.sampled_from(
    ["iid", "dirichlet", "shards", "quantity"]), seed=st.integers(0, 1000))
def test_from_arrays_pooled_hold_out_is_floor_of_fraction_times_n(n, test_fraction, name, seed):
    held = math.floor(test_fraction * n)
    if held == 0 or n - held < 8:  # refused (no test row) or too few rows left for the clients
        return
    rng = np.random.default_rng(seed)
    x = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)  # row i holds i: rows identifiable
    y = rng.integers(0, 3, n)
    y[:3] = (0, 1, 2)
    pop = data.from_arrays(x, y, partition=name, num_clients=2, test_fraction=test_fraction, seed=seed,
                           alpha=1.0, shards_per_client=1)
    assert len(pop.x_test) == len(pop.y_test) == held
    assert int(np.sum(pop.counts)) + held == n
    ids = np.concatenate([pop.x[:, 0], pop.x_test[:, 0]]).astype(np.int64)
    np.testing.assert_array_equal(np.sort(ids), np.arange(n))  # every row once: train and test disjoint
    np.testing.assert_array_equal(np.concatenate([pop.y, pop.y_test]), y[ids])
