"""The privacy and secure-aggregation flags of ``jaxqfl run`` (DP-FedAvg, SecAgg / SecAgg+).

Distributed DP's setup and summary live in ``jaxqfl.experiment.distributed_dp_rules``.

Kept apart from ``runner`` so the run path only calls its hooks: ``validate``
(before JAX starts), ``make_aggregator`` and ``record_fields`` / ``summary_fields``.
"""
from __future__ import annotations

from jaxqfl.experiment.resolved import Refuser, Settings

from jaxqfl import choices
from jaxqfl.registry import algorithms as algorithm_registry

import math

from jaxqfl.experiment import distributed_dp_rules

SECURE_PROTOCOLS = choices.SECURE_PROTOCOLS
DISTRIBUTED_MECHANISMS = choices.DISTRIBUTED_MECHANISMS
DISTRIBUTED_ALGORITHMS = tuple(e.name for e in algorithm_registry.ENTRIES if e.updates_like_params)


#: ``jaxqfl run``'s exit status when a secure-aggregation round failed at run time (documented in its --help).
EXIT_SECAGG_FAILED = 4


class RoundFailed(RuntimeError):
    """A round the protocol could not complete (secure aggregation below its threshold)."""

    exit_status = EXIT_SECAGG_FAILED


def _check_noise_range(refuser: Refuser, args: Settings) -> None:
    """Refuse a --dp-noise (or a swept one) past what the accountant computes (a DP run loads it anyway)."""
    from jaxqfl.privacy.accounting import MAX_NOISE_MULTIPLIER

    for z in getattr(args, "sweep_values", {}).get("dp_noise", [args.dp_noise]):
        if z > MAX_NOISE_MULTIPLIER:
            refuser.error(f"--dp-noise {z:g}: at most {MAX_NOISE_MULTIPLIER:g} (the privacy accountant's range; "
                           f"epsilon is already 0.0 there and the noise drowns any update)")


