"""Learning tasks: the per-example loss a client minimises and the metrics reported.

A task is a NamedTuple of pure functions over a batch of model outputs:

- ``loss(outputs, y) -> [B]`` per-example loss,
- ``metrics(outputs, y) -> dict[str, [B]]`` per-example metrics; evaluation sums
  them over the valid test rows and divides by the number of test rows ``n``,
- ``finish(y_test) -> (means -> dict)`` or None: called once on the host with the
  test targets, it returns the function that turns those means into the
  reported metrics (for metrics that are not means over examples, like R^2).

Classification: softmax cross-entropy ``-log softmax(z)_y`` and 0/1 accuracy.

Regression, with targets ``y`` of shape ``[n]`` or ``[n, k]`` (``k = 1`` for
``[n]``) and predictions ``f(x)`` of the same size:

    loss_i = sum_j (f_j(x_i) - y_ij)^2                 (half of it is *not* taken)
    SSE    = sum_i loss_i                               (summed on the devices)
    MSE    = SSE / (n k),   RMSE = sqrt(MSE)            (mean over every target entry)
    SST    = sum_ij (y_ij - ybar_j)^2,  ybar_j = (1/n) sum_i y_ij
    R^2    = 1 - SSE / SST

MSE and RMSE average over all ``n k`` target entries, as
``sklearn.metrics.mean_squared_error``. For ``k > 1`` this R^2 pools the outputs
(``sklearn.metrics.r2_score(..., multioutput="variance_weighted")``); for ``k = 1``
it is the usual coefficient of determination. SST depends on the test targets
only, so ``finish`` computes it once, exactly, in float64 on the host (two
passes: the means, then the centred squares); only SSE comes from the devices
(a float32 sum of the per-example losses). When the test targets are constant
(SST = 0) R^2 is undefined and reported as ``None``.

Clustering (k-means), with model outputs ``D [B, K]``, ``D_bk = 1/2 ||x_b - c_k||^2
+ p_k`` (``jaxqfl.models.centroids``; the probe ``p`` is 0):

    a(x)   = argmin_k D_xk           (first index on ties, as ``np.argmin``)
    loss_x = D_{x a(x)}              (the assignment is constant under differentiation)
    inertia on the test rows = sum_x min_k ||x - c_k||^2 = 2 sum_x loss_x

The per-example loss is a *sum* term (1/2 the squared distance, no division by
K or d), so the gradient of a batch's summed loss is exactly the sufficient
statistics of Lloyd's step (counts from the probe, ``n_j c_j - S_j`` for the
centroids; see ``jaxqfl.models.centroids``). Labels are never used for
training; ARI and NMI against them are computed on the host
(``jaxqfl.metrics``, ``jaxqfl.clustering``).

Next-token prediction, with model outputs ``z [B, T, V]`` (logits over a
vocabulary of ``V`` tokens at each of ``T`` positions) and targets ``y [B, T]``
(the token that follows each input position; ``-1`` marks padding), mask
``m_bt = 1[y_bt >= 0]`` and per-token cross-entropy ``l_bt = -log softmax(z_bt)_{y_bt}``:

    loss_b      = sum_t m_bt l_bt / max(sum_t m_bt, 1)     (training: the example's token mean)
    test loss   L = sum_bt m_bt l_bt / sum_bt m_bt           (mean over every non-padding test token)
    accuracy    = sum_bt m_bt 1[argmax z_bt == y_bt] / sum_bt m_bt
    perplexity  = exp(L),   bits per character = L / ln 2   (byte vocabulary: bits per byte)

The test figures are ratios of sums over all test tokens, not means of
per-example means, so a padded (short) window weighs by its real tokens only:
``metrics`` returns the per-example sums and ``finish`` divides them. In
training every window but a text's last is full, so the mean of the examples'
token means is the token mean up to those last windows.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["Task", "classification", "regression", "clustering", "next_token", "default_for", "for_num_classes", "for_population",
           "r2_denominator"]


class Task(NamedTuple):
    name: str
    loss: Callable  # loss(outputs [B, ...], y [B, ...]) -> [B]
    metrics: Callable  # metrics(outputs, y) -> {name: [B]}
    finish: Optional[Callable] = None  # finish(y_test) -> (means: dict[str, float]) -> dict[str, float | None]


def classification() -> Task:
    """Softmax cross-entropy with integer labels; accuracy = 1[argmax z == y]."""

    def loss(outputs, y):
        return optax.softmax_cross_entropy_with_integer_labels(outputs, y.astype(jnp.int32))

    def metrics(outputs, y):
        return {"loss": loss(outputs, y), "accuracy": (jnp.argmax(outputs, -1) == y).astype(jnp.float32)}

    return Task("classification", loss, metrics)


def r2_denominator(y_test) -> float:
    """``SST = sum_ij (y_ij - ybar_j)^2`` of targets ``[n]`` or ``[n, k]``, in float64 (two passes)."""
    y = np.asarray(y_test, dtype=np.float64)
    y = y.reshape(y.shape[0], -1)
    return float(np.sum((y - y.mean(axis=0)) ** 2))


def regression() -> Task:
    """Squared error ``||f(x) - y||^2`` per example (targets [B] or [B, k]); MSE, RMSE, R^2 (module docstring)."""

    def loss(outputs, y):
        y = y.reshape(outputs.shape[0], -1).astype(outputs.dtype)
        out = outputs.reshape(outputs.shape[0], -1)
        return jnp.sum((out - y) ** 2, axis=-1)

    def metrics(outputs, y):
        return {"loss": loss(outputs, y)}

    def finish(y_test):
        y_test = np.asarray(y_test)
        n = y_test.shape[0]
        k = int(np.prod(y_test.shape[1:], dtype=np.int64))
        sst = r2_denominator(y_test)

        def report(means):
            sse = means["loss"] * n  # evaluation divides the device sum by n
            mse = sse / (n * k)
            return {
                **means,
                "mse": mse,
                "rmse": math.sqrt(max(mse, 0.0)),
                "r2": (1.0 - sse / sst) if sst > 0 else None,
            }

        return report

    return Task("regression", loss, metrics, finish)


def clustering() -> Task:
    """k-means: loss = 1/2 squared distance to the nearest centroid; ``inertia`` = the test rows' sum of squares."""
    import jax

    def loss(outputs, y):
        del y
        assigned = jax.lax.stop_gradient(jax.nn.one_hot(jnp.argmin(outputs, axis=-1), outputs.shape[-1],
                                                        dtype=outputs.dtype))
        return jnp.sum(assigned * outputs, axis=-1)

    def metrics(outputs, y):
        per_example = loss(outputs, y)
        return {"loss": per_example, "inertia": 2.0 * per_example}

    def finish(y_test):
        n = int(np.shape(y_test)[0])

        def report(means):  # evaluation divides the device sums by n: inertia is a sum
            return {**means, "inertia": means["inertia"] * n}

        return report

    return Task("clustering", loss, metrics, finish)


