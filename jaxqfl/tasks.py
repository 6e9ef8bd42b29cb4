"""Learning tasks: the per-example loss a client minimises and the metrics reported.

A task is a NamedTuple of two pure functions over a batch of model outputs:

- ``loss(outputs, y) -> [B]`` per-example loss,
- ``metrics(outputs, y) -> dict[str, [B]]`` per-example metrics (averaged by the caller
  over the valid examples of a padded batch).

Classification: softmax cross-entropy ``-log softmax(z)_y`` and 0/1 accuracy.
Regression: squared error ``sum_j (f_j(x) - y_j)^2`` (half of it is *not* taken, so
the centralized reference of a test is plain mean squared error).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax.numpy as jnp
import optax


class Task(NamedTuple):
    name: str
    loss: Callable
    metrics: Callable


def classification() -> Task:
    """Softmax cross-entropy with integer labels; accuracy = 1[argmax z == y]."""

    def loss(outputs, y):
        return optax.softmax_cross_entropy_with_integer_labels(outputs, y.astype(jnp.int32))

    def metrics(outputs, y):
        return {"loss": loss(outputs, y), "accuracy": (jnp.argmax(outputs, -1) == y).astype(jnp.float32)}

    return Task("classification", loss, metrics)


def regression() -> Task:
    """Squared error ``||f(x) - y||^2`` per example (targets of shape [B] or [B, k])."""

    def loss(outputs, y):
        y = y.reshape(outputs.shape[0], -1).astype(outputs.dtype)
        out = outputs.reshape(outputs.shape[0], -1)
        return jnp.sum((out - y) ** 2, axis=-1)

    def metrics(outputs, y):
        return {"loss": loss(outputs, y)}

    return Task("regression", loss, metrics)


def for_num_classes(num_classes: int) -> Task:
    """The task a population implies: classification if it has classes, else regression."""
    return classification() if num_classes > 0 else regression()
