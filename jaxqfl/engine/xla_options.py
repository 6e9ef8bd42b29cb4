"""The options jaxqfl's programs are compiled with: on a CPU, LLVM at ``-O1`` instead of XLA's default ``-O2``.

On the CPU backend most of a cold start is compiling the round block, and most
of that is LLVM optimising the fused loops that XLA emits (the matrix products
and convolutions are library calls, not generated code). ``-O1`` keeps the
same HLO (fusion, layout and scheduling are decided before LLVM) and drops
LLVM's more expensive loop passes. Measured on the shared 2-core CPU (AMD
EPYC, 2 XLA devices), the default ``jaxqfl run --rounds 10`` with an empty
cache, two alternating pairs:

    -O2 (XLA's default)   round block compile 3.58 s, whole process 8.30 s, 10.5 ms a round
    -O1 (this module)     round block compile 2.05 s, whole process 6.05 s,  9.4 ms a round

and the final parameters are bit-identical (sha256 of ``final_params.msgpack``)
on that run, on an MNIST MLP SCAFFOLD run and on a QAT (w4a8) CNN with a
QSGD uplink. ``-O0`` compiles faster still but changes results in the last
bits, so it is not used. Rounds are not slower at ``-O1`` on the bench
workloads (``benchmarks/results/bench.md``, before and after).

On other backends (GPU, TPU) nothing is changed: :func:`options` is empty.
Every program of a run goes through :func:`jit` or :func:`compile`, so the
chunk-size search times exactly the programs the run executes.
"""
from __future__ import annotations

import jax

CPU_OPTIONS = {"xla_backend_optimization_level": 1}


def options() -> dict:
    """The compiler options for the default backend's programs (``{}`` off the CPU)."""
    return dict(CPU_OPTIONS) if jax.default_backend() == "cpu" else {}


def jit(fun, **kwargs):
    """``jax.jit(fun, **kwargs)`` compiled with :func:`options`."""
    return jax.jit(fun, compiler_options=options() or None, **kwargs)


def compile(lowered):
    """``lowered.compile()`` with :func:`options`."""
    opts = options()
    return lowered.compile(compiler_options=opts) if opts else lowered.compile()
