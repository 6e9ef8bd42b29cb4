"""``--tiers``: clients in tiers, each with its own QAT preset and uplink codec (``jaxqfl.engine.tiers``).

    --tiers "0.3/w4a8/qsgd:4;0.5/full/uniform:8;0.2/none/none"     FRACTION/PRESET/UPLINK, ';'-separated
    --tiers "data/w4a8/qsgd:4;data/full/uniform:8"                 each client's tier from the data
    --tier-weights examples|precision                              how the server weighs the tiers

Fractions are positive and sum to 1; each client's tier is drawn once from the
data seed (exact counts: largest remainder). ``data`` in place of every
fraction reads the tiers from the user's ``--dataset npz`` file instead: its
``tier`` key gives each row's tier (0 for the first listed, ...), one per
natural client (``client_id``; ``jaxqfl.data.files.load_npz_tiers``); the
summary's ``fraction`` is then the share of clients found in each tier.
``--quant`` stays the model the headline test metrics use; every tier's model is evaluated too
(``test_tier<t>_accuracy`` in metrics.jsonl, ``tiers`` in summary.json with
each tier's clients, BOPs, model bytes, uplink bits and final metrics).
``--tier-weights precision`` multiplies each client's weight by ``1 / (1 + q)``
of its tier's codec (FedHQ-style precision weights, ``aggregate.tier_weighted``).
Tiers whose presets differ only in bit-widths (``full`` and ``w4a8``: a bit family,
``jaxqfl.quant.bit_family``) train through one model whose widths follow the
client's tier: 1 x the training compute of one tier instead of T x.
"""
from __future__ import annotations

from jaxqfl import choices


TIER_WEIGHTS = choices.TIER_WEIGHTS


FROM_DATA = "data"  # the FRACTION field that reads the tiers from the data


def parse(text: str) -> list[tuple[float | None, str, str]]:
    """``[(fraction, preset, uplink)]`` of a ``--tiers`` value (fraction ``None``: from the data); ValueError
    naming the bad part."""
    tiers = []
    for part in text.split(";"):
        fields = [f.strip() for f in part.split("/")]
        if len(fields) != 3 or not all(fields):
            raise ValueError(f"tier {part.strip()!r} is not FRACTION/PRESET/UPLINK (e.g. 0.3/w4a8/qsgd:4)")
        if fields[0].lower() == FROM_DATA:
            fraction = None
        else:
            try:
                fraction = float(fields[0])
            except ValueError:
                raise ValueError(f"tier {part.strip()!r}: fraction {fields[0]!r} is not a number (or "
                                 f"{FROM_DATA!r})") from None
        tiers.append((fraction, fields[1].lower(), fields[2].lower()))
    from_data = [f is None for f, _, _ in tiers]
    if any(from_data) and not all(from_data):
        raise ValueError(f"give every tier a fraction or every tier {FROM_DATA!r} (tiers read from the data), "
                         f"not both")
    return tiers


def from_data(args) -> bool:
    """Whether ``--tiers`` reads each client's tier from the data (``data`` fractions)."""
    return args.tiers is not None and args._tiers[0][0] is None


def validate(refuser, args) -> None:
    """Parse ``--tiers`` into ``args._tiers`` and refuse what tiers do not combine with."""
    if args.tiers is None:
        if args.tier_weights != "examples":
            refuser.error("--tier-weights applies to --tiers")
        return
    from jaxqfl.aggregate.tier_weighted import precision_factors
    from jaxqfl.compress import from_spec
    from jaxqfl.compress.switch import switchable
    from jaxqfl.engine.tiers import check_fractions
    from jaxqfl.quant.policy import PRESETS

    try:
        tiers = parse(args.tiers)
        if tiers[0][0] is not None:
            check_fractions([f for f, _, _ in tiers])
    except ValueError as e:
        refuser.error(f"--tiers {args.tiers!r}: {e}")
    if tiers[0][0] is None:
        _check_data_tiers(refuser, args, len(tiers))
    for _, preset, spec in tiers:
        if preset not in PRESETS:
            refuser.error(f"--tiers: {preset!r} is not a preset; choose one of {', '.join(PRESETS)}")
        try:
            codec = from_spec(spec)
        except ValueError as e:
            refuser.error(f"--tiers: {e}")
        try:
            switchable([codec], [f"--tiers uplink {spec!r}"])
        except ValueError as e:
            refuser.error(str(e))
    if args.tier_weights == "precision":
        try:
            precision_factors([spec for _, _, spec in tiers], largest_tensor=1)  # biased codecs; sizes come later
        except ValueError as e:
            refuser.error(f"--tier-weights precision: {e}")
    conflicts = [("--uplink", args.uplink != "none"), ("--integer-aggregation", args.integer_aggregation),
                 ("--secure-aggregation", getattr(args, "secure_aggregation", None)),
                 ("--dp-distributed", getattr(args, "dp_distributed", None) is not None),
                 ("--stream", getattr(args, "stream", False)), ("--lora-rank", getattr(args, "lora_rank", None)),
                 ("--seeds or a list-valued flag (a sweep)", args.sweep_values or args.seeds is not None)]
    for flag, given in conflicts:
        if given:
            refuser.error(f"--tiers gives every client its tier's codec and model; it does not combine with {flag}")
    args._tiers = tiers