def validate(refuser: Refuser, args: Settings) -> None:
    dp_flags = [f for f in ("dp_noise", "dp_epsilon", "dp_delta", "dp_adaptive_quantile") if getattr(args, f) is not None]
    args.dp = args.dp_clip is not None
    if not args.dp and dp_flags:
        refuser.error(f"--{dp_flags[0].replace('_', '-')} needs --dp-clip C")
    if args.dp and (args.dp_noise is None) == (args.dp_epsilon is None):
        refuser.error("DP-FedAvg needs exactly one of --dp-noise z or --dp-epsilon E")
    if args.dp and args.dp_noise is not None:
        _check_noise_range(refuser, args)
    args.dp_delta_default = args.dp and args.dp_delta is None
    if args.dp_delta_default and args.num_clients is not None:  # else (npz / leaf): set once the data is read
        args.dp_delta = default_delta(args.num_clients)
    ddp = args.dp_distributed is not None
    if args.dp_bits is not None and not ddp:
        refuser.error("--dp-bits applies to --dp-distributed")
    if ddp:
        if not args.dp:
            refuser.error("--dp-distributed needs --dp-clip C")
        if args.dp_adaptive_quantile is not None:
            refuser.error("--dp-adaptive-quantile is not available with --dp-distributed (fixed clipping only)")
        if args.uplink != "none":
            refuser.error(f"--dp-distributed quantizes the update itself (b-bit codes); drop --uplink {args.uplink}")
        if args.algorithm not in DISTRIBUTED_ALGORITHMS:
            refuser.error(f"--dp-distributed needs an update shaped like the model's parameters: --algorithm one of "
                           f"{DISTRIBUTED_ALGORITHMS}, got {args.algorithm!r}")
        if args.integer_aggregation:
            refuser.error("--dp-distributed already sums integer codes; drop --integer-aggregation")
        if aggregated(args) < 2:
            refuser.error(f"--dp-distributed needs {_cohort_flag(args)} >= 2, got {aggregated(args)}")
        if args.secagg_degree is not None and (args.secure_aggregation == "secagg" or not (
                args.secagg_degree >= aggregated(args) - 1 or (args.secagg_degree >= 2 and args.secagg_degree % 2 == 0))):
            refuser.error(f"--secagg-degree must be an even number >= 2 (or >= cohort size - 1) with secagg+, "
                           f"got {args.secagg_degree}")
        args.dp_bits = 20 if args.dp_bits is None else args.dp_bits
        if not (2 ** (args.dp_bits - 1) > aggregated(args) + 1 and args.dp_bits <= 32):
            refuser.error(f"--dp-bits must be at most 32 with 2^(b-1) > cohort size + 1 = {aggregated(args) + 1}, "
                           f"got {args.dp_bits}")
        _predict_failure(refuser, args)
        return
    if args.secure_aggregation is None and (args.dropout > 0 or args.secagg_threshold != 0.5):
        refuser.error("--dropout and --secagg-threshold apply to --secure-aggregation")
    if args.secagg_degree is not None:
        k = args.secagg_degree
        if args.secure_aggregation != "secagg+":
            refuser.error("--secagg-degree applies to --secure-aggregation secagg+")
        if not (k >= aggregated(args) - 1 or (k >= 2 and k % 2 == 0)):
            refuser.error(f"--secagg-degree must be an even number >= 2 (or >= cohort size - 1 = "
                           f"{aggregated(args) - 1} for all pairs), got {k}")
    if args.secure_aggregation is not None:
        if args.dp:
            refuser.error("--secure-aggregation with --dp-clip is not available yet (central noise on a secure sum "
                           "needs distributed DP); choose one")
        if getattr(args.uplink_codec, "integer_sum", None) is None or args.uplink == "none":
            refuser.error(f"--secure-aggregation needs an --uplink codec whose codes can be summed as integers "
                           f"(uniform, qsgd, terngrad); got --uplink {args.uplink!r}")
        if args.integer_aggregation:
            refuser.error("--secure-aggregation already sums integer codes; drop --integer-aggregation")
        if aggregated(args) < 2:
            refuser.error(f"--secure-aggregation needs {_cohort_flag(args)} >= 2, got {aggregated(args)}")
        _predict_failure(refuser, args)
    if args.dp and args.integer_aggregation:
        refuser.error("--dp-clip uses the float sum path; drop --integer-aggregation")


def _predict_failure(refuser: Refuser, args: Settings) -> None:
    """Refuse a run whose dropout and threshold make a failed round likely (``jaxqfl.aggregate.secagg_plan``).

    A run more likely than not to hit a failed round is refused (exit 2); one whose failure
    probability may reach 1% is warned about. Distributed DP also fails below its noise shares.
    """
    import sys

    from jaxqfl.aggregate import secagg_plan

    shares = 1
    if args.dp_distributed is not None:
        from jaxqfl.aggregate.skellam_calibration import min_survivors

        shares = min_survivors(aggregated(args), args.dropout)
    try:
        fp = secagg_plan.check(aggregated(args), args.rounds, args.dropout, args.secagg_threshold,
                               protocol=args.secure_aggregation or "secagg+", neighbours=args.secagg_degree,
                               min_survivors=shares)
    except secagg_plan.SecaggWillFail as e:
        refuser.error(str(e))
    if fp.warned:
        upper, lower = f"{fp.run_upper:.3g}", f"{fp.run_lower:.3g}"
        odds = f"= {upper}" if upper == lower else f"<= {upper} (>= {lower})"  # the bounds agree: one number
        print(f"jaxqfl run: warning: at --dropout {args.dropout:g} and --secagg-threshold {args.secagg_threshold:g} "
              f"a round of secure aggregation may fail: P(some round of the {args.rounds} fails) {odds}; a failed "
              f"round stops the run with exit status {EXIT_SECAGG_FAILED}", file=sys.stderr)


def default_delta(num_clients: int) -> float:
    """delta = 1 / N^1.1: below 1/N, so no single client's data can be released whole (a common default)."""
    return 1.0 / num_clients ** 1.1


