"""argparse types shared by the ``jaxqfl`` subcommands: refuse a bad value with its text."""
from __future__ import annotations

import argparse
import math


def int_at_least(lowest: int, what: str):
    """An argparse type: an integer >= ``lowest``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < lowest:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}")
        return v

    return parse


positive_int = int_at_least(1, "positive")
nonneg_int = int_at_least(0, "non-negative")


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return v


def nonneg_float(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a non-negative finite number, got {text!r}")
    return v


def chunk_size(text: str) -> int | None:
    """An argparse type for ``--chunk-size``: ``auto`` (None: tuned or modelled) or a positive integer."""
    if text.strip().lower() == "auto":
        return None
    try:
        v = int(text)
    except ValueError:
        v = None
    if v is None or v < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {text!r}")
    return v


def on_off(text) -> bool:
    """An argparse type: ``on`` or ``off`` (a config file's ``true`` / ``false`` too)."""
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value not in ("on", "off", "true", "false"):
        raise argparse.ArgumentTypeError(f"expected 'on' or 'off', got {text!r}")
    return value in ("on", "true")


def _distinct(values: tuple, text: str) -> tuple:
    """Refuse a list with two values a sweep cannot tell apart: it computes in float32.

    ``0.1,0.10`` or two values equal to float32 precision would be one config run twice,
    writing into one folder.
    """
    import numpy as np

    seen = {}
    for v in values:
        key = float(np.float32(v))
        if key in seen:
            raise argparse.ArgumentTypeError(
                f"the values of a sweep must be distinct; {seen[key]!r} and {v!r} in {text!r} are the same "
                f"(to float32 precision, which the sweep computes in)")
        seen[key] = v
    return values


def positive_floats(text: str) -> tuple[float, ...]:
    """An argparse type: one positive number, or a comma-separated list of distinct ones (a sweep)."""
    values = tuple(positive_float(t.strip()) for t in text.split(",") if t.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, got {text!r}")
    return _distinct(values, text)


def nonneg_floats(text: str) -> tuple[float, ...]:
    """An argparse type: one number >= 0, or a comma-separated list of them (a sweep)."""
    values = tuple(nonneg_float(t.strip()) for t in text.split(",") if t.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"expected non-negative numbers separated by commas, got {text!r}")
    return _distinct(values, text)


def positive_ints(text: str) -> tuple[int, ...]:
    """An argparse type: one positive integer, or a comma-separated list of them (a sweep)."""
    values = tuple(positive_int(t.strip()) for t in text.split(",") if t.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return _distinct(values, text)


def seed_list(text: str) -> tuple[int, ...]:
    """An argparse type for ``--seeds``: ``0-7`` (inclusive), ``0,3,5``, or a mix (``0-3,9``); distinct, >= 0."""
    seeds: list[int] = []
    try:
        for part in (t.strip() for t in text.split(",") if t.strip()):
            if "-" in part[1:]:
                lo, hi = (int(p) for p in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(
            f"--seeds takes distinct non-negative integers as ranges and lists, e.g. 0-7 or 0,3,5; got {text!r}")
    return tuple(seeds)
