"""Heterogeneous LoRA ranks: each client trains the leading block of the adapters (HetLoRA, Cho et al. 2024).

Client i has a rank r_i <= r (its tier's: weaker devices take smaller ranks).
It receives the global adapters truncated to their leading block,

    A_i = A[:, :r_i]    B_i = B[:r_i, :]     (the other columns / rows set to zero)

trains only that block (its gradients are masked the same way, so the zeros
stay zero under SGD, momentum, Adam or weight decay) and uploads the change of
the block, zero-padded to rank r. The aggregator's weighted mean of these
zero-padded updates is HetLoRA's zero-padding aggregation: a row of B beyond
r_i receives only the updates of clients of larger rank, diluted by the
others' zeros. The scale stays alpha / r for every client, so truncation is a
pure projection; with every r_i = r the wrapper changes nothing (the masks are
all ones) and the run equals homogeneous LoRA.

``heterogeneous_ranks(algorithm, client_ranks)`` wraps any algorithm whose
``client_init`` / ``client_step`` / ``client_final`` read the params of the
message they are given (the FedAvg family, FedProx, ...): the wrapper hands
them the truncated message and masked gradients. It knows no devices: the
client's rank is ``client_ranks[info.client_id]``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxqfl.algorithms.base import Algorithm
from jaxqfl.lora.adapters import A_NAME, B_NAME


def rank_tiers(num_clients: int, ranks, max_rank: int) -> np.ndarray:
    """[C] int32 ranks: client ``i`` in tier ``i mod T`` of the ``T`` given ``ranks`` (each in [1, max_rank])."""
    ranks = list(ranks)
    if not ranks or not all(isinstance(r, (int, np.integer)) and 1 <= r <= max_rank for r in ranks):
        raise ValueError(f"LoRA tier ranks must be integers in [1, {max_rank}] (the adapters' rank), got {ranks!r}")
    if not isinstance(num_clients, int) or num_clients < 1:
        raise ValueError(f"num_clients must be a positive integer, got {num_clients!r}")
    return np.asarray([ranks[i % len(ranks)] for i in range(num_clients)], np.int32)


def _masks(params, rank):
    """Ones on the leading ``rank`` columns of every A and rows of every B, zeros elsewhere (other leaves: 1)."""

    def one(path, leaf):
        name = getattr(path[-1], "key", None)
        if name == A_NAME:
            return (jnp.arange(leaf.shape[-1]) < rank).astype(leaf.dtype)[None, :]
        if name == B_NAME:
            return (jnp.arange(leaf.shape[0]) < rank).astype(leaf.dtype)[:, None]
        return jnp.ones((), leaf.dtype)

    return jax.tree_util.tree_map_with_path(one, params)


def truncate(params, rank):
    """The adapters ``params`` truncated to their leading ``rank`` block (zero-padded to their shapes)."""
    return jax.tree.map(lambda p, m: p * m, params, _masks(params, rank))


def heterogeneous_ranks(algorithm: Algorithm, client_ranks) -> Algorithm:
    """``algorithm`` with client i training the leading ``client_ranks[i]`` block only (module docstring)."""
    ranks = np.asarray(client_ranks)
    if ranks.ndim != 1 or ranks.size == 0 or not np.issubdtype(ranks.dtype, np.integer) or ranks.min() < 1:
        raise ValueError(f"client_ranks must be a [num_clients] array of positive integers, got {client_ranks!r}")
    table = jnp.asarray(ranks, jnp.int32)

    def truncated(message, info):
        return message._replace(params=truncate(message.params, table[info.client_id]))

    def client_init(message, client_state, info):
        return algorithm.client_init(truncated(message, info), client_state, info)

    def client_step(local, grads, message, info):
        masked = jax.tree.map(lambda g, m: g * m, grads, _masks(grads, table[info.client_id]))
        return algorithm.client_step(local, masked, truncated(message, info), info)

    def client_final(local, message, client_state, info):
        return algorithm.client_final(local, truncated(message, info), client_state, info)

    return algorithm._replace(client_init=client_init, client_step=client_step, client_final=client_final)