def next_token() -> Task:
    """Next-token cross-entropy with a padding mask (targets ``-1``); token accuracy, perplexity, bits/char.

    See the module docstring for the formulas.
    """

    def token_terms(outputs, y):
        y = y.astype(jnp.int32)
        mask = (y >= 0).astype(outputs.dtype)
        per_token = optax.softmax_cross_entropy_with_integer_labels(outputs, jnp.maximum(y, 0))
        return per_token * mask, mask

    def loss(outputs, y):
        per_token, mask = token_terms(outputs, y)
        return jnp.sum(per_token, -1) / jnp.maximum(jnp.sum(mask, -1), 1.0)

    def metrics(outputs, y):
        per_token, mask = token_terms(outputs, y)
        correct = (jnp.argmax(outputs, -1) == y.astype(jnp.int32)).astype(outputs.dtype) * mask
        return {"token_loss_sum": jnp.sum(per_token, -1), "tokens": jnp.sum(mask, -1),
                "correct": jnp.sum(correct, -1)}

    def finish(y_test):
        del y_test

        def report(means):  # means are sums / n; their ratios are the token means
            tokens = means["tokens"]
            mean_loss = means["token_loss_sum"] / tokens if tokens > 0 else float("nan")
            try:
                perplexity = math.exp(mean_loss)
            except OverflowError:
                perplexity = float("inf")
            return {"loss": mean_loss, "accuracy": means["correct"] / tokens if tokens > 0 else float("nan"),
                    "perplexity": perplexity, "bits_per_char": mean_loss / math.log(2.0)}

        return report

    return Task("next-token", loss, metrics, finish)


def for_num_classes(num_classes: int) -> Task:
    """The task a population implies: classification if it has classes, else regression."""
    return classification() if num_classes > 0 else regression()


def default_for(population) -> Task:
    """The task the engine uses when none is given: next-token for next-token data, else by ``num_classes``."""
    if getattr(population, "task", "") == "next-token":
        return next_token()
    return for_num_classes(population.num_classes)


def for_population(population) -> Task:
    """The task object of ``population.task`` ("classification", "regression", "clustering" or "next-token").

    Clustering trains the centroids model (``jaxqfl.models.centroids``) with the
    federated k-means algorithms (``jaxqfl.algorithms.kmeans``).
    """
    name = getattr(population, "task", "") or ("classification" if population.num_classes > 0 else "regression")
    if name == "classification":
        return classification()
    if name == "regression":
        return regression()
    if name == "clustering":
        return clustering()
    if name == "next-token":
        return next_token()
    raise ValueError(f"task must be one of classification, regression, clustering, next-token; got {name!r}")
