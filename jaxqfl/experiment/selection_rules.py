"""``--availability`` and ``--selection``: which clients can take part in a round, and which of them do.

    --availability always | bernoulli:P | diurnal:PERIOD | FILE
    --selection    uniform | power-of-choice:D | oort | oort:D

``bernoulli:P``: each client is available with probability P in (0, 1] each
round; ``diurnal:PERIOD``: with probability ``clip(0.5 + 0.5 cos(2 pi (r /
PERIOD + phase_c)), 0.05, 1)`` in round r, a per-client phase drawn from the
seed (the clock of the day is the round index, not the virtual clock); a FILE
is a CSV ``client,availability`` with one probability per client id. The cohort
is then ``--cohort-size`` available clients (uniformly, or by the selection
rule); slots that no available client fills are left out of the round.
``power-of-choice:D``: the M largest global-model losses among D uniform
available candidates (Cho et al. 2022); ``oort``: Oort's utility (loss x speed
penalty, Lai et al. 2021) over min(C, 4M) candidates, ``oort:D`` over D; needs
``--speeds``. Formulas: ``jaxqfl.systems.availability`` / ``.selection``.
``metrics.jsonl`` carries ``server_available_per_round``.

Hooks called by ``runner``: ``validate`` (before JAX
starts), ``build_kwargs`` (for ``engine.build``) and ``summary_fields``.
"""
from __future__ import annotations

import os

DEFAULT_AVAILABILITY, DEFAULT_SELECTION = "always", "uniform"


def _given(args) -> list[str]:
    out = []
    if (args.availability or DEFAULT_AVAILABILITY).lower() != DEFAULT_AVAILABILITY:
        out.append(f"--availability {args.availability}")
    if (args.selection or DEFAULT_SELECTION).lower() != DEFAULT_SELECTION:
        out.append(f"--selection {args.selection}")
    return out


def validate(refuser, args) -> None:
    """Refuse a malformed spec, a pool outside [M, C], and the runs that do not draw the cohort in the program."""
    from jaxqfl.systems import availability as avail
    from jaxqfl.systems import selection as sel

    if args.availability is not None:
        spec = args.availability
        if spec.lower() != "always" and spec.lower().partition(":")[0] in ("bernoulli", "diurnal"):
            try:
                avail.parse(spec)
            except ValueError as e:
                refuser.error(f"--availability: {e}")
        elif spec.lower() != "always" and not os.path.isfile(spec):
            refuser.error(f"--availability {spec!r} is none of always, bernoulli:P (P in (0, 1]), diurnal:PERIOD "
                           f"(PERIOD a positive integer) or an existing CSV file client,availability")
    rule = None
    if args.selection is not None:
        try:
            rule = sel.parse(args.selection)
        except ValueError as e:
            refuser.error(f"--selection: {e}")
    given = _given(args)
    if not given:
        return
    what = " and ".join(given)
    from jaxqfl.experiment.clustering_runner import is_clustering

    if is_clustering(args):
        refuser.error(f"{what} is not available for --task clustering")
    if getattr(args, "stream", False):
        refuser.error(f"{what} draws the cohort inside the round program; it does not combine with --stream (the "
                     f"host must know a streamed cohort first)")
    if args.client_state == "host":
        refuser.error(f"{what} does not combine with --client-state host (the host would need the cohort before the "
                     f"round); use replicated or sharded")
    if args.sweep_values or args.seeds is not None:
        refuser.error(f"{what} runs one config at a time; drop --seeds and list-valued flags")
    if getattr(args, "dp", False) or getattr(args, "dp_distributed", None) is not None:
        refuser.error(f"{what} does not combine with differential privacy: the accountant assumes every client is "
                     f"sampled uniformly")
    if getattr(args, "secure_aggregation", None) is not None:
        refuser.error(f"{what} does not combine with --secure-aggregation yet (its masks are set up for a full, "
                     f"fixed cohort)")
    if rule is None or rule.score is None:
        return
    if args.sampling == "poisson":
        refuser.error(f"--selection {args.selection} picks a fixed-size cohort; it does not combine with --sampling "
                     f"poisson (--availability does)")
    if getattr(args, "tiers", None) is not None:
        refuser.error(f"--selection {args.selection} ranks clients by the global model's loss; it does not combine "
                     f"with --tiers")
    if rule.needs_systems and args.speeds is None:
        refuser.error(f"--selection {args.selection} ranks clients by their expected round time: give --speeds "
                     f"lognormal:SIGMA or a FILE")
    num_clients = args.num_clients
    if rule.pool is not None and rule.pool < args.cohort_size:
        refuser.error(f"--selection {args.selection}: D={rule.pool} must be at least --cohort-size {args.cohort_size}")
    if rule.pool is not None and num_clients is not None and rule.pool > num_clients:
        refuser.error(f"--selection {args.selection}: D={rule.pool} exceeds --num-clients {num_clients}")


def build_kwargs(args, num_clients: int, systems) -> dict:
    """``engine.build`` keywords (nothing for always / uniform); a bad availability file or pool ends the run."""
    if not _given(args):
        return {}
    from jaxqfl.experiment.data_rules import fail
    from jaxqfl.systems import availability as avail
    from jaxqfl.systems import selection as sel

    out = {}
    if args.availability is not None:
        try:
            out["availability"] = avail.parse(args.availability, num_clients)
        except (OSError, ValueError) as e:
            fail(f"--availability: {e}")
    if args.selection is not None:
        rule = sel.parse(args.selection)
        try:
            rule.pool_size(args.cohort_size, num_clients)
        except ValueError as e:
            fail(f"--selection: {e}")
        out["selection"] = rule
        if rule.needs_systems:
            out["systems"] = systems
    return out


def summary_fields(args, records: list[dict]) -> dict:
    """``availability``, ``selection`` and the mean number of available clients per round (with either flag)."""
    if not _given(args):
        return {}
    available = [x for r in records for x in r.get("server_available_per_round", [])]
    return {"availability": args.availability or DEFAULT_AVAILABILITY,
            "selection": args.selection or DEFAULT_SELECTION,
            "mean_available": sum(available) / len(available) if available else None}
