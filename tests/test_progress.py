"""Progress by pieces (issue 25): a block dispatched in pieces of the same program gives the whole block's results.

``engine.run(progress_seconds=T)`` runs each block as several calls of its compiled
program (``jaxqfl.engine.pieces``). Checked here: the final params and the records
(timing keys removed) equal the whole-block run's bit for bit, for each block runner
that allows pieces; nothing new is compiled; ``on_progress`` follows every piece;
the piece sizes follow the rule against a fake clock; per-round times sum to the
records' seconds.
"""
import json

import jax
import numpy as np
import optax
import pytest

from jaxqfl import algorithms, compress, engine, models, systems
from jaxqfl.engine import pieces
from jaxqfl.engine.compilations import CompilationLog
from jaxqfl.engine.driver import TIMING_KEYS
from populations import classification_population

C, M = 16, 4


@pytest.fixture(scope="module")
def population():
    rng = np.random.default_rng(3)
    return classification_population(rng.integers(3, 12, size=C).tolist(), num_features=5, num_classes=3, seed=3)


@pytest.fixture(scope="module")
def sim(population):
    """One in-memory simulation for the default tests: its block program (4 rounds) compiles once."""
    return _in_memory(population)


def _schedule():
    return engine.LocalSchedule(local_steps=2, batch_size=4)


def _in_memory(population, **kw):
    """FedAvg with server momentum and an error-feedback uplink: per-client and server state carried over pieces."""
    return engine.build(population, models.mlp(hidden=(6,), num_outputs=3),
                        algorithms.fedavg(optax.sgd(0.2), optax.sgd(1.0, momentum=0.5)), _schedule(),
                        cohort_size=M, num_devices=2, chunk_size=2, uplink=compress.from_spec("topk:0.3+ef"), **kw)


def _host_home(population):
    return _in_memory(population, client_state="host")


def _deadline(population):
    profile = systems.draw_lognormal_systems(jax.random.key(0), C, 1.0, step_seconds=0.5, bandwidth_bps=2e4)
    return engine.build(population, models.logistic_regression(3), algorithms.fedavg(optax.sgd(0.2)), _schedule(),
                        cohort_size=M, num_devices=2, chunk_size=2, systems=profile, deadline=1.5,
                        stragglers="partial", uplink=compress.from_spec("qsgd:4"))


def _tiers(population):
    m = models.logistic_regression(3)
    tiers = engine.Tiers(engine.draw_tiers([0.5, 0.5], C, 1), (m, m), (compress.from_spec("qsgd:4"), None))
    return engine.build(population, m, algorithms.fedavg(optax.sgd(0.2)), _schedule(), cohort_size=M,
                        num_devices=2, chunk_size=2, tiers=tiers)


def _fedbuff(population):
    profile = systems.draw_lognormal_systems(jax.random.key(1), C, 1.0, step_seconds=0.5, bandwidth_bps=2e4)
    return engine.build_fedbuff(population, models.logistic_regression(3), algorithms.fedavg(optax.sgd(0.2)),
                                _schedule(), concurrency=6, buffer=3, staleness="sqrt", systems=profile,
                                num_devices=1)


