"""Per-client compute speed and link bandwidth, and the simulated time of a round.

Systems heterogeneity as in FedProx (Li et al., MLSys 2020) and FedBuff
(Nguyen et al., AISTATS 2022): clients differ in how long a local step takes
and how fast their link is. Each client ``c`` gets, once per run,

    seconds_per_step_c = step_seconds   * exp(sigma * z_c),
    bandwidth_c        = bandwidth_bps  * exp(sigma * w_c),   z_c, w_c ~ N(0, 1),

drawn from the leaf key ``purpose_key(derive(run_key, CLIENT_TAG, c), SYSTEMS)``
(``jaxqfl.keys``): a client's draw depends on the seed and its id only, not on
the population size or the device count. ``sigma = 0`` gives equal clients.

A synchronous round waits for every waited-for client, so its simulated time is
the slowest one's

    T_round = max_{c : waited_c} ( num_steps_c * seconds_per_step_c
                                   + (uplink_bits_c + downlink_bits_c) / bandwidth_c ),

with the exact bits the codecs report per client; a round waiting for nobody
takes 0 s. The virtual clock is the running sum of ``T_round``.

Where it is computed: from each block's ``RoundMetrics`` (the cohort's ids,
local steps and exact bits, which the driver reads after every block anyway),
by :func:`block_seconds`; so the clock adds no host synchronisation and leaves
the round program, and hence every result, unchanged. A synchronous server that
waits for every sampled client is the setting here: every client of the cohort
is waited for (a Poisson slot that no client filled is not). A round with a
deadline (``jaxqfl.systems.deadline``) times itself and reports ``ROUND_SECONDS``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxqfl import keys


ROUND_SECONDS = "round_sim_seconds"  # the server metric of a round program that times its own rounds


class ClientSystems(NamedTuple):
    """Per-client systems profile: arrays of shape ``[num_clients]``, float32."""
    seconds_per_step: jax.Array  # simulated seconds one local step takes on the client's device
    bandwidth: jax.Array  # the client's link, bits per simulated second (both directions)


def draw_lognormal_systems(run_key: jax.Array, num_clients: int, sigma: float,
                           step_seconds: float = 1.0, bandwidth_bps: float = 1e6) -> ClientSystems:
    """Draw every client's profile: log-normal around ``step_seconds`` and ``bandwidth_bps``."""
    if not isinstance(num_clients, int) or num_clients < 1:
        raise ValueError(f"num_clients must be a positive integer, got {num_clients!r}")
    for name, value, low in (("sigma", sigma, 0.0), ("step_seconds", step_seconds, None),
                             ("bandwidth_bps", bandwidth_bps, None)):
        ok = isinstance(value, (int, float)) and value == value and abs(value) != float("inf")
        ok = ok and (value >= 0 if low is not None else value > 0)
        if not ok:
            allowed = "a finite number >= 0" if low is not None else "a finite number > 0"
            raise ValueError(f"{name} must be {allowed}, got {value!r}")

    def one(client):
        leaf = keys.purpose_key(keys.derive(run_key, keys.CLIENT_TAG, client), keys.SYSTEMS)
        z = jax.random.normal(leaf, (2,), jnp.float32)
        return step_seconds * jnp.exp(sigma * z[0]), bandwidth_bps * jnp.exp(sigma * z[1])

    spc, bw = jax.vmap(one)(jnp.arange(num_clients, dtype=jnp.int32))
    return ClientSystems(seconds_per_step=spc.astype(jnp.float32), bandwidth=bw.astype(jnp.float32))


def round_seconds(systems: ClientSystems, client_ids: jax.Array, num_steps: jax.Array,
                  uplink_bits: jax.Array, downlink_bits: jax.Array, waited: jax.Array) -> jax.Array:
    """Simulated seconds of one synchronous round (formula in the module docstring).

    All per-cohort arguments have shape ``[cohort]``: the clients' ids, local
    steps done, uplink and downlink bits, and whether the server waits for them.
    Traceable: static shapes, no host sync.
    """
    per_client = client_seconds(systems, client_ids, num_steps, uplink_bits, downlink_bits)
    return jnp.max(jnp.where(waited, per_client, 0.0), initial=0.0)


def client_seconds(systems: ClientSystems, client_ids: jax.Array, num_steps: jax.Array,
                   uplink_bits: jax.Array, downlink_bits: jax.Array) -> jax.Array:
    """``[cohort]`` float32: each client's ``num_steps x seconds_per_step + (uplink + downlink bits) / bandwidth``."""
    spc = systems.seconds_per_step[client_ids]
    bw = systems.bandwidth[client_ids]
    return (num_steps.astype(jnp.float32) * spc
            + (uplink_bits.astype(jnp.float32) + downlink_bits.astype(jnp.float32)) / bw)


_rounds_seconds = jax.jit(jax.vmap(round_seconds, in_axes=(None, 0, 0, 0, 0, 0)))


def block_seconds(systems: ClientSystems, metrics, active: int) -> np.ndarray:
    """``[active]`` float64: the simulated seconds of each active round of a block.

    ``metrics``: the block's ``RoundMetrics`` (leading ``[R]`` axis, on the host); every
    client of a round's cohort is waited for (``cohort >= 0``). A round program that
    times its rounds itself (a deadline, buffered asynchronous rounds) reports each
    round's simulated seconds as the server metric ``ROUND_SECONDS``; those are used as
    they are.
    """
    if ROUND_SECONDS in metrics.server:
        return np.asarray(metrics.server[ROUND_SECONDS][:active], np.float64)
    cohort = np.asarray(metrics.cohort[:active])
    waited = cohort >= 0
    seconds = _rounds_seconds(systems, np.where(waited, cohort, 0).astype(np.int32),
                              np.asarray(metrics.local_steps[:active], np.int32),
                              np.asarray(metrics.uplink_bits[:active], np.float32),
                              np.asarray(metrics.downlink_bits[:active], np.float32), waited)
    return np.asarray(seconds, np.float64)
