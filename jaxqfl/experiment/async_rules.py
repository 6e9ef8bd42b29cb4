"""``--async fedbuff``: buffered asynchronous FL (FedBuff, Nguyen et al. 2022) on the virtual clock.

    --async fedbuff           C clients train at once; the server applies a buffer of K arrivals
    --concurrency C           clients in flight (replaces --cohort-size)
    --buffer K                arrivals per server step (K <= C <= clients)
    --staleness NAME          an arrival's weight factor: constant (1), sqrt (1/sqrt(1+s)), poly:A ((1+s)^-A, A > 0)

Semantics in ``jaxqfl.engine.fedbuff``. One "round" of ``--rounds``, ``--eval-every``
and ``metrics.jsonl`` is one flush; ``sim_time`` is the flush's time (its K-th
arrival). ``summary.json`` adds ``staleness_histogram`` (applied updates per
staleness value, over the run) and ``staleness_mean``.

Checkpoints and ``--resume`` work as for synchronous rounds: a checkpoint holds the
whole ``FedBuffState`` (server state, in-flight table, last flush time;
``jaxqfl.engine.checkpoint``) and its record the clock and the staleness histogram so
far (``meta_fields``, from the count ``engine.run`` keeps: ``RunResult.counts``), so a resumed run equals the
uninterrupted one.

Refused (``refuser.error``): no ``--speeds`` (the clock orders the arrivals); sweeps
(``--seeds``, lists), ``--tiers``, ``--sampling poisson``, ``--cohort-size`` (C replaces
it), ``--stream``, ``--client-state`` other than auto, per-client state (``--algorithm``
scaffold, feddyn and the personal ones, ``+ef`` codecs, ``--dp-adaptive-quantile``: adaptive
clipping's per-client indicator), and ``--staleness`` other than constant with ``--dp-clip``,
``--secure-aggregation`` or ``--integer-aggregation`` (their means weigh each client 1 or an
integer, so the staleness factor would be lost or rounded away).

Privacy per buffer: ``--secure-aggregation`` sums each flush's K arrivals under the
protocol (masks among them, their dropouts); ``--dp-clip`` with ``--dp-noise`` or
``--dp-epsilon`` releases each flush's clipped sum plus Gaussian noise over K, accounted as
the unsampled Gaussian mechanism composed over the flushes (``sampling="async"`` of
``jaxqfl.privacy``: who arrives depends on speed, so no amplification by sampling);
``--dp-distributed skellam`` noises each buffer's secure sum, accounted the same way.
"""
from __future__ import annotations

from jaxqfl import choices

import math


from jaxqfl.experiment.data_rules import stream_origin
from jaxqfl.choices import PERSONAL_ALGORITHMS
from jaxqfl.registry import algorithms as algorithm_registry

MODES = choices.ASYNC_MODES
STATEFUL_ALGORITHMS = tuple(e.name for e in algorithm_registry.ENTRIES if e.stateful)  # state between rounds
#: flags whose mean weighs each client 1 or an integer: a staleness factor other than 1 would be lost or rounded
UNWEIGHTED_MEANS = (("dp_clip", "--dp-clip"), ("dp_distributed", "--dp-distributed"),
                    ("secure_aggregation", "--secure-aggregation"), ("integer_aggregation", "--integer-aggregation"))


def on(args) -> bool:
    return getattr(args, "async", None) is not None


def _staleness_problem(spec: str) -> str | None:
    if spec in ("constant", "sqrt"):
        return None
    if spec.startswith("poly:"):
        try:
            a = float(spec[len("poly:"):])
        except ValueError:
            a = float("nan")
        if math.isfinite(a) and a > 0:
            return None
        return f"--staleness {spec!r}: A in poly:A must be a finite number > 0"
    return f"--staleness {spec!r} is not one of constant, sqrt, poly:A"


