"""A run's start: the round block compiles on a worker thread while this one builds the first state.

On a first run (nothing in the compilation cache) a run compiles three programs before its first
result: the round block (about 1 s for the default run on a 2-core CPU, 1.4 CPU seconds), the
initialisation (0.25 s) and the evaluation (0.2-0.3 s). XLA compiles a
program largely on one core and releases the GIL while it does, so ``start`` compiles the
block on a worker thread while the calling thread traces and compiles the initial state
(``sim.init``) and then the evaluation program, ahead of time (``evaluate.prepare``; a later
call reuses it). They take about the longest one's time instead of the sum.

Only *when* each program compiles changes: the programs are the same (same HLO, same compile
options, so the same executables and results; ``tests/test_startup_overlap.py`` checks it). With a warm
cache each one is a load of a few milliseconds and nothing is gained or lost.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


def start(compile_block: Callable[[int], float], block: int, first_state: Callable[[], Any],
          prepare: Callable[[Any], None] | None = None) -> tuple[float, Any]:
    """``(compile seconds, state)``: ``compile_block(block)`` on a worker, ``first_state()`` and ``prepare(state)`` here.

    ``compile_block`` returns its own seconds (the worker's wall time). An error on this thread is
    raised once the worker has finished (no compile is left running); else the worker's, if any.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="jaxqfl-compile") as pool:
        compiling = pool.submit(compile_block, block)
        state = first_state()
        if prepare is not None:
            prepare(state)
        return compiling.result(), state
