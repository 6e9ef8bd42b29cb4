"""When this process started, on the wall clock: the origin of a run's ``startup_seconds``.

``startup_seconds`` (summary.json) is the wall time from the origin to the start
of the run's first round (the first training block's dispatch, after data,
tuning and compilation): import, data, tuning and compile time together, as a
user waits for them. The origin is the process's start when ``jaxqfl`` runs as
a command (``jaxqfl run``, ``python -m jaxqfl.cli.main run``), so the
interpreter's start and every import count; it is the ``main([...])`` call when
the CLI is called from Python (a test, a notebook), whose process started long
before.

The process's start on Linux, from the kernel's own counters (no psutil):

    age   = uptime - starttime / CLK_TCK        (/proc/uptime; /proc/self/stat field 22, clock ticks since boot)
    start = time.time() - age

both on the boot clock, so the start is exact to a clock tick (10 ms). Where
``/proc`` is missing, the origin falls back to this module's import, which the
command imports first: ``start`` is then late by the interpreter's start only.
"""
from __future__ import annotations

import os
import time

IMPORTED_AT = time.time()  # the fallback origin, for a system without /proc
PROCESS_START = "process start"
MAIN_CALL = "jaxqfl.cli.main.main() call"
MODULE_IMPORT = "jaxqfl.cli import (no /proc)"


def process_start() -> tuple[float, str]:
    """``(epoch seconds, what they are)``: the process's start (Linux), else this module's import."""
    try:
        with open("/proc/self/stat") as f:
            stat = f.read()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        # the command name (field 2) is in parentheses and may hold spaces: count fields after the last ')'
        starttime_ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22; the list starts at field 3
        age = uptime - starttime_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return IMPORTED_AT, MODULE_IMPORT
    return time.time() - max(age, 0.0), PROCESS_START


def startup_fields(origin: tuple[float, str], first_round_started: float | None) -> dict:
    """``startup_seconds``: wall time from ``origin`` (:func:`process_start`, or a call's time) to the first round's start
    (None when this process ran no round), and ``startup_from``, what the origin is."""
    start, what = origin
    seconds = None if first_round_started is None else first_round_started - start
    return {"startup_seconds": seconds, "startup_from": what}