def validate(refuser, args) -> None:
    """Refuse bad or unsupported FedBuff flags; runs before the dataset defaults are filled in."""
    if not on(args):
        for flag, dest in (("--concurrency", "concurrency"), ("--buffer", "buffer"), ("--staleness", "staleness")):
            if getattr(args, dest) is not None:
                refuser.error(f"{flag} applies to --async fedbuff")
        return
    if args.staleness is None:
        args.staleness = "constant"
    problem = _staleness_problem(args.staleness)
    if problem:
        refuser.error(problem)
    if args.concurrency is None or args.buffer is None:
        refuser.error("--async fedbuff needs --concurrency C and --buffer K")
    if args.buffer > args.concurrency:
        refuser.error(f"--buffer {args.buffer} exceeds --concurrency {args.concurrency} (a flush needs K <= C arrivals)")
    if args.num_clients is not None and args.concurrency > args.num_clients:
        refuser.error(f"--concurrency {args.concurrency} exceeds --num-clients {args.num_clients}")
    if args.speeds is None:
        refuser.error("--async fedbuff needs --speeds (lognormal:SIGMA or a FILE): the virtual clock orders arrivals")
    if args.cohort_size is not None:
        refuser.error("--cohort-size does not apply to --async fedbuff: --concurrency C clients are in flight and "
                       "--buffer K of them are aggregated per server step")
    cohort_rules = [f"--{flag} {getattr(args, flag)}" for flag, default in (("availability", "always"),
                                                                          ("selection", "uniform"))
                    if getattr(args, flag, None) not in (None, default)]
    unweighted = [flag for dest, flag in UNWEIGHTED_MEANS if getattr(args, dest, None) not in (None, False)]
    if getattr(args, "deadline", None) is not None:
        refuser.error(f"--deadline {args.deadline}: --async fedbuff has no rounds to give a deadline (the server "
                       f"steps whenever --buffer clients have arrived; slow clients arrive stale instead)")
    refusals = [
        (bool(args.sweep_values) or args.seeds is not None,
         "--async fedbuff runs one config at a time: drop --seeds and list-valued flags"),
        (getattr(args, "tiers", None) is not None, "--tiers is not available with --async fedbuff"),
        (getattr(args, "sampling", "fixed") != "fixed",
         f"--sampling {getattr(args, 'sampling', None)} is not available with --async fedbuff (replacements are "
         f"drawn uniformly among the clients not in flight)"),
        (getattr(args, "stream", False), f"{stream_origin(args)} is not available with --async fedbuff (the "
                                         f"population stays on the devices)"),
        (args.client_state not in ("auto", "replicated"),
         f"--client-state {args.client_state}: --async fedbuff keeps no per-client state"),
        (getattr(args, "dp_adaptive_quantile", None) is not None,
         "--dp-adaptive-quantile keeps a per-client indicator (adaptive clipping), which --async fedbuff does not "
         "define; use a fixed --dp-clip"),
        (args.staleness != "constant" and bool(unweighted),
         f"--staleness {args.staleness} with {' '.join(unweighted)}: that mean weighs each client 1 or an integer, "
         f"so the staleness factor would be lost or rounded away; use --staleness constant"),
        (args.algorithm in STATEFUL_ALGORITHMS,
         f"--algorithm {args.algorithm} keeps per-client state, which --async fedbuff does not define; use one of "
         f"fedavg, fedprox, fednova, mimelite, perfedavg, qffl"),
        (bool(cohort_rules),
         f"{' '.join(cohort_rules)}: --async fedbuff draws each replacement uniformly among the clients not in "
         f"flight (availability and selection rules are for synchronous rounds)"),
        (any("+ef" in getattr(args, f, "") for f in ("uplink", "downlink")),
         "error feedback (+ef) keeps per-client state, which --async fedbuff does not define"),
    ]
    for refused, message in refusals:
        if refused:
            refuser.error(message)
    args.cohort_size = args.concurrency  # what the memory guard and the population checks size for
    args._derived = (*getattr(args, "_derived", ()), "cohort_size")  # not a flag of this run: kept out of config.toml


def build(args, population, model, algorithm, schedule, *, aggregator, uplink, downlink, task, label_transform,
          client_systems):
    """The FedBuff ``Simulation`` of the flags (``engine.build_fedbuff``); ValueError naming a bad value."""
    from jaxqfl import engine

    # a resumed run keeps its checkpoint's device count (1 device and several differ in the last bits)
    layout = (getattr(args, "_resume_meta", None) or {}).get("layout") or {}
    return engine.build_fedbuff(population, model, algorithm, schedule, concurrency=args.concurrency,
                                buffer=args.buffer, staleness=args.staleness, systems=client_systems,
                                aggregator=aggregator, uplink=uplink, downlink=downlink, task=task,
                                num_devices=args.devices or layout.get("num_devices"),
                                label_transform=label_transform)


def resumed_counts(meta: dict) -> dict:
    """``RunTotals.counts`` of a resumed run: the staleness histogram its checkpoint's record kept."""
    saved = meta.get("staleness_histogram")
    return {} if saved is None else {"staleness": {int(k): int(v) for k, v in saved.items()}}


def meta_fields(args, counts: dict | None) -> dict:
    """What a checkpoint's JSON record keeps of the driver's staleness count (nothing for a synchronous run)."""
    if not on(args):
        return {}
    count = (counts or {}).get("staleness", {})
    return {"staleness_histogram": {str(k): count[k] for k in sorted(count)}}


def summary_fields(args, counts: dict) -> dict:
    """summary.json's FedBuff fields: the settings and the staleness histogram the driver counted (``RunResult``)."""
    count = counts.get("staleness", {})
    total = sum(count.values())
    return {"async": getattr(args, "async"), "concurrency": args.concurrency, "buffer": args.buffer,
            "staleness": args.staleness,
            "staleness_histogram": {str(k): count[k] for k in sorted(count)},
            "staleness_mean": sum(k * c for k, c in count.items()) / total if total else None}


def summary_line(s: dict) -> str:
    """The one-screen summary's FedBuff line ("" for a synchronous run)."""
    if s.get("async") is None:
        return ""
    mean = s["staleness_mean"]
    return (f"  asynchronous     {s['async']}: {s['concurrency']} clients in flight, a server step every "
            f"{s['buffer']} arrivals, staleness weight {s['staleness']}"
            + (f", mean staleness {mean:.2f}" if mean is not None else ""))
