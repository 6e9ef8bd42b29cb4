"""The XLA options of every program jaxqfl compiles, in one place: programs that compute the same values compile alike.

``OPTIONS = {"xla_cpu_use_fusion_emitters": False}``: XLA:CPU emits fused elementwise kernels with its
elemental IR emitters instead of its newer MLIR fusion emitters. Compilation is what a first run waits
for (issue 25: first run against a warm one); with this option the default ``jaxqfl run``'s round block
compiles in 1.10 CPU seconds instead of 1.55, its initialisation in 0.20 instead of 0.30 and its
evaluation in 0.17 instead of 0.29 (2-core Xeon, JAX 0.10.2), and the rounds run as fast
(``benchmarks/results/bench.md`` and ``startup.md`` give the side-by-side numbers). GPU and TPU compilers
ignore the option.

**Results.** Both emitters compute IEEE float32 operations, but they may fuse a multiply and an add
differently (a fused multiply-add rounds once), so a value can differ in its last bits. Of 17 command-line
configurations (every model, QAT presets, codecs, DP, robust aggregation, clustering, procedural data)
16 gave byte-identical final models with and without the option; ``--uplink hadamard+qsgd:4`` differed
in the last bits (train loss 2.2473223 against 2.2473221 after one round). Neither is more exact.

**One option set for all.** Two programs that jaxqfl compares bit for bit (a client's rows generated alone
and inside a cohort, a resumed run and an uninterrupted one, a sharded and a replicated home) must compile
alike, so every ``jax.jit`` in jaxqfl goes through :func:`jit`. A user's own programs are left to XLA's
defaults. A jaxlib whose XLA has no such option (checked once per process, by compiling a one-operation
program, :func:`options`) compiles with its defaults.
"""
from __future__ import annotations

import functools
import threading
from typing import Any, Callable

OPTIONS = {"xla_cpu_use_fusion_emitters": False}
PROBE_NAME = "jaxqfl_compile_options_probe"

_lock = threading.Lock()
_checked: dict | None = None


def options() -> dict:
    """:data:`OPTIONS` when this jaxlib accepts them (tried once per process), else ``{}``."""
    global _checked
    with _lock:
        if _checked is None:
            import jax
            import numpy as np

            def jaxqfl_compile_options_probe(x):
                return x + 1

            try:
                jax.jit(jaxqfl_compile_options_probe, compiler_options=OPTIONS).lower(np.int32(0)).compile()
                _checked = dict(OPTIONS)
            except Exception:  # an XLA without the option: "No such compile option"
                _checked = {}
        return dict(_checked)


class _Jitted:
    """``jax.jit(fun, compiler_options=options(), **kwargs)``, built at its first use (no backend starts before)."""

    def __init__(self, fun: Callable, kwargs: dict):
        self._fun, self._kwargs, self._jitted, self._nested = fun, kwargs, None, None
        functools.update_wrapper(self, fun)

    def _get(self):
        if self._jitted is None:
            import jax

            jitted = jax.jit(self._fun, compiler_options=options() or None, **self._kwargs)
            with _lock:
                if self._jitted is None:
                    self._jitted = jitted
        return self._jitted

    def __call__(self, *args, **kwargs):
        import jax

        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((args, kwargs))):
            # called while another program is traced (eval_shape, an outer jit): it becomes part of that
            # program, compiled with that program's options; JAX takes compiler options at the top level only
            if self._nested is None:
                self._nested = jax.jit(self._fun, **self._kwargs)
            return self._nested(*args, **kwargs)
        return self._get()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # lower, trace, eval_shape, ...
        if name.startswith("__") or name in ("_fun", "_kwargs", "_jitted", "_nested"):
            raise AttributeError(name)
        return getattr(self._get(), name)


def jit(fun: Callable | None = None, **kwargs):
    """``jax.jit`` with jaxqfl's compiler options (:func:`options`); as a decorator too, with or without arguments."""
    if fun is None:
        return lambda f: _Jitted(f, kwargs)
    return _Jitted(fun, kwargs)