def secagg_max_weight(args, largest_client: int) -> int:
    """The largest client weight the run's algorithm gives (secure aggregation sizes its words for it):
    the largest client's example count under example weighting, else 1."""
    from jaxqfl.experiment.algorithm_rules import weighs_by_examples

    return int(largest_client) if weighs_by_examples(args) else 1


def make_aggregator(args, num_clients: int, uplink, hp: dict | None = None, model=None, feature_shape=None,
                    largest_client: int = 1):
    """The aggregator of the flags (None: the default mean). Calibrates --dp-epsilon; prints delta.

    ``largest_client``: the largest client's example count (secure aggregation's largest weight).

    ``hp`` (a sweep: ``engine.build_sweep``'s traced hyper-parameters, one config's): its
    ``dp_noise`` replaces --dp-noise, and nothing is calibrated or printed: call this once
    without ``hp`` first (that call calibrates and prints). ``model`` and ``feature_shape``
    give distributed DP its parameter template.
    """
    from jaxqfl import aggregate  # jaxqfl.privacy (dp-accounting, 0.8 s to import) only where DP is on

    if getattr(args, "dp_delta_default", False) and args.dp_delta is None:
        args.dp_delta = default_delta(num_clients)  # the file's natural clients, known only now
    if args.dp_distributed is not None:
        return distributed_dp_rules.make_distributed(args, num_clients, model, feature_shape)
    if args.secure_aggregation is not None:
        if hp is None:  # a sweep's configs were announced by the call without hp
            g = secagg_degree(args)
            print(f"secure aggregation: {args.secure_aggregation}, {g.neighbours} neighbours per client, "
                  f"P(round fails) <= {g.failure_bound:.3g} at --dropout {args.dropout} "
                  f"({'exact' if g.exact else 'union bound'})")
        return aggregate.secure_sum(uplink, num_clients=num_clients, cohort_size=aggregated(args),
                                    protocol=args.secure_aggregation, threshold=args.secagg_threshold,
                                    dropout=args.dropout, neighbours=args.secagg_degree,
                                    max_weight=secagg_max_weight(args, largest_client))
    if not args.dp:
        return None
    if args.aggregator != "mean":  # central DP composed over a robust rule (checked by check_central_dp_rule)
        return _central_dp_rule(args, num_clients, hp)
    if hp is not None:
        return aggregate.dp_mean(args.dp_clip, hp.get("dp_noise", args.dp_noise),
                                 target_quantile=args.dp_adaptive_quantile, count_noise_std=args.dp_count_noise)
    from jaxqfl import privacy

    args.dp_count_noise = aggregated(args) / 20.0 if args.dp_adaptive_quantile is not None else 0.0
    acct = dict(num_clients=num_clients, cohort_size=aggregated(args), count_noise_std=args.dp_count_noise,
                sampling=_sampling(args))
    if args.dp_epsilon is not None:
        args.dp_noise = privacy.noise_for_epsilon(args.dp_epsilon, args.dp_delta, args.rounds, **acct)
        _calibrated(args)
    swept = getattr(args, "sweep_values", {}).get("dp_noise")
    noise = f"noise multiplier {args.dp_noise:.4f}" if swept is None else \
        f"noise multipliers {', '.join(f'{z:g}' for z in swept)} (a sweep)"
    print(f"DP-FedAvg: clip {args.dp_clip}, {noise}, delta {args.dp_delta:.3g}"
          f"{' (default 1/num_clients^1.1)' if args.dp_delta_default else ''}, accountant "
          f"{privacy.accountant_name(_sampling(args))}")
    # Poisson sampling: the FIXED denominator is the expected cohort q N (McMahan et al. 2018), never the realised one
    return aggregate.dp_mean(args.dp_clip, args.dp_noise, target_quantile=args.dp_adaptive_quantile,
                             count_noise_std=args.dp_count_noise,
                             denominator=float(aggregated(args)) if _sampling(args) == "poisson" else None)


def _calibrated(args) -> None:
    """``--dp-noise`` was calibrated from ``--dp-epsilon``: a derived value, kept out of ``config.toml`` (which
    holds the epsilon asked for; with both, ``--resume`` and ``--config`` would refuse the run they repeat)."""
    args._derived = (*getattr(args, "_derived", ()), "dp_noise")