def _stripped(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def _assert_same_run(a, b):
    for x, y in zip(jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert _stripped(a.records) == _stripped(b.records)
    assert (a.uplink_bits_total, a.downlink_bits_total, a.sim_time, a.tier_uplink_bits) == \
           (b.uplink_bits_total, b.downlink_bits_total, b.sim_time, b.tier_uplink_bits)


def _pieces_equal_whole_blocks(sim, rounds=5, eval_every=4, **kw):
    """Run whole blocks, then pieces of one round on the same sim: same results, nothing compiled, progress per round."""
    with CompilationLog() as whole_log:
        whole = engine.run(sim, rounds=rounds, eval_every=eval_every, seed=4, **kw)
    seen = []
    with CompilationLog() as piece_log:
        pieced = engine.run(sim, rounds=rounds, eval_every=eval_every, seed=4, progress_seconds=1e-12,
                            on_progress=seen.append, **kw)
    _assert_same_run(whole, pieced)
    assert piece_log.count() == 0, piece_log.counts()  # the whole-block run's programs, reused as they are
    assert [p.round for p in seen] == list(range(1, rounds + 1))  # one round per piece
    assert len(pieced.round_seconds) == rounds
    return whole_log


def test_pieces_equal_whole_blocks_in_memory(sim):
    log = _pieces_equal_whole_blocks(sim)
    assert log.count("jit(round_block)") <= 1, log.counts()  # compiled once (here, or by an earlier test)


@pytest.mark.slow
@pytest.mark.parametrize("make", [_host_home, _deadline, _tiers, _fedbuff], ids=["host-home", "deadline", "tiers",
                                                                                  "fedbuff"])
def test_pieces_equal_whole_blocks_other_runners(population, make):
    _pieces_equal_whole_blocks(make(population))


@pytest.mark.slow
def test_pieces_equal_whole_blocks_with_personal_evaluation(population):
    from jaxqfl.data import split_test_by_labels
    from jaxqfl.engine.client_evaluation import FineTune

    pop = split_test_by_labels(population, seed=0) if population.test_counts is None else population
    sim = _in_memory(pop, personal_eval=FineTune(2, 0.1, None))
    assert sim.evaluate_clients is not None
    _pieces_equal_whole_blocks(sim)


def _streamed(population):
    return engine.build_streaming(population, models.logistic_regression(3), algorithms.fedavg(optax.sgd(0.2)),
                                  _schedule(), cohort_size=M, num_devices=2, chunk_size=2)


def _calls(sim, **kw):
    """The ``num_active`` of every run_block call of a 5-round run with pieces of one round asked for."""
    calls = []

    def counted(state, num_rounds, num_active=None):
        calls.append(num_active)
        return sim.run_block(state, num_rounds, num_active)

    engine.run(sim._replace(run_block=counted), rounds=5, eval_every=4, seed=0, progress_seconds=1e-12, **kw)
    return calls


def test_blocks_of_a_non_piecewise_simulation_stay_whole(population, sim):
    """A simulation that says its blocks cannot be split (``piecewise=False``) gets whole blocks."""
    assert sim.piecewise is True
    assert _calls(sim._replace(piecewise=False)) == [4, 1]
    assert _calls(sim) == [1] * 5


@pytest.mark.slow
def test_a_streamed_runs_pieces_equal_its_whole_blocks(population):
    """Rows gathered on the host per round: pieces of one round give the whole blocks' results."""
    sim = _streamed(population)
    assert sim.piecewise is True and _calls(sim) == [1] * 5
    _pieces_equal_whole_blocks(sim)


class FakeClock:
    """Time that moves only when a round runs: round r takes ``seconds(r)``."""

    def __init__(self, seconds):
        self.now, self.seconds, self.pieces = 0.0, seconds, []

    def __call__(self) -> float:
        return self.now

    def timed(self, sim):
        def run_block(state, num_rounds, num_active=None):
            r0 = int(state.round)
            self.pieces.append(num_active)
            self.now += sum(self.seconds(r) for r in range(r0, r0 + num_active))
            return sim.run_block(state, num_rounds, num_active)

        return sim._replace(run_block=run_block)


def test_piece_sizes_follow_measured_round_time(sim):
    """First piece one round, then floor(T / last piece's seconds per round), clamped to [1, left in block]."""
    clock = FakeClock(lambda r: 0.25 if r < 6 else 0.5)
    seen = []
    result = engine.run(clock.timed(sim), rounds=12, eval_every=4, seed=0, progress_seconds=1.0,
                        on_progress=seen.append, clock=clock)
    # block 1: 1 round (0.25 s/round) -> floor(4) clamped to the 3 left; block 2: 4 rounds, 1.5 s (0.375 s/round);
    # block 3: floor(1 / 0.375) = 2 rounds (0.5 s/round) -> 2
    assert clock.pieces == [1, 3, 4, 2, 2]
    assert [p.round for p in seen] == [1, 4, 8, 10, 12]
    assert [p.seconds for p in seen] == [0.25, 1.0, 2.5, 3.5, 4.5]
    assert seen[-1].rounds_per_second == 12 / 4.5
    assert result.round_seconds == [0.25] * 4 + [0.375] * 4 + [0.5] * 4
    # per-round times of each record sum to its seconds since the previous record
    previous = 0.0
    for rec in result.records:
        assert abs(sum(rec["round_seconds"]) - (rec["seconds"] - previous)) <= 1e-12
        previous = rec["seconds"]
    assert [len(r["round_seconds"]) for r in result.records] == [4, 4, 4]
    # the train loss of a block's last piece is its record's
    assert [seen[i].train_loss for i in (1, 2, 4)] == [r["train_loss"] for r in result.records]


def test_slow_rounds_move_progress_every_round(sim):
    """Rounds slower than progress_seconds: every piece is one round, several per block; None keeps whole blocks."""
    slow = FakeClock(lambda r: 2.0)
    seen = []
    engine.run(slow.timed(sim), rounds=5, eval_every=4, seed=0, progress_seconds=1.0, on_progress=seen.append,
               clock=slow)
    assert slow.pieces == [1] * 5 and [p.round for p in seen] == [1, 2, 3, 4, 5]
    whole, seen = FakeClock(lambda r: 2.0), []
    engine.run(whole.timed(sim), rounds=5, eval_every=4, seed=0, clock=whole, on_progress=seen.append)
    assert whole.pieces == [4, 1] and [p.round for p in seen] == [4, 5]


def test_piece_rounds_rule():
    assert pieces.piece_rounds(1.0, None, 7) == 1
    assert pieces.piece_rounds(1.0, 0.3, 7) == 3
    assert pieces.piece_rounds(1.0, 0.01, 7) == 7
    assert pieces.piece_rounds(1.0, 5.0, 7) == 1
    assert pieces.piece_rounds(1.0, 0.0, 7) == 7
    assert pieces.piece_rounds(1.0, 1e-300, 3) == 3


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "1", True])
def test_bad_progress_seconds_is_refused(bad):
    sim = engine.Simulation(*([None] * 11))  # refused before the simulation is touched
    with pytest.raises(ValueError, match="progress_seconds must be None or a positive finite"):
        engine.run(sim, rounds=2, eval_every=1, progress_seconds=bad)


