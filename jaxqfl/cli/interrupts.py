"""Ctrl-C (SIGINT) and SIGTERM end a run at its next safe point, not in the middle of XLA.

A Python signal handler runs only between bytecodes of the main thread, so the
default one (raising ``KeyboardInterrupt``) fires wherever the interpreter is:
inside a tracing callback, half-way through writing a file, or as XLA's
compilation returns, which has ended in a segmentation fault. The handler here
only records the signal. The run checks the flag at safe points (after
compilation, between blocks of rounds), writes a checkpoint and a summary with
``"interrupted": true``, and exits with ``128 + signal`` (130 for SIGINT, 143 for
SIGTERM), the shell's convention. A second signal exits at once, with the same
status, without writing anything more (the last checkpoint stays).
"""
from __future__ import annotations

import os
import signal


class StopRequest:
    """Install with ``install()``; ``requested`` tells whether a signal came, ``exit_status`` what to exit with."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        del frame
        if self.signum is not None:  # the second signal: leave now
            os._exit(128 + signum)
        self.signum = signum

    def install(self) -> "StopRequest":
        for s in (signal.SIGINT, signal.SIGTERM):
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def uninstall(self) -> None:
        """Put back the handlers found by ``install`` (the command may run inside another program)."""
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_status(self) -> int:
        return 128 + self.signum if self.signum is not None else 0

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""
