"""Running a simulation: blocks of rounds on the device, evaluation between blocks.

The host loop is over *blocks* of ``eval_every`` rounds, never over clients or
local steps. Each block is one compiled program (``Simulation.run_block``); the
host synchronises once per block, to read the block's metrics and evaluate the
global model on the test set. The last block, if shorter, runs the same program
with its tail rounds skipped, so a run compiles the block program exactly once.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import numpy as np

from jaxqfl.engine.simulation import Simulation
from jaxqfl.engine.state import ServerState


@dataclasses.dataclass
class RunResult:
    state: ServerState
    records: list[dict]  # one per evaluated round
    compile_seconds: float
    train_seconds: float  # device time of the rounds, compilation excluded
    rounds: int
    uplink_bits_total: int
    downlink_bits_total: int

    @property
    def seconds_per_round(self) -> float:
        return self.train_seconds / max(self.rounds, 1)

    @property
    def final(self) -> dict:
        return self.records[-1] if self.records else {}


def run(
    sim: Simulation,
    *,
    rounds: int,
    eval_every: int,
    seed: int = 0,
    state: ServerState | None = None,
    on_eval: Callable[[dict], None] | None = None,
) -> RunResult:
    """Run ``rounds`` rounds, evaluating every ``eval_every`` rounds and after the last one.

    ``on_eval(record)`` is called after each evaluation (the CLI draws its progress
    bar from it); a record holds the round, the test metrics, the last round's train
    loss, the bit totals so far, the seconds so far and the last round's server
    metrics (the algorithm's and the aggregator's, prefixed ``server_``).
    """
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    if not isinstance(eval_every, int) or eval_every < 1:
        raise ValueError(f"eval_every must be a positive integer, got {eval_every!r}")
    block = min(eval_every, rounds)
    compile_seconds = sim.compile_block(block)
    state = sim.init(seed) if state is None else state
    start_round = int(state.round)

    records, train_seconds, up_total, down_total, done = [], 0.0, 0, 0, 0
    while done < rounds:
        active = min(block, rounds - done)
        t0 = time.perf_counter()
        state, metrics = sim.run_block(state, block, active)
        metrics = jax.device_get(metrics)
        train_seconds += time.perf_counter() - t0
        up_total += int(np.sum(metrics.uplink_bits[:active], dtype=np.int64))
        down_total += int(np.sum(metrics.downlink_bits[:active], dtype=np.int64))
        done += active
        ev = sim.evaluate(state.params)
        rec = {
            "round": start_round + done,
            "test_loss": ev["loss"],
            **{f"test_{k}": v for k, v in ev.items() if k != "loss"},
            "train_loss": float(metrics.train_loss[active - 1]),
            "uplink_bits_total": up_total,
            "downlink_bits_total": down_total,
            "seconds": train_seconds,
            **{f"server_{k}": float(np.asarray(v)[active - 1]) for k, v in metrics.server.items()},
        }
        records.append(rec)
        if on_eval is not None:
            on_eval(rec)
    return RunResult(state, records, compile_seconds, train_seconds, rounds, up_total, down_total)


def run_sweep(
    sim,
    *,
    rounds: int,
    eval_every: int,
    on_eval: Callable[[int, dict], None] | None = None,
) -> list[RunResult]:
    """Run a ``SweepSimulation`` (``jaxqfl.engine.sweep``): one ``RunResult`` per config.

    Blocks of ``eval_every`` rounds run all configs in one program; after each
    block every config's model is evaluated and ``on_eval(config_index, record)``
    is called. Times are the sweep's (shared by all configs).
    """
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    if not isinstance(eval_every, int) or eval_every < 1:
        raise ValueError(f"eval_every must be a positive integer, got {eval_every!r}")
    S = len(sim.configs)
    block = min(eval_every, rounds)
    compile_seconds = sim.compile_block(block)
    states = sim.init()
    records = [[] for _ in range(S)]
    up, down = np.zeros(S, np.int64), np.zeros(S, np.int64)
    train_seconds, done = 0.0, 0
    while done < rounds:
        active = min(block, rounds - done)
        t0 = time.perf_counter()
        states, metrics = sim.run_block(states, block, active)
        metrics = jax.device_get(metrics)  # every leaf [R, S, ...]
        train_seconds += time.perf_counter() - t0
        up += np.sum(metrics.uplink_bits[:active], axis=(0, 2), dtype=np.int64)
        down += np.sum(metrics.downlink_bits[:active], axis=(0, 2), dtype=np.int64)
        done += active
        for s, ev in enumerate(sim.evaluate(states)):
            rec = {
                "round": done,
                "test_loss": ev["loss"],
                **{f"test_{k}": v for k, v in ev.items() if k != "loss"},
                "train_loss": float(metrics.train_loss[active - 1, s]),
                "uplink_bits_total": int(up[s]),
                "downlink_bits_total": int(down[s]),
                "seconds": train_seconds,
                **{f"server_{k}": float(np.asarray(v)[active - 1, s]) for k, v in metrics.server.items()},
            }
            records[s].append(rec)
            if on_eval is not None:
                on_eval(s, rec)
    config_state = lambda s: jax.tree.map(lambda a: a[s], states)
    return [RunResult(config_state(s), records[s], compile_seconds, train_seconds, rounds, int(up[s]), int(down[s]))
            for s in range(S)]
