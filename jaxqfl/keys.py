"""Randomness: every draw is a ``fold_in`` of the run key.

The run key is folded with the round number, then the client id, then the local
step, then a *purpose* tag, so a client's randomness depends on who it is and
when, never on which device or chunk it was placed on. Same seed, same results,
whatever the device count or the chunk size (DESIGN.md, "Randomness").

    key(round r, client c, step s, purpose p)
        = fold_in(fold_in(fold_in(fold_in(run_key, r), c), s), p)

Draws that are not per-client (cohort sampling, server DP noise) use the round
key folded with a purpose directly.
"""
from __future__ import annotations

import jax

# Purpose tags. Fixed integers: changing one changes every result of a seed.
COHORT = 0  # which clients take part in a round
BATCH = 1  # a client's data order (per-client shuffle)
QUANT = 2  # stochastic rounding in quantization-aware training
UPLINK = 3  # update codec, client -> server
DOWNLINK = 4  # model codec, server -> client
DP = 5  # differential-privacy noise
AGGREGATE = 6  # randomness of the aggregator (e.g. secure-sum masks)
INIT = 7  # parameter initialisation
DROPOUT = 8  # model-internal randomness
ATTACK = 9  # a simulated malicious client's randomness (jaxqfl.aggregate.threat)


def round_key(run_key: jax.Array, round_index) -> jax.Array:
    """Key of one round: ``fold_in(run_key, round)``."""
    return jax.random.fold_in(run_key, round_index)


def client_key(rkey: jax.Array, client_id) -> jax.Array:
    """Key of one client in one round: ``fold_in(round_key, client_id)``."""
    return jax.random.fold_in(rkey, client_id)


def step_key(ckey: jax.Array, step) -> jax.Array:
    """Key of one local step of one client: ``fold_in(client_key, step)``."""
    return jax.random.fold_in(ckey, step)


def purpose_key(key: jax.Array, purpose: int) -> jax.Array:
    """Split a key by what it is for: ``fold_in(key, purpose)``."""
    return jax.random.fold_in(key, purpose)