def _central_dp_rule(args, num_clients: int, hp: dict | None):
    """``aggregate.central_dp`` over ``--aggregator`` at the run's (or a sweep config's) noise multiplier z: the
    noise std on the aggregate is z S, so the accountant's epsilon at z holds (``count_noise_std`` 0)."""
    from jaxqfl import aggregate, privacy

    args.dp_count_noise = 0.0
    if hp is None and args.dp_epsilon is not None:
        args.dp_noise = privacy.noise_for_epsilon(args.dp_epsilon, args.dp_delta, args.rounds,
                                                  num_clients=num_clients, cohort_size=aggregated(args),
                                                  count_noise_std=0.0, sampling=_sampling(args))
        _calibrated(args)
    z = args.dp_noise if hp is None else hp.get("dp_noise", args.dp_noise)
    agg = aggregate.central_dp(args.aggregator, args.dp_clip, z, sampling=_sampling(args),
                               trim_fraction=args.trim_fraction if args.trim_fraction is not None else 0.2)
    if hp is None:
        print(f"central DP over --aggregator {args.aggregator}: clip {args.dp_clip}, noise multiplier "
              f"{args.dp_noise:.4f} on the rule's sensitivity, delta {args.dp_delta:.3g}, accountant "
              f"{privacy.accountant_name(_sampling(args))}")
    return agg


def check_central_dp_rule(refuser: Refuser, args: Settings) -> None:
    """``--dp-clip`` over a robust ``--aggregator``: central DP composed over the rule (``aggregate.central_dp``:
    clip, the rule, Gaussian noise of std z S with S the rule's L2 sensitivity). Refused, with the rule's own
    reason, where the rule has no bound, and where only the mean is served (adaptive clipping, distributed
    DP, integer sums, FedBuff's buffers)."""
    rule = args.aggregator
    for given, what in ((args.dp_adaptive_quantile is not None, "--dp-adaptive-quantile (adaptive clipping)"),
                        (args.dp_distributed is not None, "--dp-distributed"),
                        (args.integer_aggregation, "--integer-aggregation"),
                        (getattr(args, "async", None) is not None, "--async fedbuff")):
        if given:
            refuser.error(f"{what} with --dp-clip serves --aggregator mean only; central DP over --aggregator "
                           f"{rule} takes a fixed clip and the float path")
    from jaxqfl import aggregate

    try:
        aggregate.central_dp(rule, args.dp_clip, 1.0, sampling=_sampling(args),
                             trim_fraction=args.trim_fraction if args.trim_fraction is not None else 0.2)
    except ValueError as e:
        refuser.error(f"--dp-clip with --aggregator {rule}: {e}")


def _sampling(args) -> str:
    """The cohort sampling the accounting must match (``--sampling``, ``jaxqfl.experiment.sampling_rules``; ``"async"``
    for ``--async fedbuff``: a flush's arrivals are no uniform sample, ``jaxqfl.privacy.accounting``)."""
    if getattr(args, "async", None) is not None:
        return "async"
    return getattr(args, "sampling", "fixed")


def aggregated(args) -> int:
    """The clients one aggregate is over: the cohort, or FedBuff's buffer K (``--buffer``), which is the secure
    sum's cohort and the DP mean's denominator of each flush."""
    return args.buffer if getattr(args, "async", None) is not None else args.cohort_size


def _cohort_flag(args) -> str:
    return "--buffer" if getattr(args, "async", None) is not None else "--cohort-size"


def secagg_degree(args):
    """The flags' ``jaxqfl.aggregate.secagg_plan.choose_degree``: k, t and the bound on a round's failure
    (distributed DP's protocol defaults to secagg+)."""
    from jaxqfl.aggregate import secagg_plan

    return secagg_plan.choose_degree(aggregated(args), args.dropout, args.secagg_threshold,
                                     protocol=args.secure_aggregation or "secagg+", neighbours=args.secagg_degree)


