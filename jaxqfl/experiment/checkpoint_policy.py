"""When a run writes a checkpoint: every K rounds when asked, else at evaluations, at most one per 30 s.

* ``--checkpoint-every K`` (``checkpoint_every=K``): after every block ending on a round r with
  ``r % K == 0``, as asked.
* Default (K not given): at evaluations (every ``--eval-every`` rounds), but a due checkpoint is
  skipped while less than ``max(MIN_SECONDS, last write's seconds / MAX_SHARE)`` of wall time has
  passed since the rounds started or since the last checkpoint was written.
* Always: after the last round, and when a run stops early (Ctrl-C, SIGTERM): the runners save
  the final state whatever this policy says.

Why: an orbax checkpoint of a small model takes 0.1-0.2 s on a 2-core CPU. At every evaluation
of a 10-round MNIST MLP run evaluated every round, that was 1.6 s of its 5.3 s. The gate bounds
the cost of checkpoints to ``MAX_SHARE`` (2%) of the run whatever their size. What a killed
process (SIGKILL, power loss) loses is bounded by the gap, ``MIN_SECONDS`` (30 s) for a checkpoint
under 0.6 s, plus one block. Where the checkpoints fall changes no result: a resumed run
equals the uninterrupted one from any checkpoint (``tests/test_runs.py``).
"""
from __future__ import annotations

MIN_SECONDS = 30.0
MAX_SHARE = 0.02


def due(round_: int, *, every: int | None, eval_every: int, since_last: float, last_write: float = 0.0) -> bool:
    """Whether the block that ended on ``round_`` writes a checkpoint (the last round's is written anyway).

    Args:
      every: ``--checkpoint-every`` (None: not given, the default policy).
      eval_every: the run's evaluation period (the default policy's candidates).
      since_last: seconds since the rounds started or the last checkpoint was written.
      last_write: seconds the last checkpoint took to write (0 before the first).
    """
    if every is not None:
        return round_ % every == 0
    return round_ % eval_every == 0 and since_last >= max(MIN_SECONDS, last_write / MAX_SHARE)


class Gate:
    """``due(round)`` by the policy, with a clock; ``write(save, ...)`` runs and times each checkpoint write.

    ``clock`` (default ``time.monotonic``) is read at construction (the rounds' start), at each
    ``due`` and before and after each ``write``.
    """

    def __init__(self, every: int | None, eval_every: int, clock=None):
        import time

        self.every, self.eval_every = every, eval_every
        self.clock = time.monotonic if clock is None else clock
        self.last_at, self.last_write = self.clock(), 0.0

    def due(self, round_: int) -> bool:
        return due(round_, every=self.every, eval_every=self.eval_every, since_last=self.clock() - self.last_at,
                   last_write=self.last_write)

    def write(self, save, round_: int, directory, errors: list) -> bool:
        """Run ``save()`` (a checkpoint write), timed for the policy; True when it was written.

        A failed write (a full disk; orbax wraps the ``OSError`` in its own errors) is not counted: its
        message, ``checkpoint of round R in DIR: Error: ...``, is appended to ``errors`` (the runner stops).
        """
        start = self.clock()
        try:
            save()
        except Exception as e:
            errors.append(f"checkpoint of round {round_} in {directory}: {type(e).__name__}: {e}")
            return False
        self.last_at = self.clock()
        self.last_write = self.last_at - start
        return True
