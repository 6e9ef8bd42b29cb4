"""Exact aggregation of adapters: the weighted mean of the products A_i B_i, re-factorized to rank r.

FedIT (the default) averages A and B separately, so the round's low-rank term
is ``mean(A_i) mean(B_i)``, not the mean of the clients' terms ``mean(A_i B_i)``:
a bias (``tests/test_lora.py`` shows it). Here clients upload their adapters as
usual (the uplink carries only A_i and B_i, as in FLoRA's stacking, Wang et al.
2024); the server keeps every client's pair (a ``gather`` reduction: the
``stacked`` aggregator) and computes, per adapted kernel,

    P = sum_i p_i A_i B_i / sum_i p_i                                  (the exact mean of the terms)
    P = U S V^T  (SVD),   A' = U_r S_r^(1/2),   B' = S_r^(1/2) V_r^T    (rank r again)

so the new global term ``A' B'`` is the best rank-r approximation of ``P``
(Eckart-Young), and equals it exactly whenever rank(P) <= r (e.g. r = min(d_in,
d_out), or clients that moved in a common r-dimensional subspace). Stacking
itself (FLoRA) keeps the M r columns by merging P into the base every round;
the base here is frozen and shared, so the rank-r re-factorization is the
stated shortcut. Cost on the server: one SVD of a d_in x d_out matrix per
kernel per round, and the cohort's adapters gathered (M x adapter size).

``product_average(algorithm)`` keeps the algorithm's clients (FedAvg, FedProx,
...) and replaces its server step (its server optimizer and state are not
used): pair it with ``stacked()`` as the aggregator. Leaves other than adapter
pairs get the weighted mean of their updates.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxqfl.aggregate.base import Aggregator, no_state
from jaxqfl.algorithms.base import Algorithm
from jaxqfl.lora.adapters import A_NAME, B_NAME, adapter_paths
from jaxqfl.quant.policy import _key_name


def stacked() -> Aggregator:
    """Keep every client's ``(update, weight)``: the aggregate is ``{'updates': [M_pad, ...], 'weights': [M_pad]}``
    with padding slots' weights zero (and their updates zeroed)."""

    def client(update, weight, client_state, state, stats, info):
        del state, stats, info
        return {"updates": update, "weights": weight}, client_state, {}

    def server(reduced, state, stats, cohort):
        del stats
        valid = cohort.valid
        weights = jnp.where(valid, reduced["weights"], 0.0)
        updates = jax.tree.map(lambda u: jnp.where(valid.reshape((-1,) + (1,) * (u.ndim - 1)), u, 0.0),
                               reduced["updates"])
        return {"updates": updates, "weights": weights}, state, {}

    return Aggregator(init=no_state, client_state_init=no_state, reduction="gather", client=client, server=server)


def _refactorized(a, b, d_a, d_b, weights):
    """``(A', B')`` of the module docstring from the global pair, the clients' changes and weights."""
    a_i, b_i = a[None] + d_a, b[None] + d_b  # [M, d_in, r], [M, r, d_out]
    p = jnp.einsum("m,mir,mro->io", weights, a_i, b_i) / jnp.maximum(jnp.sum(weights), 1e-30)
    u, s, vt = jnp.linalg.svd(p, full_matrices=False)
    r = a.shape[-1]
    root = jnp.sqrt(s[:r])
    return u[:, :r] * root[None, :], root[:, None] * vt[:r]


def product_average(algorithm: Algorithm) -> Algorithm:
    """``algorithm`` whose server step sets each adapter pair to the rank-r SVD of the clients' mean product."""

    def server_update(params, algorithm_state, aggregate, info):
        del info
        updates, weights = aggregate["updates"], aggregate["weights"]
        total = jnp.maximum(jnp.sum(weights), 1e-30)
        # every leaf: the weighted mean update (adapter pairs are then replaced by their re-factorization)
        new = jax.tree.map(lambda p, u: p + jnp.tensordot(weights, u, 1) / total, params, updates)
        pairs, changes = adapter_paths(params), adapter_paths(updates)
        new_pairs = {path: _refactorized(ab[A_NAME], ab[B_NAME], changes[path][A_NAME], changes[path][B_NAME],
                                         weights) for path, ab in pairs.items() if set(ab) == {A_NAME, B_NAME}}

        def place(path, leaf):
            names = [_key_name(k) for k in path]
            kernel, name = "/".join(names[:-1]), names[-1]
            if kernel in new_pairs and name in (A_NAME, B_NAME):
                return new_pairs[kernel][0 if name == A_NAME else 1]
            return leaf

        return jax.tree_util.tree_map_with_path(place, new), algorithm_state, {}

    return algorithm._replace(server_update=server_update)
