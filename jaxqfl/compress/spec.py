"""Codec spec strings: what ``--uplink`` / ``--downlink`` accept.

Grammar::

    spec  := stage ('+' stage)*
    stage := name (':' arg)*
    arg   := value | key '=' value          positional args first, in the order below

Names are case-insensitive; spaces around tokens are ignored. A spec has
exactly ONE codec and at most one of each modifier, in any order; the codec
is always built as ``ef(hadamard(codec))``: error feedback outermost (its
residual lives in the original coordinates), the rotation right around the
codec.

Codecs::

    none | identity                      32-bit floats
    uniform:BITS[:BUCKET]                stochastic BITS-bit min-max, BITS in [1, 16];
                                         BUCKET >= 1 or none (default: per tensor)
    qsgd:LEVELS[:BUCKET]                 QSGD, LEVELS in [1, 32767]; BUCKET default 512
    terngrad                             TernGrad
    sign                                 scaled sign, majority vote
    natural                              natural compression
    topk:FRACTION | topk:k=COUNT         top-k per tensor, FRACTION in (0, 1]
    randk:FRACTION | randk:k=COUNT       random-k per tensor; option unbiased=true|false
                                         (default true: values scaled by n/k)

Modifiers::

    ef                                   error feedback
    hadamard[:BLOCK]                     random Hadamard rotation; BLOCK a power of two
                                         (default: whole tensor)

Examples: ``none``, ``qsgd:16``, ``qsgd:4:bucket=128``, ``uniform:8``,
``terngrad``, ``sign+ef``, ``topk:0.01+ef``, ``randk:0.1``,
``randk:0.1:unbiased=false+ef``, ``hadamard+qsgd:4``, ``hadamard:256+uniform:2+ef``.

Every malformed spec raises ``ValueError`` when it is parsed, naming the bad
token and what is allowed. A ``topk:k=COUNT`` larger than some tensor raises
later, when the codec meets the params (``init``).
"""
from __future__ import annotations

import math
import re
from typing import Callable, NamedTuple, Optional

from jaxqfl.compress.base import Codec
from jaxqfl.compress.error_feedback import error_feedback
from jaxqfl.compress.hadamard import hadamard
from jaxqfl.compress.identity import identity
from jaxqfl.compress.natural import natural
from jaxqfl.compress.qsgd import DEFAULT_BUCKET_SIZE, qsgd
from jaxqfl.compress.sign import sign
from jaxqfl.compress.sparsify import randk, topk
from jaxqfl.compress.terngrad import terngrad
from jaxqfl.compress.uniform import uniform

SPEC_GRAMMAR = __doc__

_INT = re.compile(r"[+-]?\d+")
_MISSING = object()


def _parse_int(text: str) -> int:
    if not _INT.fullmatch(text):
        raise ValueError(f"{text!r} is not an integer")
    return int(text)


def _parse_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def _parse_bucket(text: str) -> Optional[int]:
    return None if text.lower() == "none" else _parse_int(text)


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true or false)")


class _Param(NamedTuple):
    name: str  # keyword in the spec
    argument: str  # keyword of the factory
    parse: Callable[[str], object]
    default: object = _MISSING  # _MISSING: required (unless an alternative is given)
    positional: bool = True


class _Entry(NamedTuple):
    factory: Callable
    params: tuple
    usage: str
    modifier: bool = False


_ENTRIES = {
    "none": _Entry(identity, (), "none"),
    "identity": _Entry(identity, (), "identity"),
    "uniform": _Entry(uniform, (_Param("bits", "bits", _parse_int),
                                _Param("bucket", "bucket_size", _parse_bucket, None)),
                      "uniform:BITS[:BUCKET]"),
    "qsgd": _Entry(qsgd, (_Param("levels", "levels", _parse_int),
                          _Param("bucket", "bucket_size", _parse_bucket, DEFAULT_BUCKET_SIZE)),
                   "qsgd:LEVELS[:BUCKET]"),
    "terngrad": _Entry(terngrad, (), "terngrad"),
    "sign": _Entry(sign, (), "sign"),
    "natural": _Entry(natural, (), "natural"),
    "topk": _Entry(topk, (_Param("fraction", "fraction", _parse_number, None),
                          _Param("k", "k", _parse_int, None, positional=False)),
                   "topk:FRACTION or topk:k=COUNT"),
    "randk": _Entry(randk, (_Param("fraction", "fraction", _parse_number, None),
                            _Param("k", "k", _parse_int, None, positional=False),
                            _Param("unbiased", "unbiased", _parse_bool, True, positional=False)),
                    "randk:FRACTION[:unbiased=BOOL] or randk:k=COUNT"),
    "hadamard": _Entry(hadamard, (_Param("block", "block_size", _parse_bucket, None),),
                       "hadamard[:BLOCK]", modifier=True),
    "ef": _Entry(error_feedback, (), "ef", modifier=True),
}

CODEC_NAMES = tuple(n for n, e in _ENTRIES.items() if not e.modifier)
MODIFIER_NAMES = tuple(n for n, e in _ENTRIES.items() if e.modifier)


def _allowed() -> str:
    return (f"codecs: {', '.join(_ENTRIES[n].usage for n in CODEC_NAMES)}; "
            f"modifiers: {', '.join(_ENTRIES[n].usage for n in MODIFIER_NAMES)}")


