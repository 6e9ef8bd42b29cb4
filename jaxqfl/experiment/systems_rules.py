"""``--speeds``: clients that differ in device speed and link bandwidth, and the virtual clock (``jaxqfl.systems``).

    --speeds lognormal:SIGMA | FILE    each client's seconds per local step and bandwidth
    --step-seconds S                   the median simulated seconds of a local step (1)
    --bandwidth B                      the median link, bits per simulated second (1e6)
    --target-accuracy A                report when the global model first reaches test accuracy A
    --deadline SECONDS                 each round's deadline, simulated seconds (needs --speeds)
    --stragglers wait|drop|partial     what happens to a client that cannot meet it (wait: no deadline)

``lognormal:SIGMA`` multiplies ``--step-seconds`` and ``--bandwidth`` by
independent ``exp(SIGMA z)`` factors per client, drawn once from the run seed and
the client id (``lognormal:0``: equal clients); a FILE is a CSV with the header
``client,seconds_per_step,bandwidth_bps`` and one row per client id. Each round
waits for its whole cohort and takes the slowest client's ``steps x seconds per
step + (uplink + downlink bits) / bandwidth`` of simulated time, with the exact
bits of the codecs; ``metrics.jsonl`` carries the clock as ``sim_time``,
``summary.json`` ``sim_time_total``. Without ``--deadline`` the clock never changes the
training: a run with ``--speeds`` gives the same parameters as without. In a sweep (``--seeds``,
list-valued flags) every config runs its own clock, its speeds drawn from its
seed as its single run's (``sweep.json`` then has each config's
``sim_time_total`` and ``time_to_target``).

``--deadline D --stragglers drop`` leaves out of each round the clients whose
``steps x seconds per step + (uplink + downlink bits) / bandwidth`` exceeds D;
``--stragglers partial`` keeps them with the steps they can do before D (none:
dropped). A round then takes ``min(D, the slowest sampled client's time)``;
``metrics.jsonl`` carries per round ``server_stragglers_dropped_per_round`` (the
fraction of the cohort dropped) and ``server_partial_work_per_round`` (the kept
clients' mean fraction of their steps done), ``summary.json`` their means
(``stragglers_dropped_mean``, ``partial_work_mean``). Semantics:
``jaxqfl.systems.deadline``. Not with ``--stream`` nor in a sweep.

``--target-accuracy A`` adds ``rounds_to_target`` and ``time_to_target``
(simulated seconds, with ``--speeds``) to ``summary.json``: those of the first
evaluation whose test accuracy is at least ``A`` (``null`` if none reached it;
the resolution is ``--eval-every``).
"""
from __future__ import annotations

from jaxqfl import choices

import math
import os

LOGNORMAL = "lognormal:"
STRAGGLERS = choices.STRAGGLERS


def sigma_of(speeds: str) -> float | None:
    """``SIGMA`` of ``lognormal:SIGMA``, or None for a file; ValueError naming a bad value."""
    if not speeds.lower().startswith(LOGNORMAL):
        return None
    text = speeds[len(LOGNORMAL):]
    try:
        sigma = float(text)
    except ValueError:
        raise ValueError(f"--speeds {speeds!r}: SIGMA {text!r} is not a number") from None
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"--speeds {speeds!r}: SIGMA must be a finite number >= 0")
    return sigma


def validate(refuser, args) -> None:
    """Refuse a malformed ``--speeds``, ``--target-accuracy`` or deadline, and what the clock does not cover yet."""
    if args.target_accuracy is not None and not (0 < args.target_accuracy <= 1):
        refuser.error(f"--target-accuracy must lie in (0, 1], got {args.target_accuracy}")
    _validate_deadline(refuser, args)
    given = [f for f, v in (("--step-seconds", args.step_seconds != 1.0), ("--bandwidth", args.bandwidth != 1e6)) if v]
    if args.speeds is None:
        if given:
            refuser.error(f"{given[0]} applies to --speeds")
        return
    try:
        sigma = sigma_of(args.speeds)
    except ValueError as e:
        refuser.error(str(e))
    if sigma is None:
        if not os.path.isfile(args.speeds):
            refuser.error(f"--speeds {args.speeds!r} is neither lognormal:SIGMA nor a file")
        if given:
            refuser.error(f"{given[0]} applies to --speeds lognormal:SIGMA (a --speeds file gives every client's "
                         f"values)")