def test_cli_bar_dispatches_pieces_and_times_sum(tmp_path, capsys):
    """The CLI's bar (no --no-progress) runs pieces: the first round's time is its own; times sum to seconds."""
    from jaxqfl.cli.main import main

    out = tmp_path / "run"
    assert main(["run", "--num-clients", "8", "--cohort-size", "4", "--rounds", "4", "--eval-every", "2",
                 "--local-steps", "1", "--devices", "2", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first = records[0]["round_seconds"]
    assert len(first) == 2 and first[0] != first[1]  # two pieces of one round (a whole block: equal shares)
    previous = 0.0
    for rec in records:
        assert abs(sum(rec["round_seconds"]) - (rec["seconds"] - previous)) < 1e-9 * max(1.0, rec["seconds"])
        previous = rec["seconds"]
    summary = json.loads((out / "summary.json").read_text())
    every = [t for r in records for t in r["round_seconds"]]
    assert summary["round_seconds_median"] == float(np.median(every))
    assert "round" in capsys.readouterr().err  # the bar was drawn


def test_a_sweeps_pieces_equal_its_whole_blocks(population):
    """``engine.run_sweep`` in pieces of one round: every config's params and records as whole blocks, nothing
    compiled, one progress report per round whose loss is the mean of the configs' last train losses."""

    def fedavg(hp):
        return algorithms.fedavg(optax.sgd(hp["client_lr"]), optax.sgd(1.0, momentum=0.5))

    configs = [{"client_lr": 0.1, "seed": 0}, {"client_lr": 0.3, "seed": 1}]
    sim = engine.build_sweep(population, models.logistic_regression(3), fedavg, _schedule(), configs=configs,
                             cohort_size=M, num_devices=2, chunk_size=2)
    whole = engine.run_sweep(sim, rounds=5, eval_every=4)
    seen, losses = [], []

    def progress(p):
        seen.append(p)

    with CompilationLog() as log:
        pieced = engine.run_sweep(sim, rounds=5, eval_every=4, progress_seconds=1e-12, on_progress=progress)
    assert log.count() == 0, log.counts()
    for a, b in zip(whole, pieced, strict=True):
        _assert_same_run(a, b)
        losses.append([r["train_loss"] for r in b.records])
    assert [p.round for p in seen] == [1, 2, 3, 4, 5]
    last = {4: 0, 5: 1}  # the evaluated rounds' train losses, per config: their mean is the report's
    for rnd, i in last.items():
        assert seen[rnd - 1].train_loss == pytest.approx(np.mean([c[i] for c in losses]), rel=1e-6)
