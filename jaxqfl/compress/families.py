"""Codec families: several codec specs served by ONE codec with a traced parameter.

A sweep over codecs (``--uplink qsgd:2,qsgd:4,qsgd:16,uniform:8,none``) should
compile one program, not one per codec. Specs that differ only in the codec's
*traceable* parameter form a family, built once with that parameter as a traced
int32 scalar under the family's largest value::

    qsgd:2, qsgd:4, qsgd:16   ->  qsgd(levels=<traced>, max_levels=16)
    uniform:2, uniform:8      ->  uniform(bits=<traced>, max_bits=8)

Codes are stored for the largest value (the same container as the static
codec's up to 127 levels / 8 bits), the grid arithmetic is the static codec's in
float32, and ``bits(message)`` is a traced int32 that equals the static count
of the member's value (``qsgd``: ``1 + bit_length(s)`` bits a coordinate,
``uniform``: ``b``). Everything else (another codec, another bucket size,
other modifiers, ``none``) is a family of its own, built as the static codec.

    members, fams = families(["qsgd:2", "qsgd:4", "uniform:8", "none"])
    members == (0, 0, 1, 2)
    fams[0].values == (2, 4); fams[0].build(jnp.int32(4))  # QSGD with 4 levels, traced

Traceable parameters: ``uniform``'s ``bits`` and ``qsgd``'s ``levels``. The
values are checked here, on the host, since a traced value cannot be checked
when the codec is built.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

from jaxqfl.compress.spec import ParsedSpec, build, parse

TRACEABLE = {"uniform": ("bits", "max_bits"), "qsgd": ("levels", "max_levels")}
"""codec name -> (its traceable argument, the factory's argument for that argument's static maximum)"""

NO_CODEC = ("none", "identity")  # float32 updates: the engine runs without a codec


class CodecFamily(NamedTuple):
    """Specs that one codec serves, and how to build it.

    Attributes:
      specs: the member specs, in the order first given.
      parameter: the traced argument (``"levels"``, ``"bits"``), or ``None`` when the family
        has one member and is built as its static codec.
      values: each member's value of ``parameter`` (empty when ``parameter`` is ``None``).
      build: ``build(value) -> Codec | None``: ``value`` a (traced) scalar of ``values``;
        ignored when nothing is traced. ``None`` for ``none`` / ``identity``.
    """

    specs: tuple
    parameter: Optional[str]
    values: tuple
    build: Callable


def _signature(parsed: ParsedSpec) -> tuple:
    """What must be equal for two specs to share a codec: all but the traceable argument."""
    name = "none" if parsed.name in NO_CODEC else parsed.name
    traced = TRACEABLE.get(name, (None,))[0]
    arguments = tuple(sorted((k, v) for k, v in parsed.arguments.items() if k != traced))
    modifiers = tuple(sorted((m, tuple(sorted(a.items()))) for m, a in parsed.modifiers.items()))
    return name, arguments, modifiers


def _family(parsed: Sequence[ParsedSpec]) -> CodecFamily:
    first = parsed[0]
    specs = tuple(p.spec for p in parsed)
    if first.name in NO_CODEC:
        return CodecFamily(specs, None, (), lambda value=None: None)
    if len(parsed) == 1 or first.name not in TRACEABLE:
        codec = build(first)
        return CodecFamily(specs, None, (), lambda value=None: codec)
    argument, maximum = TRACEABLE[first.name]
    values = tuple(int(p.arguments[argument]) for p in parsed)
    largest = max(values)
    return CodecFamily(specs, argument, values,
                       lambda value: build(first, **{argument: value, maximum: largest}))


def families(specs: Sequence[str]) -> tuple[tuple[int, ...], tuple[CodecFamily, ...]]:
    """Group codec specs into families (module docstring).

    Returns:
      ``(members, families)``: ``members[i]`` is the index of the family of ``specs[i]``.

    Raises:
      ValueError: a malformed spec (named, with what is allowed), or a spec given twice
        (the same codec twice is the same configuration twice).
    """
    if isinstance(specs, str) or not specs:
        raise ValueError(f"families needs a non-empty list of codec specs, got {specs!r}")
    parsed = [parse(s) for s in specs]
    seen: dict[tuple, int] = {}
    for i, p in enumerate(parsed):
        key = _signature(p) + (tuple(sorted(p.arguments.items())),)
        if key in seen:
            raise ValueError(f"codec specs {specs[seen[key]]!r} and {specs[i]!r} are the same codec; give each once")
        seen[key] = i
    order: dict[tuple, list[int]] = {}
    for i, p in enumerate(parsed):
        order.setdefault(_signature(p), []).append(i)
    members = [0] * len(parsed)
    built = []
    for f, indices in enumerate(order.values()):
        for i in indices:
            members[i] = f
        built.append(_family([parsed[i] for i in indices]))
    return tuple(members), tuple(built)


def value_of(family: CodecFamily, spec: str) -> float:
    """The traced value of ``spec`` in its family (0 when nothing is traced): a sweep's hyper-parameter."""
    return float(family.values[family.specs.index(spec)]) if family.parameter else 0.0


__all__ = ["CodecFamily", "TRACEABLE", "families", "value_of"]
