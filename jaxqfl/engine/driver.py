"""Running a simulation: blocks of rounds on the device, evaluation between blocks.

The host loop is over *blocks* of ``eval_every`` rounds, never over clients or
local steps. Each block is one compiled program (``Simulation.run_block``); the
host synchronises once per block, to read the block's metrics and evaluate the
global model on the test set. The last block, if shorter, runs the same program
with its tail rounds skipped, so a run compiles the block program exactly once.
With ``progress_seconds`` a block is dispatched in pieces of that program
(``jaxqfl.engine.pieces``): one more synchronisation per piece, same results.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxqfl.engine import pieces as block_pieces
from jaxqfl.engine import startup
from jaxqfl.engine.client_evaluation import personal_view
from jaxqfl.engine.simulation import Simulation
from jaxqfl.engine.state import ServerState
from jaxqfl.engine.tiers import tier_totals
from jaxqfl.systems import clock as virtual_clock


#: A record's wall-clock fields: the only ones that differ between two runs of the same config.
TIMING_KEYS = ("seconds", "round_seconds")


@dataclasses.dataclass
class RunResult:
    state: ServerState
    records: list[dict]  # one per evaluated round (of this call)
    compile_seconds: float
    train_seconds: float  # device time of the rounds, compilation excluded (earlier calls' included when resumed)
    rounds: int  # rounds run by this call
    uplink_bits_total: int
    downlink_bits_total: int
    diverged_round: int | None = None  # first round whose train loss or params are not finite
    stopped: bool = False  # should_stop() ended the run before its last round
    round_seconds: list = dataclasses.field(default_factory=list)  # each round of this call: its piece's time / rounds
    tier_uplink_bits: list = dataclasses.field(default_factory=list)  # with tiers: [T] uplink bits of each tier's clients
    tier_clients: list = dataclasses.field(default_factory=list)  # with tiers: [T] client-rounds of each tier
    sim_time: float | None = None  # with systems: the virtual clock after the last round (earlier calls' included)
    first_round_started: float | None = None  # time.time() at the first block's dispatch (None: no round ran)
    # Simulation.counted_metrics: {name: {value: client-rounds}} over the run (earlier calls' included when resumed)
    counts: dict = dataclasses.field(default_factory=dict)

    def round_seconds_quantiles(self) -> dict:
        """``round_seconds_median``, ``_p10``, ``_p90`` over this call's rounds (None when it ran none)."""
        q = np.quantile(self.round_seconds, [0.5, 0.1, 0.9]) if self.round_seconds else [None] * 3
        return {f"round_seconds_{k}": (None if v is None else float(v)) for k, v in zip(("median", "p10", "p90"), q)}

    @property
    def seconds_per_round(self) -> float:
        return self.train_seconds / max(self.rounds, 1)

    @property
    def final(self) -> dict:
        return self.records[-1] if self.records else {}


class RunTotals(NamedTuple):
    """What a resumed run carries over from the rounds before it (bit totals, device seconds)."""

    uplink_bits: int = 0
    downlink_bits: int = 0
    seconds: float = 0.0
    tier_uplink_bits: tuple = ()  # with tiers: per tier, the uplink bits of its clients
    tier_clients: tuple = ()  # with tiers: per tier, how many client-rounds it took part in
    sim_time: float = 0.0  # with systems: simulated seconds of the rounds before (jaxqfl.systems)
    counts: dict | None = None  # Simulation.counted_metrics: {name: {value: how many client-rounds}} so far


class SweepTotals(NamedTuple):
    """A sweep's carry-over between blocks (and across a resume): per-config bit totals and divergence."""

    uplink_bits: list  # [S] ints
    downlink_bits: list  # [S] ints
    seconds: float  # the sweep's device seconds so far
    diverged: list  # [S] first non-finite round, or None
    sim_time: list | None = None  # [S] with systems: each config's virtual clock (jaxqfl.systems)

    @classmethod
    def zeros(cls, num_configs: int) -> "SweepTotals":
        return cls([0] * num_configs, [0] * num_configs, 0.0, [None] * num_configs)


def count_values(count: dict, values) -> None:
    """Add each value of ``values`` (a host array of whole numbers) to ``count`` ({int value: occurrences})."""
    unique, n = np.unique(np.asarray(values), return_counts=True)
    for v, c in zip(unique.astype(int).tolist(), n.tolist()):
        count[v] = count.get(v, 0) + c


