"""Running statistics (BatchNorm's ``batch_stats``) as model state, kept per client or averaged.

A model with running statistics holds them in its params dict under the
reserved top-level key :data:`STATS` (``'batch_stats'``), beside its trainable
parameters, and gives the engine a third function::

    train_apply(params, x, *, key) -> (outputs, new_stats)

the training-mode forward (batch statistics normalise the batch; the running
averages are updated, e.g. Flax's ``m <- momentum m + (1 - momentum) mean_B``).
In each local step the engine takes the gradient of the loss through
``train_apply`` and then *sets* the statistics of the stepped params to
``new_stats``: they are state, not parameters, so no optimizer, proximal term
or control variate touches them. Evaluation uses ``apply`` without a key, i.e.
the running averages of the params it is given.

Two ways to federate them (``Model.local_stats``):

- **averaged** (``False``): the statistics travel in the update like
  parameters, so under FedAvg the server's become the weighted mean of the
  cohort's, ``sum_i w_i s_i / sum_i w_i`` (under a server optimizer they
  follow it like any parameter).
- **local** (``True``; FedBN, Li et al. 2021, "FedBN: Federated Learning on
  Non-IID Features via Local Batch Normalization"): each client keeps its own
  statistics in its client state (the engine's client-state home, entry
  ``'model'``); it trains from *them*, not from the server's, and they are
  never overwritten by an average. Evaluation of the global model needs some
  statistics: the client's update still carries ``s_i - s_server`` for them,
  so under FedAvg the server's statistics are the cohort's weighted mean, used
  only to evaluate the global model and never sent back to a client's
  training (a stated choice: the FedBN paper evaluates each client with its
  own statistics).

Stated limit: a batch's statistics include its padding rows when a client's
example count is not a multiple of the batch size (the static-shape batches
of ``jaxqfl.engine.schedule``).
"""
from __future__ import annotations

STATS = "batch_stats"


def has_stats(model) -> bool:
    """Whether ``model`` carries running statistics (a ``train_apply``)."""
    return getattr(model, "train_apply", None) is not None


def split(params) -> tuple[dict, dict]:
    """``(trainable params, statistics)`` of a stats-carrying params dict."""
    return {k: v for k, v in params.items() if k != STATS}, params[STATS]


def with_stats(params, stats) -> dict:
    """``params`` with its statistics replaced by ``stats``."""
    return {**params, STATS: stats}


def client_state_init(model):
    """``init(params) -> the client's own statistics`` for local (FedBN) statistics, else None."""
    if not (has_stats(model) and model.local_stats):
        return None
    return lambda params: params[STATS]