def _check_data_tiers(refuser, args, num_tiers: int) -> None:
    """Tiers from the data: an npz with natural clients, its ``tier`` column read and checked now."""
    if args.dataset != "npz":
        refuser.error(f"--tiers {FROM_DATA}/...: tiers are read from the 'tier' key of a --dataset npz file; "
                       f"--dataset is {args.dataset}")
    if args.partition not in (None, "natural"):
        refuser.error(f"--tiers {FROM_DATA}/...: the 'tier' key gives each natural client's tier (its 'client_id'); "
                       f"--partition {args.partition} re-splits the rows into other clients")
    from jaxqfl.data.files import load_npz_tiers

    try:
        args._tier_of_client = load_npz_tiers(args.data_path, num_tiers)
    except (OSError, ValueError) as e:
        refuser.error(f"--tiers {FROM_DATA}/...: {e}")


def build(args, population, make_model, data_seed: int):
    """The run's ``engine.Tiers`` (each client's tier drawn from ``data_seed``), or None without ``--tiers``.

    ``make_model(preset)`` builds a tier's model from its preset name, and from a
    ``jaxqfl.quant.Policy`` too: when the tiers' presets form a bit family (e.g. ``full``
    and ``w4a8``), ``Tiers.model_at`` builds one model from the family's policy for the
    client's traced tier (``models.switch.family_model``: 1 x the training compute, not T x).
    """
    if args.tiers is None:
        return None
    from jaxqfl import engine
    from jaxqfl.compress import from_spec
    from jaxqfl.models.switch import family_model

    fractions = [f for f, _, _ in args._tiers]
    models = {}
    for _, preset, _ in args._tiers:
        if preset not in models:
            models[preset] = make_model(preset)
    return engine.Tiers(
        of_client=(args._tier_of_client if from_data(args)
                   else engine.draw_tiers(fractions, population.num_clients, data_seed)),
        models=tuple(models[p] for _, p, _ in args._tiers),
        uplinks=tuple(None if s == "none" else from_spec(s) for _, _, s in args._tiers),
        names=tuple(f"{p}/{s}" for _, p, s in args._tiers),
        model_at=family_model(make_model, [p for _, p, _ in args._tiers]))


def weighted(args, aggregator, tiers, population):
    """``aggregator`` with precision weights (``--tier-weights precision``), else itself."""
    if tiers is None or args.tier_weights == "examples":
        return aggregator
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxqfl import aggregate

    params = jax.eval_shape(tiers.models[0].init, jax.random.key(0), jnp.zeros((1, *population.feature_shape)))
    largest = max(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    return aggregate.tier_weighted(aggregator, tiers.of_client,
                                   aggregate.precision_factors([s for _, _, s in args._tiers], largest))


def summary_fields(args, tiers, result, final: dict, cost_of) -> dict:
    """``summary.json``'s ``tiers``: per tier its setting, clients, cost, traffic and final metrics."""
    if tiers is None:
        return {}
    import numpy as np

    rows = []
    for t, (fraction, preset, spec) in enumerate(args._tiers):
        rows.append({
            "tier": t, "quant": preset, "uplink": spec,
            "fraction": fraction if fraction is not None else float(np.mean(tiers.of_client == t)),
            "num_clients": int(np.sum(tiers.of_client == t)),
            "client_rounds": result.tier_clients[t] if result.tier_clients else 0,
            "uplink_bits_total": result.tier_uplink_bits[t] if result.tier_uplink_bits else 0,
            **cost_of(preset),
            **{f"final_{k[len(f'test_tier{t}_'):]}": v for k, v in final.items() if k.startswith(f"test_tier{t}_")},
        })
    return {"tiers": rows, "tier_weights": args.tier_weights}


def summary_line(s: dict) -> str:
    """The one-screen summary's tiers: each tier's share, setting, test accuracy and uplink."""
    rows = s.get("tiers")
    if not rows:
        return ""
    parts = []
    for r in rows:
        acc = r.get("final_accuracy")
        parts.append(f"{r['fraction']:g} {r['quant']}/{r['uplink']}"
                     + (f" acc {acc:.4f}" if acc is not None else "") + f", {r['uplink_bits_total'] / 8e6:,.1f} MB up")
    return f"  tiers ({s['tier_weights']})  " + "; ".join(parts)
