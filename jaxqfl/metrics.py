"""Clustering metrics on the host (NumPy): inertia, adjusted Rand index, normalised mutual information.

For true labels ``u`` and predicted clusters ``v`` of ``n`` points, the
contingency table is ``n_ij = #{points with u = i and v = j}``, with row sums
``a_i`` and column sums ``b_j``.

Adjusted Rand index (Hubert and Arabie 1985), with ``C(m) = m (m - 1) / 2`` pairs:

    index    = sum_ij C(n_ij)
    expected = sum_i C(a_i) * sum_j C(b_j) / C(n)
    maximum  = (sum_i C(a_i) + sum_j C(b_j)) / 2
    ARI      = (index - expected) / (maximum - expected)

1 for identical partitions (up to renaming), about 0 for independent ones; when
``maximum == expected`` (both partitions trivial: one cluster each, or all
singletons) the partitions agree and ARI is 1.

Normalised mutual information, arithmetic normalisation (Strehl and Ghosh 2002;
``sklearn.metrics.normalized_mutual_info_score``'s default), natural logarithms:

    MI   = sum_ij (n_ij / n) log(n n_ij / (a_i b_j))
    H(u) = -sum_i (a_i / n) log(a_i / n),   H(v) likewise
    NMI  = MI / ((H(u) + H(v)) / 2)

1 when both hold a single cluster, and 0 when ``MI = 0`` otherwise.

Inertia (the k-means objective, Lloyd 1982): ``sum_i min_c ||x_i - mu_c||^2``.

References:
    Hubert, Arabie. Comparing partitions. Journal of Classification 2, 1985.
    Strehl, Ghosh. Cluster ensembles. JMLR 3, 2002.
    Vinh, Epps, Bailey. Information theoretic measures for clusterings
    comparison. JMLR 11, 2010.
"""
from __future__ import annotations

import numpy as np

__all__ = ["contingency_table", "adjusted_rand_index", "normalized_mutual_info", "inertia", "nearest_centroid"]

#: Rows of ``x`` compared with the centroids at a time (bounds the [rows, K] distance temporary).
_ROWS = 1 << 12


def contingency_table(labels_true, labels_pred) -> np.ndarray:
    """``[I, J]`` int64 counts ``n_ij`` over the distinct values of the two labelings (any hashable dtype)."""
    u, v = np.asarray(labels_true), np.asarray(labels_pred)
    if u.ndim != 1 or u.shape != v.shape:
        raise ValueError(f"labels must be two 1-D arrays of one length, got shapes {u.shape} and {v.shape}")
    if u.size == 0:
        raise ValueError("labels are empty: a partition of no points has no score")
    _, ui = np.unique(u, return_inverse=True)
    _, vi = np.unique(v, return_inverse=True)
    ui, vi = ui.reshape(-1), vi.reshape(-1)
    cols = int(vi.max()) + 1
    return np.bincount(ui * cols + vi, minlength=(int(ui.max()) + 1) * cols).reshape(-1, cols).astype(np.int64)


def _pairs(m: np.ndarray) -> np.ndarray:
    m = m.astype(np.float64)
    return m * (m - 1) / 2


def adjusted_rand_index(labels_true, labels_pred) -> float:
    """Adjusted Rand index of two labelings of the same points (module docstring)."""
    table = contingency_table(labels_true, labels_pred)
    n = int(table.sum())
    index = float(_pairs(table).sum())
    sum_a, sum_b = float(_pairs(table.sum(1)).sum()), float(_pairs(table.sum(0)).sum())
    expected = sum_a * sum_b / float(_pairs(np.array(n))) if n > 1 else 0.0
    maximum = (sum_a + sum_b) / 2
    if maximum == expected:
        return 1.0
    return (index - expected) / (maximum - expected)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-np.sum(p * np.log(p)))


def normalized_mutual_info(labels_true, labels_pred) -> float:
    """Normalised mutual information, arithmetic mean of the entropies (module docstring)."""
    table = contingency_table(labels_true, labels_pred)
    if table.shape[0] == table.shape[1] == 1:
        return 1.0
    n = float(table.sum())
    a, b = table.sum(1).astype(np.float64), table.sum(0).astype(np.float64)
    i, j = np.nonzero(table)
    nij = table[i, j].astype(np.float64)
    mi = float(np.sum(nij / n * (np.log(nij) + np.log(n) - np.log(a[i]) - np.log(b[j]))))
    mi = max(mi, 0.0)  # rounding can leave -1e-17 for independent labelings
    if mi == 0.0:
        return 0.0
    # NMI lies in [0, 1]; float rounding of identical partitions can give 1 + 2e-16
    return float(min(1.0, mi / max((_entropy(a) + _entropy(b)) / 2, np.finfo(np.float64).eps)))


def nearest_centroid(x, centroids) -> np.ndarray:
    """``[n]`` int: the index of the nearest centroid (squared Euclidean) of every row of ``x``."""
    x, c = _check_points(x, centroids)
    out = np.empty(x.shape[0], np.int64)
    for s in range(0, x.shape[0], _ROWS):
        out[s:s + _ROWS] = np.argmin(_squared_distances(x[s:s + _ROWS], c), axis=1)
    return out


def inertia(x, centroids) -> float:
    """``sum_i min_c ||x_i - mu_c||^2`` in float64 over the rows of ``x`` ``[n, d]`` and ``centroids`` ``[K, d]``."""
    x, c = _check_points(x, centroids)
    total = 0.0
    for s in range(0, x.shape[0], _ROWS):
        total += float(np.sum(np.min(_squared_distances(x[s:s + _ROWS], c), axis=1)))
    return total


def _squared_distances(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``[rows, K]`` ``||x - c||^2`` (direct differences, no cancellation of ``|x|^2 - 2 x.c + |c|^2``)."""
    return np.sum((x.astype(np.float64)[:, None, :] - c[None, :, :]) ** 2, axis=-1)


def _check_points(x, centroids):
    x = np.asarray(x)  # cast to float64 a chunk at a time
    c = np.asarray(centroids, np.float64)
    x = x.reshape(x.shape[0], -1) if x.ndim > 1 else x[:, None]
    c = c.reshape(c.shape[0], -1) if c.ndim > 1 else c[:, None]
    if x.shape[1] != c.shape[1] or c.shape[0] == 0:
        raise ValueError(f"points of shape {x.shape} and centroids of shape {c.shape}: need [n, d] and [K >= 1, d]")
    return x, c
