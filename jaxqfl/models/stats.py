"""Running statistics (BatchNorm's ``batch_stats``) as model state, kept per client or averaged.

A model with running statistics holds them in its params dict under the
reserved top-level key :data:`STATS` (``'batch_stats'``), beside its trainable
parameters, and gives the engine a third function::

    train_apply(params, x, *, key, mask=None) -> (outputs, new_stats)

the training-mode forward (batch statistics normalise the batch; the running
averages are updated, e.g. Flax's ``m <- momentum m + (1 - momentum) mean_B``).
In each local step the engine takes the gradient of the loss through
``train_apply`` and then *sets* the statistics of the stepped params to
``new_stats``: they are state, not parameters, so no optimizer, proximal term
or control variate touches them. Evaluation uses ``apply`` without a key, i.e.
the running averages of the params it is given.

Three ways to federate them (``from_flax(batch_stats=...)``; ``Model.local_stats``,
``Model.local_layers``):

- **averaged** (``"averaged"``): the statistics travel in the update like
  parameters, so under FedAvg the server's become the weighted mean of the
  cohort's, ``sum_i w_i s_i / sum_i w_i`` (under a server optimizer they
  follow it like any parameter).
- **local statistics** (``"local"``; SiloBN, Andreux et al. 2020, "Siloed
  Federated Learning for Multi-Centric Histopathology Datasets"): each client
  keeps its own statistics in its client state (the engine's client-state
  home, entry ``'model'``); it trains from *them*, not from the server's, and
  they are never overwritten by an average. The BatchNorm layers' learned
  scale and bias are shared (averaged) like every other parameter.
- **local BatchNorm layers** (``"fedbn"``; FedBN, Li et al. 2021, "FedBN:
  Federated Learning on Non-IID Features via Local Batch Normalization",
  Algorithm 1: only the non-BN layers are averaged): the statistics *and* the
  parameters of every BatchNorm layer (its scale and bias: the params at the
  layer paths the statistics name) are the client's own, kept and trained as
  above.

What a client keeps (:func:`local_part`) replaces the server's values in the
model it starts from (:func:`with_local`); its update is still taken against
the server's model, so it carries ``own_i - server`` for those leaves and,
under FedAvg, the server's copy becomes the cohort's weighted mean of the
clients' own. That copy is used only to evaluate the global model, never sent
back into a client's training (a stated choice: evaluating the global model
needs *some* BatchNorm layer and statistics, and the mean is the one that
describes the whole cohort; the FedBN paper instead evaluates each client
with its own).

Padding rows: a step's batch has static width B, so a client whose examples
do not fill it (full-batch steps of a smaller client, the last step of an
epoch) carries padding rows. The engine passes the batch's row ``mask``
([B] bool) to ``train_apply`` and every Linen ``nn.BatchNorm`` whose input
leads with that batch axis takes its moments over the real rows only
(:func:`linen_row_mask`; Flax's own ``mask=``); NNX modules get the same
through ``jaxqfl.models.nnx_module``. A BatchNorm whose input does not lead
with the batch axis (a reshaped batch) still counts the padding rows.
"""
from __future__ import annotations

import jax.numpy as jnp

STATS = "batch_stats"
MODES = ("local", "fedbn", "averaged")  # from_flax(batch_stats=...): module docstring


def has_stats(model) -> bool:
    """Whether ``model`` carries running statistics (a ``train_apply``)."""
    return getattr(model, "train_apply", None) is not None


def split(params) -> tuple[dict, dict]:
    """``(trainable params, statistics)`` of a stats-carrying params dict."""
    return {k: v for k, v in params.items() if k != STATS}, params[STATS]


def with_stats(params, stats) -> dict:
    """``params`` with its statistics replaced by ``stats``."""
    return {**params, STATS: stats}


def local_part(model, params) -> dict:
    """The subtree of ``params`` a client keeps as its own (see the module docstring).

    ``{STATS: statistics}`` for local statistics; with local layers (FedBN) also,
    for each BatchNorm layer the statistics name (``STATS/.../BatchNorm_0``), the
    params at the same path (``.../BatchNorm_0``: its scale and bias).
    """
    own = {STATS: params[STATS]}
    if getattr(model, "local_layers", False):
        own.update(_layers_named(params, params[STATS]))
    return own


def _layers_named(params: dict, statistics: dict) -> dict:
    """The params at the layer paths of ``statistics`` (a layer: a dict whose values are arrays)."""
    out = {}
    for name, sub in statistics.items():
        if name not in params or not isinstance(sub, dict):
            continue
        if all(not isinstance(v, dict) for v in sub.values()):  # a layer's statistics: mean, var
            out[name] = params[name]
        else:
            inner = _layers_named(params[name], sub)
            if inner:
                out[name] = inner
    return out


def with_local(params: dict, own: dict) -> dict:
    """``params`` with every leaf of ``own`` (a :func:`local_part`) put in its place."""
    return {**params, **{k: with_local(params[k], v) if isinstance(v, dict) else v for k, v in own.items()}}


def client_state_init(model):
    """``init(params) -> the client's own part`` when clients keep statistics (or layers), else None."""
    if not (has_stats(model) and model.local_stats):
        return None
    return lambda params: local_part(model, params)


def row_mask_for(mask, x, given=None):
    """``mask`` [B] as a BatchNorm ``mask=`` for input ``x`` [B, ...] (and with a ``given`` one), or ``given``
    when ``x`` does not lead with the batch axis."""
    if mask is None or x.ndim == 0 or x.shape[0] != mask.shape[0]:
        return given
    rows = mask.reshape(mask.shape + (1,) * (x.ndim - 1))
    return rows if given is None else jnp.logical_and(given, rows)


def linen_row_mask(mask):
    """An ``nn.intercept_methods`` interceptor: each ``nn.BatchNorm`` call takes moments over ``mask``'s rows."""
    import flax.linen as nn

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__" and args:
            kwargs = {**kwargs, "mask": row_mask_for(mask, args[0], kwargs.get("mask"))}
        return next_fun(*args, **kwargs)

    return interceptor
