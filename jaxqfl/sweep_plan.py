"""Sweeps over codecs and quantization presets: from named configs to the engine's variants.

``jaxqfl run --uplink qsgd:2,qsgd:4,uniform:8,none --quant none,w4a8 --seeds 0-2`` is
one program. A config names its codecs by spec (``"uplink": "qsgd:4"``) and its QAT
preset by name (``"quant": "w4a8"``); the engine needs numbers and static groups
(``engine.SweepVariant``). :func:`plan` maps one to the other:

* the uplink specs (and the downlink specs) are grouped into codec families
  (``jaxqfl.compress.families``): specs that differ only in QSGD's levels,
  uniform's bits or top-k's / random-k's fraction share one codec with that
  parameter traced, read from the config's float32 ``uplink_value`` /
  ``downlink_value`` (QSGD / uniform specs that also differ in ``bucket=``
  trace both parameters; their value is the member's index, ``value_of``);
* a variant is one (preset, uplink family, downlink family) that some config
  uses: one copy of the round in the program. ``--uplink qsgd:2,qsgd:4,qsgd:16
  --quant none,w4a8`` is 2 variants for 6 codec-preset pairs; each config is
  computed once.

Config ``s`` equals its single run (``jaxqfl run --uplink <its spec> --quant
<its preset> --seed <its seed>``) to float tolerance, and its bit counts
exactly (``tests/test_sweep_variants.py``).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from jaxqfl.compress.families import families, value_of
from jaxqfl.engine.sweep import SweepVariant

NAMED = ("uplink", "downlink", "quant")  # config keys whose values are names, not numbers


def plan(
    configs: Sequence[Mapping[str, Any]],
    *,
    uplink: str,
    downlink: str,
    quant: str,
    make_model: Callable[[str], Any],
    make_aggregator: Callable[[Any, Any, dict], Any] | None = None,
) -> tuple[list[dict], list[SweepVariant]]:
    """``(engine configs, variants)`` for configs that may name ``uplink``, ``downlink`` and ``quant``.

    Args:
      configs: dicts of a sweep (``engine.grid``), each ``{"seed": ..., numbers ..., and optionally
        "uplink": spec, "downlink": spec, "quant": preset}``.
      uplink, downlink, quant: the values of configs that do not name them.
      make_model: ``preset -> Model``.
      make_aggregator: ``(uplink codec or None, model, hp) -> Aggregator``; ``None``: the sweep's default.

    Returns:
      the configs with the names replaced by ``"variant"`` (and ``"uplink_value"`` /
      ``"downlink_value"`` when those are swept), and one ``SweepVariant`` per used combination.
      Variants are numbered in order of first use; order ``configs`` with :func:`by_variant`
      first, so that each variant's configs are contiguous (the engine then slices, never gathers).

    Raises:
      ValueError: a bad spec, or two specs of one list that are the same codec.
    """
    named, fams, key_of = _variant_keys(configs, uplink, downlink, quant)
    swept = {side: any(side in c for c in configs) for side in ("uplink", "downlink")}
    models: dict[str, Any] = {}
    keys: dict[tuple, int] = {}
    variants: list[SweepVariant] = []
    out = []
    for i, c in enumerate(configs):
        up, down, preset = named["uplink"][i], named["downlink"][i], named["quant"][i]
        key = key_of[i]
        if key not in keys:
            if preset not in models:
                models[preset] = make_model(preset)
            keys[key] = len(variants)
            variants.append(_variant(models[preset], fams["uplink"][up], fams["downlink"][down], make_aggregator))
        config = {k: v for k, v in c.items() if k not in NAMED}
        config["variant"] = keys[key]
        for side, spec in (("uplink", up), ("downlink", down)):
            if swept[side]:
                config[f"{side}_value"] = value_of(fams[side][spec], spec)
        out.append(config)
    return out, variants


def _variant_keys(configs, uplink: str, downlink: str, quant: str):
    """``(names per key, {side: {spec: its CodecFamily}}, each config's (preset, uplink family, downlink family))``."""
    named = {k: [c.get(k, default) for c in configs] for k, default in
             (("uplink", uplink), ("downlink", downlink), ("quant", quant))}
    fams, member = {}, {}
    for side in ("uplink", "downlink"):
        specs = list(dict.fromkeys(named[side]))  # first-seen order, each once
        members, built = families(specs)
        fams[side] = {s: built[m] for s, m in zip(specs, members)}
        member[side] = dict(zip(specs, members))
    key_of = [(named["quant"][i], member["uplink"][named["uplink"][i]], member["downlink"][named["downlink"][i]])
              for i in range(len(configs))]
    return named, fams, key_of


def _variant(model, up_family, down_family, make_aggregator) -> SweepVariant:
    def make_uplink(hp):
        return up_family.build(hp.get("uplink_value"))

    def make_downlink(hp):
        return down_family.build(hp.get("downlink_value"))

    aggregate = None if make_aggregator is None else (lambda hp: make_aggregator(make_uplink(hp), model, hp))
    return SweepVariant(model, make_uplink, make_downlink, aggregate)


def by_variant(configs: Sequence[Mapping[str, Any]], *, uplink: str, downlink: str, quant: str) -> list[dict]:
    """``configs`` reordered (stably) so that the configs of one variant of :func:`plan` are contiguous."""
    _, _, key_of = _variant_keys(configs, uplink, downlink, quant)
    first: dict[tuple, int] = {}
    for key in key_of:
        first.setdefault(key, len(first))
    return [dict(configs[i]) for i in sorted(range(len(configs)), key=lambda i: first[key_of[i]])]
