"""Independent NumPy (float64) implementations of the robust rules, for the tests.

Each takes the VALID rows only: ``x`` [n, P] (one flattened update per row) and weights ``w`` [n].
"""
import numpy as np


def median(x, w=None):
    return np.median(x, axis=0)


def trimmed_mean(x, beta):
    n = len(x)
    b = int(np.floor(beta * n))
    return np.sort(x, axis=0)[b:n - b].mean(axis=0)


def krum_scores(x, f):
    n = len(x)
    k = max(n - f - 2, 1)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    scores = []
    for i in range(n):
        others = np.sort(np.delete(d[i], i))
        scores.append(others[:k].sum())
    return np.array(scores)


def multi_krum(x, beta, m=None):
    n = len(x)
    f = int(np.floor(beta * n))
    m = n - f if m is None else min(max(m, 1), n)
    chosen = np.argsort(krum_scores(x, f), kind="stable")[:m]
    return x[chosen].mean(axis=0)


def bulyan(x, beta):
    n = len(x)
    f = max(min(int(np.floor(beta * n)), (n - 3) // 4), 0)
    remaining = list(range(n))
    selected = []
    for _ in range(n - 2 * f):
        scores = krum_scores(x[remaining], f)
        best = remaining[int(np.argmin(scores))]
        selected.append(best)
        remaining.remove(best)
    s = x[selected]
    theta = len(selected)
    keep = max(theta - 2 * f, 1)
    med = np.median(s, axis=0)
    out = np.empty(x.shape[1])
    for k in range(x.shape[1]):
        nearest = s[np.argsort(np.abs(s[:, k] - med[k]), kind="stable")[:keep], k]
        out[k] = nearest.mean()
    return out


def geometric_median(x, w, num_iters=8, nu=1e-6):
    a = w / w.sum()
    v = np.median(x, axis=0)
    for _ in range(num_iters):
        b = a / np.maximum(nu, np.linalg.norm(x - v, axis=1))
        v = (b[:, None] * x).sum(0) / b.sum()
    return v


def clip(z, r):
    return z * min(1.0, r / max(np.linalg.norm(z), 1e-30))


def norm_bound(x, w, radius):
    return sum(wi * clip(xi, radius) for xi, wi in zip(x, w)) / w.sum()


def centered_clip(x, w, radius, center):
    return center + sum(wi * clip(xi - center, radius) for xi, wi in zip(x, w)) / w.sum()
