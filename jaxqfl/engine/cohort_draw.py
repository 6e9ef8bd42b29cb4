"""Drawing a round's cohort under client availability and a selection rule, inside the round program.

    available = u_c < p_c(r)                     (jaxqfl.systems.availability; all clients without a model)
    fixed-size sampling:
        pool   = D available clients, uniformly without replacement        (selection.draw_pool)
        scores = the rule's score of each pool member, from the current global model's loss on
                 the member's training rows (and its ClientSystems for Oort)
        cohort = the M best-scoring pool members (selection.pick); slots left without an
                 available client are masked out (joined False)
    Poisson sampling: client c joins iff available_c and its Poisson draw (sampling.sample_poisson_cohort)

Everything is computed once per round, replicated, outside the ``shard_map``:
the same cohort on any device count and chunk size. The losses of the D
candidates are one forward pass each over ``max_count`` rows (a client's rows
padded to the largest client, the padding masked out), ``CANDIDATE_BATCH``
candidates at a time (``lax.map``), with the model's deterministic forward
(``key=None``, as evaluation): Power-of-Choice and Oort add D forward passes over
``max_count`` rows per round, on every device (no backward pass).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxqfl.engine.sampling import sample_poisson_cohort
from jaxqfl.models.core import bound
from jaxqfl.systems import availability as avail
from jaxqfl.systems import selection as sel
from jaxqfl.systems.clock import ClientSystems

CANDIDATE_BATCH = 8  # candidates whose losses are evaluated together (a fixed number: results never depend on layout)


def make_candidate_losses(model, task, max_count: int) -> Callable:
    """``losses(params, data, ids) -> (mean [D], rms [D])`` of the model's per-example loss over each client's rows.

    ``mean_c = (1/n_c) sum_i loss_i``, ``rms_c = sqrt((1/n_c) sum_i loss_i^2)`` over client c's
    ``n_c`` training rows (``data``: a ``DeviceData``, indexed by client id).
    """
    positions = jnp.arange(max_count, dtype=jnp.int32)

    def losses(params, data, ids):
        reading = bound(model, data.frozen)

        def one(cid):
            count, offset = data.counts[cid], data.offsets[cid]
            mask = positions < count
            rows = jnp.where(mask, offset + positions, offset)
            per_example = task.loss(reading.apply(params, data.x[rows], key=None), data.y[rows])
            per_example = jnp.where(mask, per_example.astype(jnp.float32), 0.0)
            n = jnp.maximum(count, 1).astype(jnp.float32)
            return jnp.sum(per_example) / n, jnp.sqrt(jnp.sum(per_example ** 2) / n)

        return jax.lax.map(one, ids, batch_size=min(CANDIDATE_BATCH, ids.shape[0]))

    return losses


def make_cohort_draw(*, availability, selection, systems, model, task, schedule, num_clients: int,
                     cohort_size: int, max_count: int, num_params: int, poisson_rate: float | None = None):
    """``draw(run_key, rkey, round_index, params, data) -> (cohort [M], joined [M], num_joined, server metrics)``.

    ``availability`` / ``selection``: resolved (``availability.resolve``, ``selection.resolve``;
    None for always / uniform). ``systems``: a ``ClientSystems`` (needed by rules that read speeds).
    ``poisson_rate``: Poisson sampling at that rate (no selection rule then).
    """
    C, M = num_clients, cohort_size
    pool = selection.pool_size(M, C) if selection is not None else M
    scored = selection is not None and selection.score is not None
    losses = make_candidate_losses(model, task, max_count) if scored else None
    if selection is not None and selection.needs_systems and systems is None:
        raise ValueError(f"selection {selection.name!r} ranks clients by their speed: it needs the clients' "
                         f"ClientSystems (systems=...)")

    def draw(run_key, rkey, round_index, params, data):
        available = None
        metrics = {}
        if availability is not None:
            available = avail.available_mask(availability, run_key, rkey, round_index, C)
            metrics["available"] = jnp.sum(available.astype(jnp.int32)).astype(jnp.float32)
        else:
            metrics["available"] = jnp.float32(C)
        if poisson_rate is not None:
            cohort, joined, num_joined = sample_poisson_cohort(rkey, C, poisson_rate, M, available)
            return cohort, joined, num_joined, metrics
        ids, ok = sel.draw_pool(rkey, C, pool, available)
        scores = None
        if scored:
            mean, rms = losses(params, data, ids)
            counts = data.counts[ids]
            seconds = None
            if selection.needs_systems:
                steps = schedule.steps_taken(counts, max_count)
                seconds = sel.expected_seconds(systems.seconds_per_step[ids], systems.bandwidth[ids], steps,
                                               num_params)
            scores = selection.score(sel.Candidates(ids, ok, counts, mean, rms, seconds))
        cohort, joined = sel.pick(ids, ok, scores, M)
        return cohort, joined, jnp.sum(joined.astype(jnp.int32)), metrics

    return draw


def check_cohort_draw(num_clients: int, cohort_size: int, client_state: str, sampling: str, tiers,
                      availability, selection, systems):
    """``(availability, selection)`` resolved (None for always / uniform); refuses what they do not support."""
    availability, selection = avail.resolve(availability, num_clients), sel.resolve(selection)
    if systems is not None:
        if not isinstance(systems, ClientSystems):
            raise ValueError(f"systems must be a jaxqfl.systems.ClientSystems, got {type(systems).__name__}")
        if any(jnp.shape(a) != (num_clients,) for a in systems):
            raise ValueError(f"systems must hold one value per client ({num_clients}), got shapes "
                             f"{[tuple(jnp.shape(a)) for a in systems]}")
    if availability is None and selection is None:
        return None, None
    if client_state == "host":
        raise ValueError("client availability and selection draw the cohort inside the round program; the 'host' "
                         "client-state home needs it on the host first: use client_state='replicated' or 'sharded'")
    if selection is not None:
        if sampling == "poisson":
            raise ValueError(f"selection {selection.name!r} picks a fixed-size cohort; Poisson sampling's cohort is "
                             f"each client's own draw: use sampling='fixed' (availability does combine with Poisson)")
        if tiers is not None:
            raise ValueError(f"selection {selection.name!r} ranks clients by the global model's loss; with tiers "
                             f"each client trains its tier's model: not supported")
        if selection.needs_systems and systems is None:
            raise ValueError(f"selection {selection.name!r} ranks clients by their expected round time: pass "
                             f"systems=jaxqfl.systems.ClientSystems (the CLI's --speeds)")
        selection.pool_size(cohort_size, num_clients)
    return availability, selection
