"""A block of rounds dispatched in pieces: progress every ~second from the same program, with the same results.

A compiled block of B rounds runs its first ``num_active`` rounds and skips the
rest (``lax.cond``), and every round's randomness is keyed by ``state.round``,
never by the round's position in the block. So the block's ``a`` active rounds
can run as several calls of the SAME executable with ``num_active = p_1, p_2,
...`` (``sum p_i = a``): the same rounds in the same order on the same inputs,
hence the same state and metrics bit for bit, no new compilation, and one host
synchronisation per piece (its metrics fetch), none inside the program.

Piece sizes (``piece_rounds``), with ``s`` the seconds per round of the last
piece (its time / its rounds) and ``T`` the target seconds per piece::

    first piece of a run:  p = 1
    then:                  p = clamp(floor(T / s), 1, rounds left in the block)    (s = 0: the rest of the block)

A round's time is its piece's time / the piece's rounds (``RunResult.round_seconds``).

A runner for which the claim fails says so (``Simulation.piecewise = False``)
and keeps whole blocks. Every runner of the engine allows pieces; a streamed
population (``build_streaming``) prefetches the next round's rows within one
``run_block`` call, so the first round of each piece gathers its rows without
that overlap (same results; one such gather per piece).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


class Progress(NamedTuple):
    """What ``engine.run`` reports after every piece (``on_progress``)."""

    round: int  # state.round after the piece
    train_loss: float  # the piece's last round's train loss
    seconds: float  # device seconds so far (a resumed run's earlier seconds included), as records' ``seconds``
    rounds_per_second: float  # rounds of this call / its device seconds so far


def check_progress_seconds(progress_seconds) -> None:
    """``None`` (one piece per block) or a positive finite number of seconds."""
    if progress_seconds is None:
        return
    ok = isinstance(progress_seconds, (int, float)) and not isinstance(progress_seconds, bool)
    if not ok or not math.isfinite(progress_seconds) or progress_seconds <= 0:
        raise ValueError(f"progress_seconds must be None or a positive finite number of seconds, "
                         f"got {progress_seconds!r}")


def piece_rounds(progress_seconds: float, seconds_per_round: float | None, rounds_left: int) -> int:
    """Rounds of the next piece: 1 first (``seconds_per_round`` None), then ``clamp(floor(T / s), 1, left)``."""
    if seconds_per_round is None:
        return 1
    if seconds_per_round <= 0:
        return rounds_left
    return max(1, min(rounds_left, int(min(math.floor(progress_seconds / seconds_per_round), rounds_left))))


def join_pieces(pieces: list):
    """One block's metrics from its pieces ``[(metrics [B, ...] on the host, rounds p), ...]``: leading ``[sum p]``.

    Each piece's first ``p`` rows are its active rounds, in order; a single piece is
    returned as it is (the whole-block dispatch's metrics, untouched).
    """
    if len(pieces) == 1:
        return pieces[0][0]
    import jax

    return jax.tree.map(lambda *a: np.concatenate([np.asarray(x)[:p] for x, (_, p) in zip(a, pieces)]),
                        *[m for m, _ in pieces])


def run_in_pieces(run_block, state, block: int, active: int, progress_seconds: float | None,
                  seconds_per_round: float | None, clock, after_piece):
    """Dispatch a block's first ``active`` rounds in pieces: ``(state, metrics [active, ...], seconds_per_round)``.

    ``run_block(state, block, p)`` runs the next ``p`` rounds (pieces sized by ``piece_rounds``;
    ``progress_seconds`` None: one piece, the whole block). After each piece
    ``after_piece(metrics of the piece on the host, p, its seconds by clock, rounds of the block done)``.
    ``seconds_per_round`` is the last piece's, carried from block to block (None before the first).
    """
    import jax

    parts, ran = [], 0
    while ran < active:
        p = piece_rounds(progress_seconds, seconds_per_round, active - ran) if progress_seconds is not None else active
        t0 = clock()
        state, metrics = run_block(state, block, p)
        metrics = jax.device_get(metrics)
        seconds = clock() - t0
        seconds_per_round, ran = seconds / p, ran + p
        parts.append((metrics, p))
        after_piece(metrics, p, seconds, ran)
    return state, join_pieces(parts), seconds_per_round
