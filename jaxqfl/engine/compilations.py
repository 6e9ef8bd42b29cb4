"""Count XLA compilations: which programs were compiled while a block of code ran.

JAX reports every backend compilation as the monitoring event
``/jax/core/compile/backend_compile_duration`` with the compiled function's
name; ``CompilationLog`` listens to it. Tracing and lowering alone (e.g. a
cache hit in jit's C++ dispatch) compile nothing and are not counted. A
program loaded from JAX's persistent compilation cache
(``JAX_COMPILATION_CACHE_DIR``) is reported by the same event and counted
like a compilation: the count says how many programs were built, whichever way.

    with CompilationLog() as log:
        engine.run(sim, rounds=10, eval_every=5)
    log.count("round_block")  # -> 1
"""
from __future__ import annotations

import collections

import jax

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompilationLog:
    """Context manager recording the names of the programs XLA compiled inside it."""

    def __init__(self):
        self.names: list[str] = []

    def _listener(self, event: str, duration: float, **kwargs) -> None:
        del duration
        if event == BACKEND_COMPILE_EVENT:
            self.names.append(str(kwargs.get("fun_name", "?")))

    def __enter__(self) -> "CompilationLog":
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listener)

    def count(self, name: str | None = None) -> int:
        """Compilations of programs called ``name`` (all programs when None)."""
        return len(self.names) if name is None else sum(1 for n in self.names if n == name)

    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(self.names))
