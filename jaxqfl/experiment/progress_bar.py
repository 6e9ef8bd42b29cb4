"""The run's progress bar: a tqdm bar over rounds, moved after every piece of rounds (``engine.run``'s ``on_progress``).

After each piece it shows the piece's last train loss and the rounds per second of
device time; after each evaluation the test loss, accuracy and privacy spent. A run
with ``--no-progress`` has no bar and dispatches whole blocks (``progress_seconds=None``).
"""
from __future__ import annotations

import contextlib

#: Target seconds per piece of rounds when the bar is on (``engine.run(progress_seconds=...)``).
PROGRESS_SECONDS = 1.0


class ProgressBar:
    """``piece(progress)`` after every piece, ``record(rec)`` after every evaluation; no-ops when disabled."""

    def __init__(self, bar=None):
        self.bar = bar
        self.post: dict = {}

    @property
    def progress_seconds(self) -> float | None:
        """What ``engine.run`` is given: pieces of about a second with a bar, whole blocks without one."""
        return None if self.bar is None else PROGRESS_SECONDS

    @property
    def on_progress(self):
        return None if self.bar is None else self.piece

    def piece(self, progress) -> None:
        self.post["train"] = f"{progress.train_loss:.4f}"
        self.post["rounds/s"] = f"{progress.rounds_per_second:.2f}"
        self._show(progress.round)

    def record(self, rec: dict) -> None:
        if self.bar is None:
            return
        self.post["loss"] = f"{rec['test_loss']:.4f}"
        if "test_accuracy" in rec:
            self.post["acc"] = f"{rec['test_accuracy']:.4f}"
        if rec.get("dp_epsilon") is not None:
            self.post["eps"] = f"{rec['dp_epsilon']:.2f}"
        self._show(rec["round"])

    def _show(self, round_index: int) -> None:
        self.bar.set_postfix(self.post, refresh=False)
        self.bar.update(round_index - self.bar.n)
        self.bar.refresh()


@contextlib.contextmanager
def progress_bar(total_rounds: int, enabled: bool, start: int = 0):
    """Yields a ``ProgressBar`` over ``total_rounds`` rounds starting at ``start`` (disabled: it draws nothing)."""
    if not enabled:
        yield ProgressBar()
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total_rounds, initial=start, unit="round", dynamic_ncols=True)
    try:
        yield ProgressBar(bar)
    finally:
        bar.close()
