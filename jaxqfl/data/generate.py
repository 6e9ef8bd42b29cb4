"""Generated populations in bounded memory: clients drawn chunk by chunk straight into CSR arrays.

The generators (:mod:`jaxqfl.data.synthetic`, :mod:`jaxqfl.data.mixture`) draw
every client's size first (``K`` integers), allocate the float32 output arrays
once, and then draw the clients in *chunks* (at most :data:`CHUNK_CLIENTS`
clients and, unless one client alone is larger, :data:`CHUNK_ROWS` rows). A
chunk's per-client parameters and rows are temporaries of that size, so the
peak memory is the population itself plus ``O(CHUNK_ROWS x features)``, for
any number of clients: no ``[K, d, C]`` parameter array and no float64 copy of
the data exists at once.

Client ``k`` holds out the last ``floor(test_fraction * n_k)`` of its ``n_k``
rows (rows are i.i.d. within a client, so this is a random split); the pooled
held-out rows are the test set.

Randomness: chunk ``j`` draws from ``default_rng(SeedSequence(entropy,
spawn_key=chunks.spawn_key + (j,)))``, i.e. the ``j``-th child of the
generator's ``chunks`` sequence, without materialising ``K`` children. The
chunk boundaries are a function of the sizes and the two constants above, so a
seed gives the same population on every machine.
"""
from __future__ import annotations

from typing import Callable, Iterator

import math

import numpy as np

__all__ = [
    "CHUNK_CLIENTS", "CHUNK_ROWS", "check_test_rows", "child_seed", "chunk_bounds", "chunk_rng", "client_sizes",
    "fill_population", "lognormal_sizes",
]

#: Most clients drawn together.
CHUNK_CLIENTS = 4096
#: Most rows drawn together (a single larger client is drawn alone).
CHUNK_ROWS = 1 << 17


def chunk_bounds(sizes: np.ndarray) -> Iterator[tuple[int, int]]:
    """``(lo, hi)`` client ranges: <= CHUNK_CLIENTS clients and <= CHUNK_ROWS rows (or one client)."""
    k = sizes.shape[0]
    ends = np.cumsum(sizes, dtype=np.int64)
    lo = 0
    while lo < k:
        base = ends[lo - 1] if lo else 0
        hi = int(np.searchsorted(ends, base + CHUNK_ROWS, side="right"))
        hi = min(max(hi, lo + 1), lo + CHUNK_CLIENTS, k)
        yield lo, hi
        lo = hi


def chunk_rng(chunks: np.random.SeedSequence, j: int) -> np.random.Generator:
    """The generator of chunk ``j``: the ``j``-th child of ``chunks`` (as ``chunks.spawn`` would make it)."""
    child = np.random.SeedSequence(chunks.entropy, spawn_key=tuple(chunks.spawn_key) + (j,),
                                   pool_size=chunks.pool_size)
    return np.random.default_rng(child)


def fill_population(
    sizes: np.ndarray,
    test_fraction: float,
    num_features: int,
    target_shape: tuple[int, ...],
    target_dtype,
    chunks: np.random.SeedSequence,
    draw_chunk: Callable,
):
    """Draw every chunk with ``draw_chunk`` and split it into train and test rows.

    ``draw_chunk(rng, lo, hi) -> (x [R, d] float32, y [R, *target_shape])`` returns
    clients ``lo..hi-1``'s rows, client-major, ``R = sizes[lo:hi].sum()``.

    Returns:
        ``(x, y, counts, x_test, y_test, test_counts)``: training rows client-major,
        the per-client training counts, the test rows (client-major) and the
        per-client test counts.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    held = np.floor(test_fraction * sizes).astype(np.int64)  # [K] test rows of each client
    train = sizes - held
    n_train, n_test = int(train.sum()), int(held.sum())
    x = np.empty((n_train, num_features), np.float32)
    y = np.empty((n_train,) + tuple(target_shape), target_dtype)
    x_test = np.empty((n_test, num_features), np.float32)
    y_test = np.empty((n_test,) + tuple(target_shape), target_dtype)
    at_train = at_test = 0
    for j, (lo, hi) in enumerate(chunk_bounds(sizes)):
        xb, yb = draw_chunk(chunk_rng(chunks, j), lo, hi)
        n = sizes[lo:hi]
        position = np.arange(xb.shape[0]) - np.repeat(np.cumsum(n) - n, n)  # row index inside its client
        is_test = position >= np.repeat(train[lo:hi], n)
        r_train, r_test = int(train[lo:hi].sum()), int(held[lo:hi].sum())
        x[at_train:at_train + r_train] = xb[~is_test]
        y[at_train:at_train + r_train] = yb[~is_test]
        x_test[at_test:at_test + r_test] = xb[is_test]
        y_test[at_test:at_test + r_test] = yb[is_test]
        at_train += r_train
        at_test += r_test
    return x, y, train, x_test, y_test, held


def check_test_rows(test_fraction: float, sizes: np.ndarray) -> None:
    """Refuse a ``test_fraction`` that holds out no row of any client."""
    if not np.any(np.floor(test_fraction * sizes) > 0):
        raise ValueError(
            f"test_fraction={test_fraction} holds out no example from any client (sizes {sizes.min()}"
            f"..{sizes.max()}): give some client at least {math.ceil(1 / test_fraction)} rows (jaxqfl run holds "
            f"out test_fraction=0.1: raise --min-client-size or --client-size-mean), or, in Python, pass "
            f"test_fraction of at least 1/{sizes.max()}"
        )


def lognormal_sizes(rng, num_clients, size_mean, size_sigma, min_size, max_size) -> np.ndarray:
    """``n_k = floor(LogNormal(size_mean, size_sigma)) + min_size``, capped at ``max_size`` (LEAF's rule)."""
    raw = rng.lognormal(size_mean, size_sigma, num_clients)
    if max_size is not None:
        raw = np.minimum(raw, max_size - min_size)  # cap before the cast: no integer overflow
    else:
        raw = np.minimum(raw, 2.0**62)
    return raw.astype(np.int64) + min_size



def child_seed(seq: np.random.SeedSequence, i: int) -> np.random.SeedSequence:
    """The ``i``-th child of ``seq`` (what ``seq.spawn`` would give), without changing ``seq``."""
    return np.random.SeedSequence(seq.entropy, spawn_key=tuple(seq.spawn_key) + (i,), pool_size=seq.pool_size)


def client_sizes(seed, num_clients, size_mean, size_sigma, min_size, max_size) -> np.ndarray:
    """``[K]`` int64: the sizes a generator seeded with ``seed`` draws, from its first child (``lognormal_sizes``).

    The generators (synthetic, synthetic-regression, gaussian-mixture) and the
    memory estimate (:mod:`jaxqfl.data.footprint`) both draw them here, so the
    estimate sees the very sizes the population will have.
    """
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    return lognormal_sizes(np.random.default_rng(child_seed(root, 0)), int(num_clients), float(size_mean),
                           float(size_sigma), int(min_size), max_size)