def _validate_deadline(refuser, args) -> None:
    if args.deadline is None:
        if args.stragglers != "wait":
            refuser.error(f"--stragglers {args.stragglers} needs --deadline SECONDS")
        return
    if args.stragglers == "wait":
        refuser.error("--deadline with --stragglers wait waits for every client, so it has no deadline: give "
                       "--stragglers drop or --stragglers partial")
    if args.speeds is None:
        refuser.error("--deadline needs the clients' speeds: give --speeds lognormal:SIGMA or a FILE")
    masked = [flag for flag, on in (("--secure-aggregation", getattr(args, "secure_aggregation", None) is not None),
                                    ("--dp-distributed", getattr(args, "dp_distributed", None) is not None)) if on]
    if args.stragglers == "drop" and masked:
        refuser.error(f"--stragglers drop does not combine with {masked[0]} yet: a dropped straggler's pairwise masks "
                       f"would stay in the secure sum (the protocol is only told of --dropout's dropouts); use "
                       f"--stragglers partial, or --dropout P for clients that never report")
    if getattr(args, "stream", False):
        refuser.error("--deadline is not available with --stream (a streamed round has only the cohort's rows, "
                       "not the population's counts)")
    if getattr(args, "sweep_values", None) or getattr(args, "seeds", None) is not None:
        refuser.error("--deadline is not available in a sweep (--seeds or list-valued flags): each config would need "
                       "its own speeds inside one program; run one config at a time")


def deadline_kwargs(args, client_systems) -> dict:
    """``engine.build``'s deadline arguments (none without ``--deadline``: the round program as it was)."""
    if args.deadline is None:
        return {}
    return {"systems": client_systems, "deadline": args.deadline, "stragglers": args.stragglers}


def misfit(args, task_name: str) -> str | None:
    """What the population's task rules out (known once the data is read), or None."""
    if task_name == "clustering" and (args.speeds is not None or args.target_accuracy is not None):
        return "--speeds and --target-accuracy are for training runs; federated k-means (--task clustering) has neither"
    if task_name == "regression" and args.target_accuracy is not None:
        return "--target-accuracy needs a classification task; this population's task is regression"
    return None


def build(args, num_clients: int, seed: int | None = None):
    """The run's ``ClientSystems`` (None without ``--speeds``), drawn from ``seed`` (default ``--seed``);
    ValueError naming a bad profile file."""
    if args.speeds is None:
        return None
    import jax

    from jaxqfl import systems

    sigma = sigma_of(args.speeds)
    if sigma is None:
        return systems.load_systems_csv(args.speeds, num_clients)
    return systems.draw_lognormal_systems(jax.random.key(args.seed if seed is None else seed), num_clients, sigma,
                                          step_seconds=args.step_seconds, bandwidth_bps=args.bandwidth)


def build_per_config(args, num_clients: int, seeds) -> list | None:
    """A sweep's profiles: config ``s`` draws from its own seed, as its single run would (None without ``--speeds``)."""
    if args.speeds is None:
        return None
    drawn = {}
    for seed in seeds:
        if seed not in drawn:
            drawn[seed] = build(args, num_clients, seed)
    return [drawn[seed] for seed in seeds]


def summary_fields(args, result, records: list[dict]) -> dict:
    """``sim_time_total`` (with ``--speeds``), ``rounds_to_target`` and ``time_to_target`` (with a target)."""
    out = {}
    if args.speeds is not None:
        out["sim_time_total"] = result.sim_time
    if args.deadline is not None:  # the means over every round of the run's records
        for name in ("stragglers_dropped", "partial_work"):
            rounds = [x for r in records for x in r.get(f"server_{name}_per_round", [])]
            out[f"{name}_mean"] = float(sum(rounds) / len(rounds)) if rounds else None
    if args.target_accuracy is not None:
        hit = next((r for r in records if (r.get("test_accuracy") or 0.0) >= args.target_accuracy), None)
        out["target_accuracy"] = args.target_accuracy
        out["rounds_to_target"] = None if hit is None else hit["round"]
        if args.speeds is not None:
            out["time_to_target"] = None if hit is None else hit["sim_time"]
    return out


def summary_line(s: dict) -> str:
    """The one-screen summary's simulated time and time to target."""
    parts = []
    if s.get("sim_time_total") is not None:
        parts.append(f"{s['sim_time_total']:,.1f} simulated s")
    if "target_accuracy" in s:
        if s["rounds_to_target"] is None:
            parts.append(f"accuracy {s['target_accuracy']:g} not reached")
        else:
            when = f"round {s['rounds_to_target']}"
            if s.get("time_to_target") is not None:
                when += f", {s['time_to_target']:,.1f} simulated s"
            parts.append(f"accuracy {s['target_accuracy']:g} at {when}")
    if s.get("stragglers_dropped_mean") is not None:
        parts.append(f"deadline: {s['stragglers_dropped_mean']:.1%} of sampled clients dropped, kept clients did "
                       f"{s['partial_work_mean']:.1%} of their steps")
    return ("  virtual clock    " + "; ".join(parts)) if parts else ""
