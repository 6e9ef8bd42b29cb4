"""Checking an algorithm's hyper-parameters: Python numbers are checked, traced ones pass.

A factory's hyper-parameter is either a Python number (checked here, before
any work, with a message naming the bad value) or a JAX value, as in a sweep
(``jaxqfl.engine.build_sweep`` hands ``make_algorithm`` traced float32
scalars): those cannot be inspected at build time and are used as they are.
"""
from __future__ import annotations

import numbers

import jax


def is_traced(value) -> bool:
    """True for a JAX array or tracer (a sweep's hyper-parameter), False for a Python number."""
    return isinstance(value, jax.Array)


def check_number(owner: str, name: str, value, *, low: float, low_inclusive: bool, high: float | None = None,
                 describe: str):
    """``float(value)`` if it is a Python number in range, ``value`` if it is traced; else ``ValueError``."""
    if is_traced(value):
        return value
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (v >= low if low_inclusive else v > low) and (high is None or v < high)
    if not ok:
        raise ValueError(f"{owner} {name} must be {describe}, got {value!r}")
    return float(value)
