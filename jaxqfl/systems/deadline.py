"""A round deadline and what happens to the clients that cannot meet it: wait, drop, or partial work.

Systems heterogeneity with a deadline, as in FedProx (Li et al., MLSys 2020:
stragglers either dropped, as FedAvg does, or kept with the partial work they
managed, "gamma-inexact" local solutions) and the deadline-based client
selection of FedCS (Nishio and Yonetani, ICC 2019). With the profile of
:mod:`jaxqfl.systems.clock`, cohort client ``c`` given ``K_c`` local steps
(``LocalSchedule.steps_taken``) needs

    t_c = K_c * spc_c + comm_c,     comm_c = (downlink_bits_c + uplink_bits_c) / bandwidth_c

simulated seconds. By the codec contract (``jaxqfl.compress.base``: ``bits`` depends
only on a message's static shapes) the bits a client receives and sends do not depend
on its values, so the round program knows them *before* the client trains: it runs
the client's downlink encode and its send path (aggregator, tier codec) on a zero
update of the update's structure and keeps only the bit counts (XLA removes the rest as
dead code; ``jaxqfl.engine.straggler``). With a deadline ``D``:

* ``"wait"`` (no deadline): every client is waited for; the round program is the
  one without this module, and the host clock times it (``clock.block_seconds``).
* ``"drop"``: client ``c`` takes part iff ``K_c * spc_c + comm_c <= D``. A dropped
  client is masked out exactly like an unfilled Poisson slot (``valid`` False
  before training: no summand, no weight, no bits, no state write-back, cohort id -1
  in ``RoundMetrics``).
* ``"partial"``: client ``c`` does ``k_c = min(K_c, floor((D - comm_c) / spc_c))``
  steps, the later ones masked (``info.num_steps = k_c``, so FedNova normalises by
  the steps done); a client with ``k_c <= 0`` is dropped as above.

The round takes ``T = min(D, max over the sampled cohort of t_c)`` simulated seconds
(D when anyone was dropped or cut, else the slowest client's ``t_c``; 0 when nobody
was sampled), reported as the server metric ``clock.ROUND_SECONDS``, which the
driver's clock uses as is. Two more server metrics per round:
``stragglers_dropped`` (the fraction of the sampled cohort dropped; 0 when nobody
was sampled) and ``partial_work`` (the mean over kept clients of ``k_c / K_c``; 1
under ``"drop"``, 0 when nobody was kept).

Arithmetic is float32 in the program (the host clock's too); a client whose time is
within float32 rounding of ``D`` may land on either side.

Planned bits: the dry send runs with weight 1 for every sampled client (an
algorithm's weight is positive: ``n_i`` or 1) and zero cohort statistics; an
aggregator whose bit count depends on more than the weight's sign, or on the
statistics' values, would break the codec contract (secure aggregation's bits
depend on its dropout draw and the weight's sign only; tested equal to the round's).

Not supported (refused with a ValueError): the streamed population
(``build_streaming``, whose blocks carry rows, not the population's counts), sweeps
(``build_sweep``: each config would need its own speeds), a ``LocalSchedule`` padded
for a sweep over local steps.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxqfl.systems.clock import ROUND_SECONDS, ClientSystems, client_seconds

STRAGGLERS = ("wait", "drop", "partial")
DROPPED = "stragglers_dropped"  # server metric: fraction of the sampled cohort dropped
PARTIAL_WORK = "partial_work"  # server metric: mean over kept clients of k_c / K_c


class DeadlinePlan(NamedTuple):
    """What the deadline decides for a cohort before it trains (shapes ``[slots]``, and the round's scalars)."""

    keep: jax.Array  # bool: sampled and meeting the deadline (with its partial work)
    steps: jax.Array  # int32: the steps each client does (K_c under drop, k_c under partial; 0 when not kept)
    server_metrics: dict  # ROUND_SECONDS, stragglers_dropped, partial_work (float32 scalars)


def check_deadline(deadline, stragglers: str, systems, num_clients: int):
    """``(deadline as a float or None, stragglers)``; ValueError naming a bad value or combination."""
    if stragglers not in STRAGGLERS:
        raise ValueError(f"stragglers must be one of {STRAGGLERS}, got {stragglers!r}")
    if deadline is None:
        if stragglers != "wait":
            raise ValueError(f"stragglers={stragglers!r} needs a deadline (seconds > 0)")
        return None, stragglers
    ok = isinstance(deadline, (int, float, np.floating, np.integer)) and not isinstance(deadline, bool)
    if not (ok and math.isfinite(deadline) and deadline > 0):
        raise ValueError(f"deadline must be a finite number of simulated seconds > 0, got {deadline!r}")
    if stragglers == "wait":
        raise ValueError("a deadline with stragglers='wait' waits for every client, so it has no deadline: "
                         "choose stragglers='drop' or 'partial' (or no deadline)")
    if not isinstance(systems, ClientSystems):
        raise ValueError(f"a deadline needs the clients' systems (a jaxqfl.systems.ClientSystems), got "
                         f"{type(systems).__name__}")
    for name, a in (("seconds_per_step", systems.seconds_per_step), ("bandwidth", systems.bandwidth)):
        shape = tuple(np.shape(a))
        if shape != (num_clients,):
            raise ValueError(f"ClientSystems.{name} must have shape ({num_clients},) (one per client), got {shape}")
    return float(deadline), stragglers


def plan_round(systems: ClientSystems, ids: jax.Array, sampled: jax.Array, scheduled: jax.Array,
               uplink_bits: jax.Array, downlink_bits: jax.Array, deadline: float, stragglers: str) -> DeadlinePlan:
    """Which clients meet ``deadline`` and with how many steps (formulas in the module docstring).

    Args:
      ids, sampled: ``[slots]`` client ids and whether the slot holds a sampled client.
      scheduled: ``[slots]`` int32, each client's scheduled steps ``K_c``.
      uplink_bits, downlink_bits: ``[slots]`` the exact bits it will send and receive.
    Traceable: static shapes, no host sync.
    """
    if stragglers not in ("drop", "partial"):
        raise ValueError(f"plan_round times 'drop' or 'partial' rounds, got {stragglers!r}")
    D = jnp.float32(deadline)
    K = scheduled.astype(jnp.int32)
    full = client_seconds(systems, ids, K, uplink_bits, downlink_bits)  # t_c for the work it was given
    if stragglers == "drop":
        keep = sampled & (full <= D)
        steps = jnp.where(keep, K, 0)
    else:
        comm = client_seconds(systems, ids, jnp.zeros_like(K), uplink_bits, downlink_bits)
        fit = jnp.floor((D - comm) / systems.seconds_per_step[ids])
        steps = jnp.clip(fit, -1, K.astype(jnp.float32)).astype(jnp.int32)  # min(K_c, floor(...)), floored at -1
        keep = sampled & (steps >= 1)
        steps = jnp.where(keep, steps, 0)
    num_sampled = jnp.sum(sampled.astype(jnp.float32))
    num_kept = jnp.sum(keep.astype(jnp.float32))
    slowest = jnp.max(jnp.where(sampled, full, 0.0), initial=0.0)
    work = jnp.where(keep, steps.astype(jnp.float32) / jnp.maximum(K, 1).astype(jnp.float32), 0.0)
    metrics = {
        ROUND_SECONDS: jnp.minimum(D, slowest),
        DROPPED: (num_sampled - num_kept) / jnp.maximum(num_sampled, 1.0),
        PARTIAL_WORK: jnp.sum(work) / jnp.maximum(num_kept, 1.0),
    }
    return DeadlinePlan(keep, steps, metrics)
