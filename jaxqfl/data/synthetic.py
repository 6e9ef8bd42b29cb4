"""Synthetic(alpha, beta): the heterogeneous logistic-regression population of FedProx.

Li et al. 2020 (FedProx), Section 5.1, as their generator (also shipped with
LEAF) draws it. For every client ``k`` of ``K``, with ``d = num_features``
(60) and ``C = num_classes`` (10), and ``N(m, s)`` a normal of mean ``m`` and
*standard deviation* ``s`` (the reference generator passes alpha and beta as
``numpy.random.normal``'s scale):

    u_k ~ N(0, alpha)                    model heterogeneity
    W_k[j, c] ~ N(u_k, 1),  b_k[c] ~ N(u_k, 1)          W_k: [d, C], b_k: [C]
    B_k ~ N(0, beta)                     feature heterogeneity
    v_k[j] ~ N(B_k, 1)                   v_k: [d]
    x ~ N(v_k, Sigma),  Sigma = diag(j^-1.2 for j = 1..d)
    y = argmax_c softmax(W_k^T x + b_k)_c = argmax_c (W_k^T x + b_k)_c
    n_k = floor(LogNormal(size_mean, size_sigma)) + min_size   (optionally capped at max_size)

``alpha`` controls how much the clients' labelling models differ, ``beta`` how
much their feature distributions differ; ``Synthetic(0, 0)`` still has a model
per client. The IID control (``iid=True``, the paper's Synthetic-IID) shares one
``W, b ~ N(0, 1)`` among all clients and draws every client's ``x ~ N(0, Sigma)``;
``alpha`` and ``beta`` are then unused.

Each client's examples are split into train and test: the last
``floor(test_fraction * n_k)`` of them are its test rows (examples are IID
within a client, so this is a random split). The clients' training rows form the
federated population, in the natural partition (client k's data is client k's);
the pooled test rows are its held-out test set.

Generation is streamed (:mod:`jaxqfl.data.generate`): sizes first, then the
clients in chunks, each chunk's models and rows drawn together in float32
(the labels' logits in float64), written straight into the float32 population.
Memory is the population plus one chunk, so a million clients fit whenever
their rows do; :func:`synthetic_parameters` (which returns every client's model,
``O(K d C)`` floats) is for inspection and tests.

Randomness: ``np.random.SeedSequence(seed)`` has three children: the sizes, the
shared model of the IID control, and the chunks (chunk ``j`` draws from the
chunk sequence's ``j``-th child: first its clients' models, then their rows).
So :func:`synthetic_parameters` with the same arguments returns exactly the
parameters :func:`synthetic` used. (Before the streamed generator, a seed drew
other numbers from the same law.)

:func:`synthetic_regression` is the regression counterpart: the same clients,
features and heterogeneity, with real targets ``y = W_k^T x + b_k + noise * e``,
``e ~ N(0, I)``, ``W_k: [d, k_out]`` (targets ``[N]`` for ``k_out = 1``, else ``[N, k_out]``).

Reference:
    Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith. Federated Optimization in
    Heterogeneous Networks. MLSys 2020 (arXiv:1812.06127).
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

from jaxqfl.data.generate import check_test_rows, child_seed, chunk_bounds, chunk_rng, client_sizes, fill_population
from jaxqfl.data.population import Population

__all__ = ["SyntheticParameters", "synthetic", "synthetic_parameters", "synthetic_regression", "feature_variance"]

#: Exponent of the feature covariance: Sigma_jj = j ** -FEATURE_DECAY.
FEATURE_DECAY = 1.2


class SyntheticParameters(NamedTuple):
    """The per-client draws of Synthetic(alpha, beta); ``K`` clients, ``d`` features, ``C`` classes."""

    weights: np.ndarray  # [K, d, C] float64 (drawn in float32), W_k
    biases: np.ndarray  # [K, C] float64 (drawn in float32), b_k
    feature_means: np.ndarray  # [K, d] float64 (drawn in float32), v_k
    feature_variance: np.ndarray  # [d] float64, diag(Sigma) = j ** -1.2
    sizes: np.ndarray  # [K] int64, n_k (train + test)


def feature_variance(num_features: int) -> np.ndarray:
    """``[d]``: the diagonal of Sigma, ``Sigma_jj = j^-1.2`` for ``j = 1..d``."""
    return np.arange(1, num_features + 1, dtype=np.float64) ** -FEATURE_DECAY


def synthetic_parameters(
    alpha: float,
    beta: float,
    num_clients: int,
    seed,
    *,
    num_features: int = 60,
    num_classes: int = 10,
    size_mean: float = 4.0,
    size_sigma: float = 2.0,
    min_size: int = 50,
    max_size: int | None = None,
    iid: bool = False,
) -> SyntheticParameters:
    """Draw the client models, feature means and sizes of Synthetic(alpha, beta) (see module docstring).

    Same arguments as :func:`synthetic` (less ``test_fraction``), same result as
    the parameters :func:`synthetic` draws with them. Holds ``K d C`` float64s.
    """
    _validate(alpha, beta, num_clients, num_features, num_classes, size_mean, size_sigma, min_size, max_size)
    sizes, shared, chunks = _sizes_and_streams(seed, num_clients, size_mean, size_sigma, min_size, max_size)
    draw = _model_drawer(float(alpha), float(beta), int(num_features), int(num_classes), bool(iid), shared)
    parts = [draw(chunk_rng(chunks, j), hi - lo) for j, (lo, hi) in enumerate(chunk_bounds(sizes))]
    weights, biases, means = (np.concatenate(p).astype(np.float64) for p in zip(*parts))
    return SyntheticParameters(weights, biases, means, feature_variance(int(num_features)), sizes)


def synthetic(
    alpha: float,
    beta: float,
    num_clients: int,
    seed,
    *,
    num_features: int = 60,
    num_classes: int = 10,
    size_mean: float = 4.0,
    size_sigma: float = 2.0,
    min_size: int = 50,
    max_size: int | None = None,
    test_fraction: float = 0.1,
    iid: bool = False,
) -> Population:
    """Generate Synthetic(alpha, beta) (Li et al. 2020) as a :class:`Population` (see module docstring).

    Args:
        alpha: std of the clients' model means ``u_k``, ``>= 0``.
        beta: std of the clients' feature-mean centres ``B_k``, ``>= 0``.
        num_clients: ``K >= 1``.
        seed: seed of ``np.random.SeedSequence``.
        num_features: ``d >= 1`` (60 in the paper).
        num_classes: ``C >= 2`` (10 in the paper).
        size_mean, size_sigma: parameters of the log-normal client sizes (4, 2 in the paper).
        min_size: added to every size (50 in the paper), ``>= 1``.
        max_size: optional cap on a client's size (train + test), ``>= min_size``.
        test_fraction: share of each client's examples held out, in ``(0, 1)``;
            client k holds out ``floor(test_fraction * n_k)``, and the pooled
            test set must not be empty.
        iid: the Synthetic-IID control instead (alpha and beta unused).

    Returns:
        The population: ``x`` float32 ``[N, d]``, ``y`` int32 ``[N]``, client k
        holding its own training rows; ``x_test, y_test`` the pooled test rows.
    """

    def labels(x, weights, biases, rng):  # softmax is monotone: the label is the argmax of the logits
        return np.argmax(np.matmul(x.astype(np.float64), weights) + biases[:, None, :], axis=-1)

    name = "synthetic_iid" if iid else f"synthetic({alpha:g},{beta:g})"
    return _generate(alpha, beta, num_clients, seed, num_features, num_classes, size_mean, size_sigma, min_size,
                     max_size, test_fraction, iid, labels, (), np.int32, num_classes, name, "classification")


def synthetic_regression(
    alpha: float,
    beta: float,
    num_clients: int,
    seed,
    *,
    num_features: int = 60,
    num_outputs: int = 1,
    noise: float = 0.5,
    size_mean: float = 4.0,
    size_sigma: float = 2.0,
    min_size: int = 50,
    max_size: int | None = None,
    test_fraction: float = 0.1,
    iid: bool = False,
) -> Population:
    """Synthetic(alpha, beta) with linear-regression targets (module docstring), a :class:`Population`.

    Client ``k`` draws ``u_k, W_k [d, k_out], b_k, v_k`` and its features exactly
    as Synthetic(alpha, beta) does (``alpha``: model heterogeneity, ``beta``:
    feature heterogeneity; ``iid=True``: one shared model and ``x ~ N(0, Sigma)``)
    and labels each row with

        y = W_k^T x + b_k + noise * e,   e ~ N(0, I_k_out).

    Args:
        num_outputs: ``k_out >= 1``; targets ``[N]`` when 1, else ``[N, k_out]``.
        noise: standard deviation of the target noise, ``>= 0``.
        the rest: as :func:`synthetic`.

    Returns:
        A regression population (``num_classes = 0``, ``task = "regression"``),
        ``y`` float32.
    """
    if not _is_real(noise) or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    if not isinstance(num_outputs, numbers.Integral) or isinstance(num_outputs, bool) or num_outputs < 1:
        raise ValueError(f"num_outputs must be an integer >= 1, got {num_outputs!r}")
    squeeze = num_outputs == 1

    def targets(x, weights, biases, rng):
        y = np.matmul(x.astype(np.float64), weights) + biases[:, None, :]  # [g, s, k_out]
        y += noise * rng.standard_normal(y.shape)
        return (y[..., 0] if squeeze else y).astype(np.float32)

    name = "synthetic_regression_iid" if iid else f"synthetic_regression({alpha:g},{beta:g})"
    shape = () if squeeze else (int(num_outputs),)
    # num_classes=2 passes the shared validation; the models have num_outputs columns.
    return _generate(alpha, beta, num_clients, seed, num_features, int(num_outputs), size_mean, size_sigma, min_size,
                     max_size, test_fraction, iid, targets, shape, np.float32, 0, name, "regression",
                     classes_checked=False)


def _generate(alpha, beta, num_clients, seed, num_features, num_columns, size_mean, size_sigma, min_size, max_size,
              test_fraction, iid, label_fn, target_shape, target_dtype, num_classes, name, task,
              classes_checked: bool = True) -> Population:
    """The shared streamed generator of :func:`synthetic` and :func:`synthetic_regression`."""
    if not _is_real(test_fraction) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    _validate(alpha, beta, num_clients, num_features, num_columns if classes_checked else 2, size_mean, size_sigma,
              min_size, max_size)
    sizes, shared, chunks = _sizes_and_streams(seed, num_clients, size_mean, size_sigma, min_size, max_size)
    check_test_rows(test_fraction, sizes)
    d = int(num_features)
    draw_models = _model_drawer(float(alpha), float(beta), d, int(num_columns), bool(iid), shared)
    std = np.sqrt(feature_variance(d)).astype(np.float32)  # [d]

    def draw_chunk(rng, lo, hi):
        weights, biases, means = draw_models(rng, hi - lo)  # [k, d, C], [k, C], [k, d]
        n = sizes[lo:hi]
        client = np.repeat(np.arange(hi - lo), n)  # [R] chunk-local client of each row
        x = rng.standard_normal((client.size, d), dtype=np.float32)  # [R, d]
        x *= std
        x += means.astype(np.float32)[client]
        y = np.empty((client.size,) + target_shape, target_dtype)
        starts = np.cumsum(n) - n
        for size in np.unique(n):  # the clients of one size together: a batched matmul
            group = np.flatnonzero(n == size)
            rows = starts[group][:, None] + np.arange(size)  # [g, size]
            y[rows] = label_fn(x[rows], weights[group].astype(np.float64), biases[group].astype(np.float64), rng)
        return x, y

    x, y, counts, x_test, y_test, test_counts = fill_population(sizes, test_fraction, d, target_shape, target_dtype, chunks,
                                                   draw_chunk)
    return Population(
        x=x,
        y=y,
        offsets=np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32),
        counts=counts.astype(np.int32),
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        name=name,
        task=task,
        test_counts=test_counts.astype(np.int32),
    )


def _sizes_and_streams(seed, num_clients, size_mean, size_sigma, min_size, max_size):
    """Client sizes (from the first child of the seed), and the shared-model and chunk sequences."""
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    sizes = client_sizes(root, num_clients, size_mean, size_sigma, min_size, max_size)
    return sizes, child_seed(root, 1), child_seed(root, 2)


def _model_drawer(alpha, beta, d, c, iid, shared_seq):
    """``draw(rng, k) -> (W [k, d, c], b [k, c], v [k, d])`` float32, the models of ``k`` clients.

    ``N(m, 1)`` draws are ``m + z`` with ``z`` a float32 standard normal.
    """
    f32 = np.float32
    if iid:
        rng = np.random.default_rng(shared_seq)
        w = rng.standard_normal((d, c), dtype=f32)
        b = rng.standard_normal(c, dtype=f32)

        def draw_iid(_, k):
            return np.broadcast_to(w, (k, d, c)), np.broadcast_to(b, (k, c)), np.zeros((k, d), f32)

        return draw_iid

    def draw(rng, k):
        u = (alpha * rng.standard_normal(k)).astype(f32)  # [k] model mean of each client
        weights = rng.standard_normal((k, d, c), dtype=f32) + u[:, None, None]
        biases = rng.standard_normal((k, c), dtype=f32) + u[:, None]
        centres = (beta * rng.standard_normal(k)).astype(f32)  # [k] B_k
        means = rng.standard_normal((k, d), dtype=f32) + centres[:, None]
        return weights, biases, means

    return draw


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _validate(alpha, beta, num_clients, num_features, num_classes, size_mean, size_sigma, min_size, max_size):
    for name, value in (("alpha", alpha), ("beta", beta), ("size_sigma", size_sigma)):
        if not _is_real(value) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not _is_real(size_mean) or not math.isfinite(size_mean):
        raise ValueError(f"size_mean must be a finite number, got {size_mean!r}")
    for name, value, lowest in (
        ("num_clients", num_clients, 1),
        ("num_features", num_features, 1),
        ("num_classes", num_classes, 2),
        ("min_size", min_size, 1),
    ):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < lowest:
            raise ValueError(f"{name} must be an integer >= {lowest}, got {value!r}")
    if max_size is not None and (
        not isinstance(max_size, numbers.Integral) or isinstance(max_size, bool) or max_size < min_size
    ):
        raise ValueError(f"max_size must be None or an integer >= min_size={min_size}, got {max_size!r}")
