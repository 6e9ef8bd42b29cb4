"""The value kinds of settings and hyper-parameters (an experiment's, a registry entry's).

Each kind turns a flag's text (or a TOML / Python value) into the typed value, or raises
:class:`InvalidValue` naming what it got and what is allowed.

Every way in goes through the same function: the command line hands it the flag's text, a TOML file or a
Python script hands it a value, which :func:`as_text` first writes the way the flag would be typed (a list as
``a,b,c``, a boolean as ``true``/``false``). So a setting has one meaning, one range and one refusal message
whichever way it is given. The command line adapts these in ``jaxqfl.cli.argtypes``.
"""
from __future__ import annotations

import math


class ExperimentError(ValueError):
    """An experiment that cannot run as given: the message names the settings and what is allowed."""


class InvalidValue(ExperimentError):
    """A value a setting cannot take; the message names the value and what is allowed."""


def as_text(value) -> str:
    """A Python or TOML value written as its flag's text: lists comma-joined, booleans ``true``/``false``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        if any(isinstance(x, (list, tuple)) for x in value):  # [[0.1, 0.2]] was read as the sweep 0.1,0.2
            raise InvalidValue(f"a list of lists is not a setting's value, got {list(value)!r}; a sweep is one "
                               f"flat list")
        return ",".join(as_text(x) for x in value)
    return str(value)


#: The largest integer a TOML file (config.toml) holds: a 64-bit one.
INT64_MAX = 2**63 - 1
#: The largest count, size or number a setting takes: jaxqfl's programs hold them in 32-bit integers (JAX's
#: default), where a larger one would wrap (a step count, a batch's row positions, a client id). Seeds, up to
#: ``MAX_SEED``, have a kind of their own.
INT32_MAX = 2**31 - 1


def int_at_least(lowest: int, what: str, highest: int = INT32_MAX,
                 why: str = "jaxqfl's programs count in 32-bit integers"):
    """An integer >= ``lowest`` and at most ``highest`` (``what``: how the message calls it, e.g. "positive";
    ``why``: the reason for ``highest`` the refusal gives)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < lowest:
            raise InvalidValue(f"expected a {what} integer, got {text!r}")
        if v > highest:
            raise InvalidValue(f"expected a {what} integer of at most {highest} ({why}), got {text!r}")
        return v

    parse.lowest, parse.what = lowest, what  # read by the settings' documentation and the CLI adapter
    return parse


positive_int = int_at_least(1, "positive")
nonneg_int = int_at_least(0, "non-negative")

#: The largest seed: a run's key holds 32 bits of it (JAX's default keys), so 2**32 + 1 would repeat seed 1.
MAX_SEED = 2**32 - 1
#: The most configurations one sweep runs (its seeds times the swept values): each costs a few milliseconds of
#: host work a block and a stacked copy of the states; a larger study is several sweeps.
MAX_SWEEP_CONFIGS = 10_000


#: The most rounds a run takes: its state counts them in an int32 (and derives each round's keys from it).
MAX_ROUNDS = INT32_MAX


def _at_most(kind, highest: int, refusal: str, doc: str, name: str):
    """``kind``'s integer, refused past ``highest`` with ``refusal`` (formatted with the text given)."""

    def parse(text: str) -> int:
        v = kind(text)
        if v > highest:
            raise InvalidValue(refusal.format(text=text))
        return v

    parse.__doc__, parse.__name__ = doc, name
    return parse


_INT64 = "64 bits"  # the bound of round counts and seeds before their own (a TOML integer's)
round_count = _at_most(int_at_least(1, "positive", INT64_MAX, _INT64), MAX_ROUNDS,
                       f"expected a positive integer of at most {MAX_ROUNDS} (a run counts its rounds in 32 bits), "
                       f"got {{text!r}}", "A positive integer of at most ``MAX_ROUNDS``.", "round_count")
seed = _at_most(int_at_least(0, "non-negative", INT64_MAX, _INT64), MAX_SEED,
                f"expected a seed in [0, {MAX_SEED}] (a run's key holds 32 bits of it: larger seeds would repeat "
                f"smaller ones), got {{text!r}}", "An integer in [0, ``MAX_SEED``].", "seed")


def _number(text, in_range, not_a_number: str | None, out_of_range: str) -> float:
    """``float(text)`` if ``in_range`` of it, else ``InvalidValue``: ``not_a_number`` (None: ``out_of_range``)
    when the text is no number, ``out_of_range`` otherwise; both formatted with ``text``."""
    try:
        v = float(text)
    except ValueError:
        raise InvalidValue((not_a_number or out_of_range).format(text=text)) from None
    if not in_range(v):
        raise InvalidValue(out_of_range.format(text=text))
    return v


#: The largest magnitude a number setting takes: float32's, in which the programs compute (a larger one
#: would be infinite there).
FLOAT32_MAX = 3.4028234663852886e38
_FINITE = f"finite number (at most {FLOAT32_MAX:.4g} in magnitude: float32)"


def _finite(v: float) -> bool:
    return math.isfinite(v) and abs(v) <= FLOAT32_MAX


def positive_float(text: str) -> float:
    """A finite number > 0 (finite in float32)."""
    return _number(text, lambda v: v > 0 and _finite(v), "expected a positive number, got {text!r}",
                   f"expected a positive {_FINITE}, got {{text}}")