def _stage_arguments(spec: str, stage: str, entry: _Entry, args: list) -> dict:
    """Bind a stage's ``args`` (strings) to its factory's keyword arguments."""
    name = stage.split(":")[0].strip().lower()
    positional = [p for p in entry.params if p.positional]
    by_name = {p.name: p for p in entry.params}
    bound = {}
    next_positional = 0
    keyword_seen = False
    for raw in args:
        text = raw.strip()
        if "=" in text:
            key, _, value = text.partition("=")
            key, value = key.strip().lower(), value.strip()
            if key not in by_name:
                keys = ", ".join(by_name) or "none"
                raise ValueError(f"invalid codec spec {spec!r}: {name} has no option {key!r} "
                                 f"(options: {keys}); usage: {entry.usage}")
            param = by_name[key]
            keyword_seen = True
        else:
            value = text
            if keyword_seen:
                raise ValueError(f"invalid codec spec {spec!r}: positional argument {text!r} after "
                                 f"a key=value one; usage: {entry.usage}")
            if next_positional >= len(positional):
                raise ValueError(f"invalid codec spec {spec!r}: too many arguments for {name} "
                                 f"({':'.join(args)!r}); usage: {entry.usage}")
            param = positional[next_positional]
            next_positional += 1
        if param.name in bound:
            raise ValueError(f"invalid codec spec {spec!r}: {name} option {param.name!r} given twice")
        if not value:
            raise ValueError(f"invalid codec spec {spec!r}: empty value for {name} {param.name}; "
                             f"usage: {entry.usage}")
        try:
            bound[param.name] = (param, param.parse(value))
        except ValueError as err:
            raise ValueError(f"invalid codec spec {spec!r}: {name} {param.name}: {err}; "
                             f"usage: {entry.usage}") from None
    kwargs = {}
    for param in entry.params:
        if param.name in bound:
            kwargs[param.argument] = bound[param.name][1]
        elif param.default is not _MISSING:
            kwargs[param.argument] = param.default
        else:
            raise ValueError(f"invalid codec spec {spec!r}: {name} needs {param.name}; usage: {entry.usage}")
    return kwargs


class ParsedSpec(NamedTuple):
    """A spec string read but not built: its codec, the codec's arguments, and its modifiers' arguments."""

    spec: str
    name: str  # the codec's registry name
    arguments: dict  # the codec factory's keyword arguments
    modifiers: dict  # modifier name -> its keyword arguments


def from_spec(spec: str) -> Codec:
    """The codec a spec string describes (grammar: :data:`SPEC_GRAMMAR`).

    Raises:
      ValueError: naming the bad token and what is allowed, before anything is
        compiled (factories validate their hyper-parameters).
    """
    return build(parse(spec))


def parse(spec: str) -> ParsedSpec:
    """Read a spec string (grammar: :data:`SPEC_GRAMMAR`) and check it by building its codec once.

    Raises:
      ValueError: naming the bad token and what is allowed.
    """
    if not isinstance(spec, str):
        raise ValueError(f"a codec spec must be a string, got {spec!r}; {_allowed()}")
    if not spec.strip():
        raise ValueError(f"empty codec spec {spec!r}; {_allowed()}")
    base: Optional[Codec] = None
    base_name = None
    modifiers = {}
    for stage in spec.split("+"):
        name, *args = stage.split(":")
        name = name.strip().lower()
        if not name:
            raise ValueError(f"invalid codec spec {spec!r}: empty stage {stage!r} "
                             f"(stages are joined by '+'); {_allowed()}")
        entry = _ENTRIES.get(name)
        if entry is None:
            raise ValueError(f"invalid codec spec {spec!r}: unknown codec {name!r}; {_allowed()}")
        kwargs = _stage_arguments(spec, stage, entry, args)
        if entry.modifier:
            if name in modifiers:
                raise ValueError(f"invalid codec spec {spec!r}: modifier {name!r} given twice")
            modifiers[name] = kwargs
            continue
        if base is not None:
            raise ValueError(f"invalid codec spec {spec!r}: two codecs ({base_name!r} and {name!r}); "
                             f"a spec has one codec plus modifiers ({', '.join(MODIFIER_NAMES)})")
        base, base_name = kwargs, name
    if base is None:
        raise ValueError(f"invalid codec spec {spec!r}: no codec, only modifiers; {_allowed()}")
    parsed = ParsedSpec(spec, base_name, base, modifiers)
    build(parsed)  # the factories validate their hyper-parameters
    return parsed


def build(parsed: ParsedSpec, **overrides) -> Codec:
    """The codec of a parsed spec, ``overrides`` replacing codec arguments (e.g. a traced ``levels``)."""
    spec, entry = parsed.spec, _ENTRIES[parsed.name]
    try:
        codec = entry.factory(**{**parsed.arguments, **overrides})
    except ValueError as err:
        raise ValueError(f"invalid codec spec {spec!r}: {err}; usage: {entry.usage}") from None
    if "hadamard" in parsed.modifiers:
        try:
            codec = hadamard(codec, **parsed.modifiers["hadamard"])
        except ValueError as err:
            raise ValueError(f"invalid codec spec {spec!r}: {err}; usage: hadamard[:BLOCK]") from None
    if "ef" in parsed.modifiers:
        codec = error_feedback(codec)
    return codec
