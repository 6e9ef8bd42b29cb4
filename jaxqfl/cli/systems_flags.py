"""``--speeds``: clients that differ in device speed and link bandwidth, and the virtual clock (``jaxqfl.systems``).

    --speeds lognormal:SIGMA | FILE    each client's seconds per local step and bandwidth
    --step-seconds S                   the median simulated seconds of a local step (1)
    --bandwidth B                      the median link, bits per simulated second (1e6)
    --target-accuracy A                report when the global model first reaches test accuracy A

``lognormal:SIGMA`` multiplies ``--step-seconds`` and ``--bandwidth`` by
independent ``exp(SIGMA z)`` factors per client, drawn once from the run seed and
the client id (``lognormal:0``: equal clients); a FILE is a CSV with the header
``client,seconds_per_step,bandwidth_bps`` and one row per client id. Each round
waits for its whole cohort and takes the slowest client's ``steps x seconds per
step + (uplink + downlink bits) / bandwidth`` of simulated time, with the exact
bits of the codecs; ``metrics.jsonl`` carries the clock as ``sim_time``,
``summary.json`` ``sim_time_total``. The clock never changes the training: a run
with ``--speeds`` gives the same parameters as without. In a sweep (``--seeds``,
list-valued flags) every config runs its own clock, its speeds drawn from its
seed as its single run's (``sweep.json`` then has each config's
``sim_time_total`` and ``time_to_target``).

``--target-accuracy A`` adds ``rounds_to_target`` and ``time_to_target``
(simulated seconds, with ``--speeds``) to ``summary.json``: those of the first
evaluation whose test accuracy is at least ``A`` (``null`` if none reached it;
the resolution is ``--eval-every``).
"""
from __future__ import annotations

import argparse
import math
import os

LOGNORMAL = "lognormal:"


def _positive_finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("systems heterogeneity and the virtual clock")
    g.add_argument("--speeds", default=None, metavar="lognormal:SIGMA|FILE",
                   help="per-client seconds per local step and link bandwidth: log-normal with spread SIGMA around "
                        "--step-seconds and --bandwidth, or a CSV client,seconds_per_step,bandwidth_bps; runs the "
                        "virtual clock (sim_time in metrics.jsonl)")
    g.add_argument("--step-seconds", type=_positive_finite, default=1.0,
                   help="median simulated seconds of one local step (1)")
    g.add_argument("--bandwidth", type=_positive_finite, default=1e6,
                   help="median link bandwidth, bits per simulated second (1e6)")
    g.add_argument("--target-accuracy", type=float, default=None, metavar="A",
                   help="report the rounds (and, with --speeds, simulated seconds) to the first evaluation with test "
                        "accuracy >= A, in (0, 1]")


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


def validate(parser, args) -> None:
    """Refuse a malformed ``--speeds`` or ``--target-accuracy``, and what the clock does not cover yet."""
    if args.target_accuracy is not None and not (0 < args.target_accuracy <= 1):
        parser.error(f"--target-accuracy must lie in (0, 1], got {args.target_accuracy}")
    given = [f for f, v in (("--step-seconds", args.step_seconds != 1.0), ("--bandwidth", args.bandwidth != 1e6)) if v]
    if args.speeds is None:
        if given:
            parser.error(f"{given[0]} applies to --speeds")
        return
    try:
        sigma = sigma_of(args.speeds)
    except ValueError as e:
        parser.error(str(e))
    if sigma is None:
        if not os.path.isfile(args.speeds):
            parser.error(f"--speeds {args.speeds!r} is neither lognormal:SIGMA nor a file")
        if given:
            parser.error(f"{given[0]} applies to --speeds lognormal:SIGMA (a --speeds file gives every client's "
                         f"values)")


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
    return ("  virtual clock    " + "; ".join(parts)) if parts else ""