def record_fields(args, num_clients: int, record: dict, noise: float | None = None) -> dict:
    """Per-evaluation fields: epsilon spent so far; raises RoundFailed on a failed secure round.

    ``noise``: the noise multiplier of one config of a sweep (default --dp-noise).
    """
    out = {}
    if args.dp:
        from jaxqfl import privacy

        if args.dp_distributed is not None:
            eps = privacy.distributed_epsilon(args._ddp_plan.effective_noise_multiplier, args.dp_delta,
                                              record["round"],
                                              num_clients=num_clients, cohort_size=aggregated(args),
                                              sampling=distributed_dp_rules.sampling(args))
        else:
            z = args.dp_noise if noise is None else noise
            eps = privacy.epsilon(z, args.dp_delta, record["round"], num_clients=num_clients,
                                  cohort_size=aggregated(args), count_noise_std=args.dp_count_noise,
                                  sampling=_sampling(args))
        out["dp_epsilon"] = eps if math.isfinite(eps) else None
    failed = record.get("server_secagg_failed_rounds", 0)
    if failed:
        raise RoundFailed(f"secure aggregation failed {_failed_when(record)} ({int(failed)} failed round(s) in "
                          f"all by round {record['round']}): "
                          f"fewer than t surviving holders of some client's shares, or (distributed DP) fewer "
                          f"survivors than the noise is split over (--dropout {args.dropout}, "
                          f"--secagg-threshold {args.secagg_threshold}); lower the dropout or the threshold")
    return out


def summary_line(summary: dict) -> str:
    """The one-screen summary's privacy line of a DP run (empty without DP): epsilon, delta, how accounted."""
    if summary.get("dp_delta") is None:
        return ""
    eps = summary.get("dp_epsilon")
    eps = "not finite" if eps is None else f"{eps:.4g}"
    return (f"  privacy          epsilon {eps}, delta {summary['dp_delta']:.3g} over "
            f"{summary.get('rounds_requested', summary.get('rounds'))} rounds; noise multiplier "
            f"{summary['dp_noise_multiplier']:.4g}, clip {summary['dp_clip']:g}"
            f"{' (initial; adaptive)' if summary.get('dp_adaptive_quantile') is not None else ''}; "
            f"{summary['dp_accountant']}")


def _failed_when(record: dict) -> str:
    """``at round r``: the first failed round of the record's block, else the block's span it precedes."""
    per_round = record.get("server_secagg_failed_per_round") or []
    first = record["round"] - len(per_round) + 1
    for i, failed in enumerate(per_round):
        if failed:
            return f"at round {first + i}"
    return f"before round {first} (in a block not evaluated)"


def summary_fields(args, num_clients: int, noise: float | None = None) -> dict:
    """summary.json's privacy fields; ``noise``: one sweep config's noise multiplier (default --dp-noise)."""
    from jaxqfl.experiment.algorithm_rules import weighs_by_examples

    if args.dp_distributed is not None:
        return distributed_dp_rules.summary(args, num_clients)
    if args.secure_aggregation is not None:
        g = secagg_degree(args)
        return {"secure_aggregation": args.secure_aggregation, "secagg_dropout": args.dropout,
                "secagg_threshold": args.secagg_threshold, "secagg_neighbours": g.neighbours,
                "secagg_failure_bound": g.failure_bound,
                "secagg_weighting": ("examples: the mean over the surviving clients weighted by their example "
                                     "counts (weights masked with the codes)") if weighs_by_examples(args)
                else "uniform: the mean over the surviving clients"}
    if not args.dp:
        return {}
    from jaxqfl import privacy

    noise = args.dp_noise if noise is None else noise
    d = privacy.describe(noise, args.dp_delta, args.rounds, num_clients=num_clients,
                         cohort_size=aggregated(args), count_noise_std=args.dp_count_noise,
                         sampling=_sampling(args))
    return {**d, "dp_noise_multiplier": noise, "dp_clip": args.dp_clip,
            "dp_adaptive_quantile": args.dp_adaptive_quantile, "dp_count_noise_std": args.dp_count_noise,
            "dp_weighting": "uniform (the algorithm's example weights are not used: sensitivity C)"}