def nonneg_float(text: str) -> float:
    """A finite number >= 0 (finite in float32)."""
    return _number(text, lambda v: v >= 0 and _finite(v), None, f"expected a non-negative {_FINITE}, got {{text!r}}")


def finite_float(text: str) -> float:
    """Any finite number (finite in float32)."""
    return _number(text, _finite, "expected a number, got {text!r}", f"expected a {_FINITE}, got {{text}}")


def positive_finite(text: str) -> float:
    """A finite number > 0 (finite in float32; the systems settings' wording)."""
    return _number(text, lambda v: _finite(v) and v > 0, "{text!r} is not a number",
                   f"must be a finite number > 0 (at most {FLOAT32_MAX:.4g}: float32), got {{text!r}}")


def fraction(lo_open: bool, hi_open: bool, what: str):
    """A number in the interval from 0 to 1, each end open or closed; ``what``: the whole refusal message."""

    def parse(text):
        ok = lambda v: (v > 0 if lo_open else v >= 0) and (v < 1 if hi_open else v <= 1)  # noqa: E731
        return _number(text, ok, None, what.replace("{", "{{").replace("}", "}}") + ", got {text!r}")

    parse.interval = ("(" if lo_open else "[") + "0, 1" + (")" if hi_open else "]")
    return parse


def chunk_size(text: str) -> int | None:
    """``auto`` (None: tuned or modelled) or a positive integer."""
    if text.strip().lower() == "auto":
        return None
    try:
        v = int(text)
    except ValueError:
        v = None
    if v is None or v < 1:
        raise InvalidValue(f"expected 'auto' or a positive integer, got {text!r}")
    return v


def on_off(text) -> bool:
    """``on`` or ``off`` (a config file's ``true`` / ``false`` too)."""
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value not in ("on", "off", "true", "false"):
        raise InvalidValue(f"expected 'on' or 'off', got {text!r}")
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
            raise InvalidValue(
                f"the values of a sweep must be distinct; {seen[key]!r} and {v!r} in {text!r} are the same "
                f"(to float32 precision, which the sweep computes in)")
        seen[key] = v
    return values


def _list_of(one, what: str):
    def parse(text: str) -> tuple:
        items = [t.strip() for t in text.split(",")]
        if not any(items):
            raise InvalidValue(f"expected {what} separated by commas, got {text!r}")
        if not all(items):
            raise InvalidValue(f"expected {what} separated by commas, none empty, got {text!r}")
        return _distinct(tuple(one(t) for t in items), text)

    return parse


positive_floats = _list_of(positive_float, "positive numbers")
positive_floats.__doc__ = "One positive number, or a comma-separated list of distinct ones (a sweep)."
positive_floats.__name__ = "positive_floats"
nonneg_floats = _list_of(nonneg_float, "non-negative numbers")
nonneg_floats.__doc__ = "One number >= 0, or a comma-separated list of them (a sweep)."
nonneg_floats.__name__ = "nonneg_floats"
positive_ints = _list_of(positive_int, "positive integers")
positive_ints.__doc__ = "One positive integer, or a comma-separated list of them (a sweep)."
positive_ints.__name__ = "positive_ints"


def seed_list(text: str) -> tuple[int, ...]:
    """``--seeds``: ``0-7`` (inclusive), ``0,3,5``, or a mix (``0-3,9``); distinct, >= 0."""
    seeds: list[int] = []
    try:
        for part in (t.strip() for t in text.split(",") if t.strip()):
            if "-" in part[1:]:
                lo, hi = (int(p) for p in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                if hi - lo + len(seeds) >= MAX_SWEEP_CONFIGS:  # refused below, before the range is listed
                    seeds.extend(range(lo, lo + MAX_SWEEP_CONFIGS + 1))
                    break
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise InvalidValue(
            f"--seeds takes distinct non-negative integers as ranges and lists, e.g. 0-7 or 0,3,5; got {text!r}")
    if max(seeds) > MAX_SEED:
        raise InvalidValue(f"--seeds takes seeds in [0, {MAX_SEED}] (a run's key holds 32 bits of a seed), "
                           f"got {text!r}")
    if len(seeds) > MAX_SWEEP_CONFIGS:
        raise InvalidValue(f"--seeds {text!r}: more than {MAX_SWEEP_CONFIGS:,} seeds; a sweep runs at most "
                           f"{MAX_SWEEP_CONFIGS:,} configs (split the study into several sweeps)")
    return tuple(seeds)


def layer_sizes(text: str) -> tuple[int, ...]:
    """``--hidden``: comma-separated positive integers (an MLP's hidden widths)."""
    try:
        sizes = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise InvalidValue(f"--hidden takes comma-separated positive integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise InvalidValue(f"--hidden takes comma-separated positive integers, got {text!r}")
    return sizes


def sink_list(text: str) -> tuple[str, ...]:
    """``--log``: comma-separated metrics sinks (``jaxqfl.sinks.SINKS``)."""
    from jaxqfl import sinks

    try:
        return sinks.check_kinds(k.strip().lower() for k in text.split(",") if k.strip())
    except ValueError as e:
        raise InvalidValue(str(e)) from None
