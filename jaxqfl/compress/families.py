"""Codec families: several codec specs served by ONE codec with a traced parameter.

A sweep over codecs (``--uplink qsgd:2,qsgd:4,qsgd:16,uniform:8,none``) should
compile one program, not one per codec. Specs that differ only in the codec's
*traceable* parameter form a family, built once with that parameter as a traced
scalar, bounded by what the family's members allow::

    qsgd:2, qsgd:4, qsgd:16         ->  qsgd(levels=<traced>, max_levels=16)
    uniform:2, uniform:8            ->  uniform(bits=<traced>, max_bits=8)
    topk:0.01, topk:0.1, topk:0.5   ->  topk(fraction=<traced>, choices=(0.01, 0.1, 0.5))
    randk:0.1, randk:0.5            ->  randk(fraction=<traced>, choices=(0.1, 0.5))

QSGD and uniform take the largest member as a maximum: codes are stored for it
(the same container as the static codec's up to 127 levels / 8 bits) and the
grid arithmetic is the static codec's in float32. The sparsifiers take every
member's fraction (``choices``): per tensor the host computes each member's
exact ``k``, containers hold the largest, and the traced ``k`` is read from that
table (``jaxqfl.compress.sparsify``). In all four, ``bits(message)`` is a traced
int32 equal to the static count of the member's value (``qsgd``: ``1 +
bit_length(s)`` bits a coordinate, ``uniform``: ``b``, ``topk``: ``32 k +
min(k ceil(log2 n), n)``, ``randk``: ``32 + sum 32 k``), and codes and decode
are the static codec's.

QSGD and uniform specs that also differ in ``bucket=`` (integers) trace both
parameters::

    qsgd:4:bucket=128, qsgd:4:bucket=512, qsgd:16:bucket=512
        ->  qsgd(levels=<traced>, bucket_size=<traced>, max_levels=16, min_bucket_size=128)

The bucket size is bounded below (``ceil(n / d)`` norms or ranges are most for
the smallest ``d``); see ``min_bucket_size`` of ``qsgd`` / ``uniform`` (bits
exact; uniform's codes the static codec's; QSGD's norms are segment sums, equal
to the static codec's to float rounding). Such a
family's sweep value is the member's index (:func:`value_of`), and its codec
has no integer-domain aggregation. Everything else (another codec,
``bucket=none`` next to an integer bucket, other modifiers, ``topk:k=COUNT``,
``randk`` with another ``unbiased``, ``none``) is a family of its own, built
as the static codec.

    members, fams = families(["qsgd:2", "qsgd:4", "uniform:8", "none"])
    members == (0, 0, 1, 2)
    fams[0].values == (2, 4); fams[0].build(jnp.int32(4))  # QSGD with 4 levels, traced

A sweep feeds a member's value (:func:`value_of`, a float) as a float32
hyper-parameter: QSGD and uniform cast it to int32 (``bounded_parameter``:
``astype``, exact for their small integers), the sparsifiers compare it in
float32 with their choices (which must be distinct in float32). The values are
checked here, on the host (each spec is built once, and the family's codec once
with its first member's value), since a traced value cannot be checked when
the codec is built.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import jax.numpy as jnp

from jaxqfl.compress.spec import ParsedSpec, build, parse


class Traceable(NamedTuple):
    """How a codec takes a traced parameter.

    Attributes:
      argument: the factory's traced argument (``"levels"``, ``"fraction"``).
      bound: the factory's argument that bounds it statically (``"max_levels"``, ``"choices"``).
      bound_of: the members' values (a tuple) -> ``bound``'s value: ``max`` (a maximum) or
        ``tuple`` (every value a member may take).
      kind: how a member's value is read (``int`` or ``float``).
    """

    argument: str
    bound: str
    bound_of: Callable[[tuple], object]
    kind: type


TRACEABLE = {
    "uniform": Traceable("bits", "max_bits", max, int),
    "qsgd": Traceable("levels", "max_levels", max, int),
    "topk": Traceable("fraction", "choices", tuple, float),
    "randk": Traceable("fraction", "choices", tuple, float),
}
"""codec name -> how its factory takes a traced parameter (:class:`Traceable`)"""

BUCKET = Traceable("bucket_size", "min_bucket_size", min, int)
TRACEABLE_BUCKET = {"uniform": BUCKET, "qsgd": BUCKET}
"""codec name -> its second traced parameter, the bucket size (bounded below: ``ceil(n / d)`` is largest
for the smallest ``d``). Traced only when a family's members differ in it and all are integers
(``bucket=none``, one bucket per tensor, is not one value: such specs stay a family of their own)."""

NO_CODEC = ("none", "identity")  # float32 updates: the engine runs without a codec


class CodecFamily(NamedTuple):
    """Specs that one codec serves, and how to build it.

    Attributes:
      specs: the member specs, in the order first given.
      parameter: the traced argument (``"levels"``, ``"bits"``, ``"fraction"``), a pair of them
        (``("levels", "bucket_size")``, ``("bits", "bucket_size")``) when the members differ in
        ``bucket=``, or ``None`` when the family has one member and is built as its static codec.
      values: each member's value of ``parameter`` (a pair for a pair; empty when ``parameter`` is ``None``).
      build: ``build(value) -> Codec | None``: ``value`` a (traced) scalar, :func:`value_of` a member
        (its value, or for a pair its index); ignored when nothing is traced. ``None`` for ``none`` /
        ``identity``.
    """

    specs: tuple
    parameter: Optional[str]
    values: tuple
    build: Callable


def _traced_arguments(parsed: ParsedSpec) -> tuple:
    """The arguments of ``parsed`` that a family may trace: the traceable one, and an integer bucket size."""
    traced = (TRACEABLE[parsed.name].argument,) if parsed.name in TRACEABLE else ()
    bucket = TRACEABLE_BUCKET.get(parsed.name)
    if bucket is not None and parsed.arguments.get(bucket.argument) is not None:
        traced += (bucket.argument,)
    return traced


def _signature(parsed: ParsedSpec) -> tuple:
    """What must be equal for two specs to share a codec: all but the traceable arguments."""
    name = "none" if parsed.name in NO_CODEC else parsed.name
    traced = _traced_arguments(parsed)
    arguments = tuple(sorted((k, v) for k, v in parsed.arguments.items() if k not in traced))
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
    traceable = TRACEABLE[first.name]
    bucket = TRACEABLE_BUCKET.get(first.name)
    if bucket is not None and len({p.arguments.get(bucket.argument) for p in parsed}) > 1:
        return _two_parameter_family(first, specs, parsed, (traceable, bucket))
    values = tuple(traceable.kind(p.arguments[traceable.argument]) for p in parsed)
    bound = {traceable.bound: traceable.bound_of(values)}
    build(first, **{traceable.argument: values[0]}, **bound)  # checks the bound (e.g. choices distinct in float32)
    return CodecFamily(specs, traceable.argument, values,
                       lambda value: build(first, **{traceable.argument: value}, **bound))


def _two_parameter_family(first: ParsedSpec, specs: tuple, parsed: Sequence[ParsedSpec], traceables) -> CodecFamily:
    """A family tracing two arguments (QSGD's levels and bucket size, uniform's bits and bucket size).

    ``build(index)`` takes the traced member index (a float32 or int32 scalar, exact for the
    few members of a sweep) and reads both values from int32 tables of the members' values.
    """
    values = tuple(tuple(t.kind(p.arguments[t.argument]) for t in traceables) for p in parsed)
    bounds = {t.bound: t.bound_of(tuple(v[j] for v in values)) for j, t in enumerate(traceables)}
    names = tuple(t.argument for t in traceables)
    build(first, **dict(zip(names, values[0])), **bounds)  # checks the bounds

    def build_member(index):
        index = jnp.asarray(index).astype(jnp.int32)
        traced = {name: jnp.asarray([v[j] for v in values], jnp.int32)[index] for j, name in enumerate(names)}
        return build(first, **traced, **bounds)

    return CodecFamily(specs, names, values, build_member)


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
    """The traced value of ``spec`` in its family, a sweep's hyper-parameter that ``family.build`` takes.

    One traced parameter: its value (``value_of(qsgd family, "qsgd:16") == 16.0``). Two (members
    that differ in ``bucket=``): the member's index in ``family.specs``. Nothing traced: 0.
    """
    if not family.parameter:
        return 0.0
    index = family.specs.index(spec)
    return float(index) if isinstance(family.parameter, tuple) else float(family.values[index])


def traces_bucket(family: CodecFamily) -> bool:
    """Whether ``family``'s codec has a traced bucket size (then it has no integer-domain aggregation)."""
    return isinstance(family.parameter, tuple) and BUCKET.argument in family.parameter


__all__ = ["BUCKET", "CodecFamily", "TRACEABLE", "TRACEABLE_BUCKET", "Traceable", "families", "traces_bucket",
           "value_of"]