def _copy_counts(counts: dict) -> dict:
    return {name: dict(count) for name, count in counts.items()}


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


@jax.jit
def _all_finite_per_config(tree) -> jax.Array:
    """``[S]``: whether config s's leaves (every leaf ``[S, ...]``, a sweep's) are all finite; one program for the
    S configs instead of S slices and checks."""
    leaves = [jnp.all(jnp.isfinite(a.reshape(a.shape[0], -1)), axis=1) for a in jax.tree.leaves(tree)
              if jnp.issubdtype(a.dtype, jnp.inexact)]
    S = jax.tree.leaves(tree)[0].shape[0]
    return jnp.all(jnp.stack(leaves), axis=0) if leaves else jnp.ones(S, bool)


def run(
    sim: Simulation,
    *,
    rounds: int,
    eval_every: int,
    seed: int = 0,
    state: ServerState | None = None,
    on_eval: Callable[[dict], None] | None = None,
    block_rounds: int | None = None,
    totals: RunTotals = RunTotals(),
    should_stop: Callable[[], bool] | None = None,
    after_block: Callable[[ServerState, dict | None, RunTotals], None] | None = None,
    first_round: int = 0,
    systems=None,
    progress_seconds: float | None = None,
    on_progress: Callable[[block_pieces.Progress], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> RunResult:
    """Run ``rounds`` rounds, evaluating every ``eval_every`` rounds and after the last one.

    ``on_eval(record)`` is called after each evaluation (the CLI draws its progress
    bar from it); a record holds the round, the test metrics, the last round's train
    loss, the bit totals so far, the seconds so far and the last round's server
    metrics (the algorithm's and the aggregator's, prefixed ``server_``), and each such metric
    for every round of the block just run (``server_<name>_per_round``, a list).

    Args:
      block_rounds: rounds per compiled block. Default ``min(eval_every, rounds)``,
        evaluated after every block. When given, evaluation happens at the end of a
        block whose last round is a multiple of ``eval_every`` (counted from round 0
        of the run, whatever ``state.round``) or the last round. A run resumed from
        a checkpoint passes the original run's block size, so its blocks (and
        results, bit for bit) and evaluations are the uninterrupted run's.
      first_round: the run's round 0 in ``state.round`` (k-means: 1, after its seeding
        round); ``eval_every`` counts from it.
      totals: bit totals and seconds of the rounds before ``state`` (a resumed run).
      should_stop: checked after compilation and after every block; True ends the
        run there (``RunResult.stopped``), the state being the last block's.
      after_block: ``after_block(state, record_or_None, totals)`` after every block (and
        its evaluation), not after a diverged one; the CLI writes checkpoints from it.
        The state is donated to the next block, so anything kept must be copied (or
        saved) before returning.
      systems: a ``jaxqfl.systems.ClientSystems``: the virtual clock runs (each round's
        simulated seconds from its cohort's speeds, bandwidths, local steps and exact
        bits, :func:`jaxqfl.systems.block_seconds`); records carry ``sim_time``, the
        clock after their round, and ``totals.sim_time`` carries it across a resume.
        Default: the simulation's own (``Simulation.systems``, built with a round deadline).
      progress_seconds: None (default): each block is one ``run_block`` call. A number T:
        each block is dispatched in pieces of the same compiled program
        (``jaxqfl.engine.pieces``), sized by the measured round time so that a piece takes
        about T seconds: the run's first piece is one round, then
        ``p = clamp(floor(T / s), 1, rounds left in the block)`` with ``s`` the last piece's
        seconds per round. Same program, same results bit for bit, one host synchronisation
        per piece (its metrics fetch). Blocks of a simulation with ``piecewise=False`` stay
        whole. Evaluation, ``should_stop``, ``after_block`` and the
        divergence check stay at block ends.
      on_progress: ``on_progress(Progress(round, train_loss, seconds, rounds_per_second))``
        after every piece (after every block when ``progress_seconds`` is None).
      clock: the timer of pieces and blocks (``time.perf_counter``; a test injects a fake one).
        Each round's time (``RunResult.round_seconds``, records' ``round_seconds``) is its
        piece's time / the piece's rounds; they sum to the records' ``seconds`` differences.

    Divergence: after every block the train losses of its rounds and the new
    parameters are checked; a non-finite value ends the run at that block with
    ``RunResult.diverged_round`` set to the first non-finite round (the block's last
    round when only the parameters show it). The block is still evaluated (its record,
    with the non-finite values, is passed to ``on_eval``).
    """
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    if not isinstance(eval_every, int) or eval_every < 1:
        raise ValueError(f"eval_every must be a positive integer, got {eval_every!r}")
    block = min(eval_every, rounds) if block_rounds is None else block_rounds
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block_rounds must be a positive integer, got {block_rounds!r}")
    block_pieces.check_progress_seconds(progress_seconds)
    compile_seconds, state = startup.start(sim.compile_block, block, lambda: sim.init(seed) if state is None else state,
                                           lambda s: prepare_evaluation(sim, s))
    systems = getattr(sim, "systems", None) if systems is None else systems
    start_round = int(state.round)

    records, done, per_round, recorded = [], 0, [], 0  # recorded: rounds of per_round already in a record
    train_seconds, up_total, down_total = float(totals.seconds), int(totals.uplink_bits), int(totals.downlink_bits)
    diverged, stopped, first_round_started = None, False, None
    sim_time = float(totals.sim_time)
    tiers = getattr(sim, "tiers", None)  # a Simulation with client tiers (engine.tiers)
    if tiers is not None:
        T = len(tiers.models)
        tier_bits = np.asarray(totals.tier_uplink_bits or [0] * T, np.int64)
        tier_clients = np.asarray(totals.tier_clients or [0] * T, np.int64)
    pieced = progress_seconds is not None and getattr(sim, "piecewise", True)
    counts = {name: dict((totals.counts or {}).get(name, {})) for name in getattr(sim, "counted_metrics", ())}
    seconds_per_round = None  # the last piece's (None: no piece yet, the first is one round)
    while done < rounds:
        if should_stop is not None and should_stop():
            stopped = True
            break
        active = min(block, rounds - done)
        if first_round_started is None:
            first_round_started = time.time()  # the end of startup (the CLI's startup_seconds)

        def after_piece(piece_metrics, p, piece_seconds, ran):
            nonlocal train_seconds
            train_seconds += piece_seconds
            per_round.extend([piece_seconds / p] * p)  # one program call per piece: its rounds share its time
            if on_progress is not None:
                rate = (done + ran) / max(train_seconds - float(totals.seconds), 1e-12)
                on_progress(block_pieces.Progress(start_round + done + ran,
                                                  float(piece_metrics.train_loss[p - 1]), train_seconds, rate))

        state, metrics, seconds_per_round = block_pieces.run_in_pieces(
            sim.run_block, state, block, active, progress_seconds if pieced else None, seconds_per_round, clock,
            after_piece)
        for name, count in counts.items():
            count_values(count, metrics.clients[name][:active])
        up_total += int(np.sum(metrics.uplink_bits[:active], dtype=np.int64))
        down_total += int(np.sum(metrics.downlink_bits[:active], dtype=np.int64))
        if systems is not None:
            sim_time += float(np.sum(virtual_clock.block_seconds(systems, metrics, active)))
        if tiers is not None:
            by_tier = tier_totals(tiers.of_client, metrics.cohort[:active], metrics.uplink_bits[:active], T)
            tier_bits, tier_clients = tier_bits + by_tier["uplink_bits"], tier_clients + by_tier["clients"]
        done += active
        now = start_round + done
        losses = np.asarray(metrics.train_loss[:active])
        if not np.all(np.isfinite(losses)):
            diverged = start_round + done - active + 1 + int(np.argmin(np.isfinite(losses)))
        elif not bool(jax.device_get(_all_finite(state.params))):
            diverged = now
        rec = None
        if block_rounds is None or (now - first_round) % eval_every == 0 or done == rounds or diverged is not None:
            rec = block_record(now, evaluate(sim, state), metrics, active, up_total, down_total, train_seconds)
            rec["round_seconds"], recorded = per_round[recorded:], len(per_round)  # the rounds since the last record
            if tiers is not None:
                rec["tier_uplink_bits_total"], rec["tier_clients_total"] = tier_bits.tolist(), tier_clients.tolist()
            if systems is not None:
                rec["sim_time"] = sim_time
            records.append(rec)
            if on_eval is not None:
                on_eval(rec)
        if diverged is not None:
            break
        tier_carry = () if tiers is None else (tuple(tier_bits.tolist()), tuple(tier_clients.tolist()))
        if after_block is not None:
            after_block(state, rec, RunTotals(up_total, down_total, train_seconds, *tier_carry, sim_time=sim_time,
                                              counts=_copy_counts(counts)))
    result = RunResult(state, records, compile_seconds, train_seconds, done, up_total, down_total, diverged, stopped,
                       per_round, sim_time=sim_time if systems is not None else None,
                       first_round_started=first_round_started, counts=counts)
    if tiers is not None:
        result.tier_uplink_bits, result.tier_clients = tier_bits.tolist(), tier_clients.tolist()
    return result


def prepare_evaluation(sim: Simulation, state: ServerState) -> None:
    """Compile, without running, the programs the first evaluation and divergence check use.

    The test evaluation when ``sim.evaluate`` offers ``prepare`` (``engine.evaluation``; a
    wrapped one, e.g. per tier, compiles at its first call), and the finiteness check.
    """
    prepare = getattr(sim.evaluate, "prepare", None)
    if prepare is not None:
        prepare(state.params)
    _all_finite.lower(state.params).compile()


def evaluate(sim: Simulation, state: ServerState) -> dict:
    """The global model's test metrics, and the per-client ones of the models the clients use when they differ."""
    ev = sim.evaluate(state.params)
    if sim.evaluate_clients is not None:
        ev = personal_view(ev, sim.evaluate_clients(state))
    return ev


def block_record(round_index: int, ev: dict, metrics, active: int, up_total: int, down_total: int,
                 seconds: float) -> dict:
    """The record of an evaluated block: test metrics ``ev``, the block's ``RoundMetrics`` (leading [R]).

    Holds the last active round's train loss and server metrics (``server_<name>``)
    and every active round's server metrics (``server_<name>_per_round``, e.g. how
    many malicious clients took part in each round).
    """
    return {
        "round": round_index,
        "test_loss": ev["loss"],
        **{f"test_{k}": v for k, v in ev.items() if k != "loss"},
        "train_loss": float(metrics.train_loss[active - 1]),
        "uplink_bits_total": up_total,
        "downlink_bits_total": down_total,
        "seconds": seconds,
        **{f"server_{k}": float(np.asarray(v)[active - 1]) for k, v in metrics.server.items()},
        **{f"server_{k}_per_round": [float(x) for x in np.asarray(v)[:active]] for k, v in metrics.server.items()},
    }


def run_sweep(
    sim,
    *,
    rounds: int,
    eval_every: int,
    on_eval: Callable[[int, dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    states=None,
    block_rounds: int | None = None,
    totals: "SweepTotals | None" = None,
    after_block: Callable[[object, "SweepTotals"], None] | None = None,
    systems: Sequence | None = None,
    progress_seconds: float | None = None,
    on_progress: Callable[[block_pieces.Progress], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[RunResult]:
    """Run a ``SweepSimulation`` (``jaxqfl.engine.sweep``): one ``RunResult`` per config.

    Blocks of ``eval_every`` rounds run all configs in one program; after each
    block every config's model is evaluated and ``on_eval(config_index, record)``
    is called. Times are the sweep's (shared by all configs).

    Divergence is tracked per config, as ``run`` does for one: a config whose train
    loss or parameters become non-finite gets ``diverged_round`` (its first non-finite
    round); the other configs run on (a config cannot stop alone inside the program).
    ``should_stop`` is checked after compilation and after every block; True ends the
    sweep there, every result marked ``stopped``.

    Resuming (as ``run``): ``states`` is the config-stacked state to continue from
    (a checkpoint), ``totals`` the per-config bit totals, seconds and divergences
    before it, ``block_rounds`` the original sweep's block size (evaluation then
    happens at block ends whose round is a multiple of ``eval_every``, and after
    the last round). ``after_block(states, totals)`` runs after every block (the CLI
    writes checkpoints from it); ``states`` is donated to the next block, so save or
    copy what you keep before returning.

    ``systems``: one ``jaxqfl.systems.ClientSystems`` per config (each config's clients'
    speeds, e.g. drawn from its seed): every config runs its own virtual clock, as ``run``
    does for one (records' ``sim_time``, ``RunResult.sim_time``, ``totals.sim_time``).

    ``progress_seconds``, ``on_progress``, ``clock``: as ``run``'s. Each block of all the configs
    is dispatched in pieces of its compiled program (same results, bit for bit); a piece's
    ``Progress.train_loss`` is the mean of the configs' finite last train losses (NaN when none is).
    """
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    if not isinstance(eval_every, int) or eval_every < 1:
        raise ValueError(f"eval_every must be a positive integer, got {eval_every!r}")
    block_pieces.check_progress_seconds(progress_seconds)
    S = len(sim.configs)
    block = min(eval_every, rounds) if block_rounds is None else block_rounds
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block_rounds must be a positive integer, got {block_rounds!r}")
    compile_seconds, states = startup.start(sim.compile_block, block, lambda: sim.init() if states is None else states)
    start_round = int(np.max(np.asarray(jax.device_get(states.round))))
    totals = SweepTotals.zeros(S) if totals is None else totals
    records = [[] for _ in range(S)]
    up, down = np.asarray(totals.uplink_bits, np.int64).copy(), np.asarray(totals.downlink_bits, np.int64).copy()
    diverged: list[int | None] = list(totals.diverged)
    train_seconds, done, stopped = float(totals.seconds), 0, False
    per_round, first_round_started = [], None  # as run's: each round's block time / rounds; the start of round 1
    if systems is not None and len(systems) != S:
        raise ValueError(f"systems must give one ClientSystems per config ({S}), got {len(systems)}")
    sim_clock = None if systems is None else [float(t) for t in (totals.sim_time or [0.0] * S)]
    seconds_per_round = None  # the last piece's (None: no piece yet, the first is one round)
    while done < rounds:
        if should_stop is not None and should_stop():
            stopped = True
            break
        active = min(block, rounds - done)
        if first_round_started is None:
            first_round_started = time.time()  # the end of startup (the CLI's startup_seconds)

        def after_piece(piece_metrics, p, piece_seconds, ran):  # every leaf [R, S, ...]
            nonlocal train_seconds
            train_seconds += piece_seconds
            per_round.extend([piece_seconds / p] * p)
            if on_progress is not None:
                last = np.asarray(piece_metrics.train_loss[p - 1], np.float64)
                finite = last[np.isfinite(last)]
                rate = (done + ran) / max(train_seconds - float(totals.seconds), 1e-12)
                on_progress(block_pieces.Progress(start_round + done + ran,
                                                  float(finite.mean()) if finite.size else float("nan"),
                                                  train_seconds, rate))

        states, metrics, seconds_per_round = block_pieces.run_in_pieces(
            sim.run_block, states, block, active, progress_seconds, seconds_per_round, clock, after_piece)
        up += np.sum(metrics.uplink_bits[:active], axis=(0, 2), dtype=np.int64)
        down += np.sum(metrics.downlink_bits[:active], axis=(0, 2), dtype=np.int64)
        if sim_clock is not None:
            for s in range(S):
                sim_clock[s] += float(np.sum(virtual_clock.block_seconds(
                    systems[s], jax.tree.map(lambda a, s=s: a[:, s], metrics), active)))
        first = start_round + done
        done += active
        now = start_round + done
        finite = np.asarray(jax.device_get(_all_finite_per_config(states.params))) if None in diverged else None
        for s in range(S):
            if diverged[s] is None:
                losses = np.asarray(metrics.train_loss[:active, s])
                if not np.all(np.isfinite(losses)):
                    diverged[s] = first + 1 + int(np.argmin(np.isfinite(losses)))
                elif not finite[s]:
                    diverged[s] = now
        if block_rounds is None or now % eval_every == 0 or done == rounds:
            for s, ev in enumerate(sim.evaluate(states)):
                config_metrics = jax.tree.map(lambda a: a[:, s], metrics)
                rec = block_record(now, ev, config_metrics, active, int(up[s]), int(down[s]), train_seconds)
                if sim_clock is not None:
                    rec["sim_time"] = sim_clock[s]
                records[s].append(rec)
                if on_eval is not None:
                    on_eval(s, rec)
        if after_block is not None:
            after_block(states, SweepTotals(up.tolist(), down.tolist(), train_seconds, list(diverged),
                                            None if sim_clock is None else list(sim_clock)))
    config_state = lambda s: jax.tree.map(lambda a: a[s], states)
    return [RunResult(config_state(s), records[s], compile_seconds, train_seconds, done, int(up[s]), int(down[s]),
                      diverged[s], stopped, list(per_round), sim_time=None if sim_clock is None else sim_clock[s],
                      first_round_started=first_round_started)
            for s in range(S)]
