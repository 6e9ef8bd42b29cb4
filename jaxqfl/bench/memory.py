"""Peak resident memory (RSS) of this process over a stretch of code.

``ru_maxrss`` is a high-water mark for the whole process, so it cannot tell one
workload's peak from an earlier one's. ``PeakRSS`` instead samples the current
RSS from a background thread every ``interval`` seconds while its ``with``
block runs and keeps the maximum (plus one sample at entry and one at exit). On
a CPU backend device buffers are host memory, so this is the simulation's
whole footprint: population, device copies, program temporaries.
"""
from __future__ import annotations

import os
import threading


def current_rss() -> int:
    """Resident set size of this process, in bytes."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # pragma: no cover - psutil is in the bench extra
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """``with PeakRSS() as m: ...`` then ``m.peak`` (bytes) and ``m.start`` (bytes at entry)."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.start = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, current_rss())

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = current_rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, current_rss())
