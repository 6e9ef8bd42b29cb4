"""When a run checkpoints (issue 25): every K rounds when asked; by default at evaluations, at most one per 30 s.

``jaxqfl.experiment.checkpoint_policy``: the rule against a fake clock, and the runs it
governs (a short default run writes only its last round's checkpoint; with the gate at 0 s,
one at every evaluation, as ``--checkpoint-every`` always does).
"""
import pytest

from jaxqfl.engine import checkpoint
from jaxqfl.experiment import checkpoint_policy as policy


def test_an_asked_period_is_kept_exactly():
    assert [r for r in range(1, 13) if policy.due(r, every=3, eval_every=2, since_last=0.0)] == [3, 6, 9, 12]


def test_by_default_only_evaluations_at_least_the_gap_apart_checkpoint():
    due = [r for r in range(1, 9) if policy.due(r, every=None, eval_every=2, since_last=policy.MIN_SECONDS)]
    assert due == [2, 4, 6, 8]
    assert not policy.due(4, every=None, eval_every=2, since_last=policy.MIN_SECONDS - 0.01)
    # a slow checkpoint widens the gap so that checkpoints take at most MAX_SHARE of the run
    slow = 2.0
    assert not policy.due(4, every=None, eval_every=2, since_last=slow / policy.MAX_SHARE - 1, last_write=slow)
    assert policy.due(4, every=None, eval_every=2, since_last=slow / policy.MAX_SHARE, last_write=slow)


def test_the_gate_counts_from_the_start_and_from_each_write():
    now = [100.0]
    gate = policy.Gate(None, 1, clock=lambda: now[0])
    written, errors = [], []

    def save():  # a write of 0.5 s
        now[0] += 0.5

    for r in range(1, 11):
        now[0] += 10.0  # 10 s a round
        if gate.due(r) and gate.write(save, r, "ckpt", errors):
            written.append(r)
    assert written == [3, 6, 9] and errors == []  # 30 s after the start, then 30 s after each write
    assert gate.last_write == 0.5

    def full_disk():
        now[0] += 40.0
        raise OSError(28, "No space left on device")

    assert not gate.write(full_disk, 12, "ckpt", errors)  # not counted: the gap still runs from round 9's write
    assert errors == ["checkpoint of round 12 in ckpt: OSError: [Errno 28] No space left on device"]
    assert gate.last_write == 0.5 and gate.due(12)
    assert policy.Gate(5, 1, clock=lambda: 0.0).due(5) and not policy.Gate(5, 1, clock=lambda: 1e9).due(4)


RUN = ["run", "--dataset", "synthetic", "--num-clients", "12", "--cohort-size", "4", "--rounds", "4",
       "--eval-every", "1", "--local-steps", "2", "--devices", "2", "--no-progress"]


@pytest.mark.parametrize("gap, expected", [(None, [4]), (0.0, [3, 4])])
def test_a_default_run_checkpoints_by_the_gate_and_always_its_last_round(tmp_path, monkeypatch, gap, expected):
    from jaxqfl.cli.main import main

    if gap is not None:  # no gap at all: a checkpoint at every evaluation
        monkeypatch.setattr(policy, "MIN_SECONDS", gap)
        monkeypatch.setattr(policy, "MAX_SHARE", float("inf"))
    assert main(RUN + ["--out", str(tmp_path / "run")]) == 0
    assert checkpoint.all_rounds(tmp_path / "run" / "checkpoints") == expected  # the two latest are kept
