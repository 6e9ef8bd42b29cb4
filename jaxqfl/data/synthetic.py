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

Randomness: one ``np.random.SeedSequence(seed)`` spawns a stream for the client
parameters and one stream per client for its examples, so
:func:`synthetic_parameters` with the same arguments returns exactly the
parameters :func:`synthetic` used, and a client's examples depend only on its
own parameters, size and index.

Reference:
    Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith. Federated Optimization in
    Heterogeneous Networks. MLSys 2020 (arXiv:1812.06127).
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

from jaxqfl.data.population import Population

__all__ = ["SyntheticParameters", "synthetic", "synthetic_parameters", "feature_variance"]

#: Exponent of the feature covariance: Sigma_jj = j ** -FEATURE_DECAY.
FEATURE_DECAY = 1.2


class SyntheticParameters(NamedTuple):
    """The per-client draws of Synthetic(alpha, beta); ``K`` clients, ``d`` features, ``C`` classes."""

    weights: np.ndarray  # [K, d, C] float64, W_k
    biases: np.ndarray  # [K, C] float64, b_k
    feature_means: np.ndarray  # [K, d] float64, v_k
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
    the parameters :func:`synthetic` draws with them.
    """
    _validate(alpha, beta, num_clients, num_features, num_classes, size_mean, size_sigma, min_size, max_size)
    params_seq, _ = _streams(seed, num_clients)
    return _draw_parameters(
        np.random.default_rng(params_seq),
        float(alpha),
        float(beta),
        int(num_clients),
        int(num_features),
        int(num_classes),
        float(size_mean),
        float(size_sigma),
        int(min_size),
        max_size,
        bool(iid),
    )


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
    if not _is_real(test_fraction) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    params = synthetic_parameters(
        alpha,
        beta,
        num_clients,
        seed,
        num_features=num_features,
        num_classes=num_classes,
        size_mean=size_mean,
        size_sigma=size_sigma,
        min_size=min_size,
        max_size=max_size,
        iid=iid,
    )
    _, client_seqs = _streams(seed, num_clients)
    std = np.sqrt(params.feature_variance)  # [d]
    xs_train, ys_train, xs_test, ys_test = [], [], [], []
    for k, seq in enumerate(client_seqs):
        rng = np.random.default_rng(seq)
        n = int(params.sizes[k])
        x = params.feature_means[k] + std * rng.standard_normal((n, num_features))  # [n, d]
        y = np.argmax(x @ params.weights[k] + params.biases[k], axis=1)  # [n]; softmax is monotone
        n_train = n - math.floor(test_fraction * n)
        xs_train.append(x[:n_train])
        ys_train.append(y[:n_train])
        xs_test.append(x[n_train:])
        ys_test.append(y[n_train:])
    counts = np.array([len(y) for y in ys_train], dtype=np.int64)
    x_test = np.concatenate(xs_test).astype(np.float32)
    if x_test.shape[0] == 0:
        raise ValueError(
            f"test_fraction={test_fraction} holds out no example from any client (sizes {params.sizes.min()}"
            f"..{params.sizes.max()}): raise test_fraction to at least 1/{params.sizes.max()}"
        )
    name = "synthetic_iid" if iid else f"synthetic({alpha:g},{beta:g})"
    return Population(
        x=np.concatenate(xs_train).astype(np.float32),
        y=np.concatenate(ys_train).astype(np.int32),
        offsets=np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32),
        counts=counts.astype(np.int32),
        x_test=x_test,
        y_test=np.concatenate(ys_test).astype(np.int32),
        num_classes=int(num_classes),
        name=name,
    )


def _streams(seed, num_clients: int):
    """One SeedSequence for the parameters, one per client for its examples."""
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    params_seq, examples_seq = root.spawn(2)
    return params_seq, examples_seq.spawn(num_clients)


def _draw_parameters(
    rng, alpha, beta, num_clients, num_features, num_classes, size_mean, size_sigma, min_size, max_size, iid
) -> SyntheticParameters:
    k, d, c = num_clients, num_features, num_classes
    raw = rng.lognormal(size_mean, size_sigma, k)
    if max_size is not None:
        raw = np.minimum(raw, max_size - min_size)  # cap before the cast: no integer overflow
    sizes = raw.astype(np.int64) + min_size  # [K]
    if iid:
        w = rng.normal(0.0, 1.0, (d, c))
        b = rng.normal(0.0, 1.0, c)
        weights = np.broadcast_to(w, (k, d, c)).copy()
        biases = np.broadcast_to(b, (k, c)).copy()
        means = np.zeros((k, d))
    else:
        u = rng.normal(0.0, alpha, k)  # [K] model mean of each client
        weights = rng.normal(u[:, None, None], 1.0, (k, d, c))
        biases = rng.normal(u[:, None], 1.0, (k, c))
        centres = rng.normal(0.0, beta, k)  # [K] B_k
        means = rng.normal(centres[:, None], 1.0, (k, d))
    return SyntheticParameters(weights, biases, means, feature_variance(d), sizes)


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
