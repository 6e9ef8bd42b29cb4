"""The robust-aggregation and attack flags of ``jaxqfl run``: ``--aggregator`` and ``--attack`` with their settings.

Each setting belongs to the rules or attacks that read it; given with any other
it would do nothing, so it is refused (the rule of README's "Flags that do
nothing are refused"), like ``--mu`` without FedProx:

=======================  ===================================================
``--trim-fraction``      trimmed-mean, krum, multi-krum, bulyan (default 0.2)
``--krum-m``             multi-krum (default n - f), at most the cohort
``--clip-radius``        centered-clip, norm-bound (default 1)
``--byzantine-fraction`` any ``--attack`` but none (default 0.2)
``--attack-scale``       any ``--attack`` but none (default: the attack's own)
=======================  ===================================================

Their defaults are filled only for the rules that read them, so a run's
``config.toml`` names no setting that did nothing. Krum and Multi-Krum need a
cohort of at least ``2f + 3``, Bulyan ``4f + 3``, ``f = floor(beta n)``
(``jaxqfl.aggregate.krum.cohort_requirement``): a smaller cohort is refused.
"""
from __future__ import annotations

from jaxqfl.experiment.resolved import Refuser, Settings

import math

from jaxqfl.choices import ATTACK_NAMES

DEFAULT_TRIM_FRACTION = 0.2
DEFAULT_BYZANTINE_FRACTION = 0.2
DEFAULT_CLIP_RADIUS = 1.0
#: flag dest -> (the --aggregator values that read it, its default there)
_AGGREGATOR_SETTINGS = {
    "trim_fraction": (("trimmed-mean", "krum", "multi-krum", "bulyan"), DEFAULT_TRIM_FRACTION),
    "krum_m": (("multi-krum",), None),
    "clip_radius": (("centered-clip", "norm-bound"), DEFAULT_CLIP_RADIUS),
}
_ATTACK_SETTINGS = {"byzantine_fraction": DEFAULT_BYZANTINE_FRACTION, "attack_scale": None}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def validate(parser: Refuser, args: Settings) -> None:
    """Refuse settings the chosen rule or attack does not read, fill the defaults, check the cohort.

    A resumed run keeps its checkpoint's config (``run_setup.check_resume`` refuses any
    change), which may predate this rule: its settings are only range-checked.
    """
    resumed = getattr(args, "_resume_meta", None) is not None
    for dest, (rules, default) in _AGGREGATOR_SETTINGS.items():
        if args.aggregator in rules:
            if getattr(args, dest) is None:
                setattr(args, dest, default)
        elif getattr(args, dest) is not None and not resumed:
            parser.error(f"{_flag(dest)} applies to --aggregator {' / '.join(rules)}; it does nothing with "
                         f"--aggregator {args.aggregator}: drop it or choose one of those rules")
    for dest, default in _ATTACK_SETTINGS.items():
        if args.attack != "none":
            if getattr(args, dest) is None:
                setattr(args, dest, default)
        elif getattr(args, dest) is not None and not resumed:
            parser.error(f"{_flag(dest)} applies to an --attack ({', '.join(a for a in ATTACK_NAMES if a != 'none')}); "
                         f"it does nothing with --attack none: drop it or choose an attack")
    if args.trim_fraction is not None:
        high = 0.25 if args.aggregator == "bulyan" else 0.5
        if not 0.0 <= args.trim_fraction < high:
            parser.error(f"--trim-fraction must lie in [0, {high}) for --aggregator {args.aggregator}, "
                         f"got {args.trim_fraction}")
    if args.byzantine_fraction is not None and not 0.0 <= args.byzantine_fraction <= 1.0:
        parser.error(f"--byzantine-fraction must lie in [0, 1], got {args.byzantine_fraction}")
    if args.attack_scale is not None and not (0.0 <= args.attack_scale < math.inf):
        parser.error(f"--attack-scale must be a finite number >= 0, got {args.attack_scale}")
    if args.aggregator in ("krum", "multi-krum", "bulyan"):
        _check_cohort(parser, args)


def _check_cohort(parser: Refuser, args: Settings) -> None:
    """Krum / Multi-Krum need n >= 2f + 3, Bulyan n >= 4f + 3; Multi-Krum's m at most n."""
    from jaxqfl.aggregate.krum import cohort_requirement

    n, beta, rule = args.cohort_size, args.trim_fraction, args.aggregator
    req = cohort_requirement(rule, beta, n)
    if not req.met:
        a = 4 if rule == "bulyan" else 2
        fix = [f"--cohort-size {req.next_cohort}"] if req.next_cohort is not None else []
        if req.largest_fraction is not None and req.largest_fraction > 0:
            fix.append(f"--trim-fraction below {req.largest_fraction:.3g}")
        parser.error(f"--aggregator {rule} with --trim-fraction {beta:g} assumes f = floor({beta:g} x {n}) = "
                     f"{req.assumed_byzantine} Byzantine clients in the cohort of --cohort-size {n}, and "
                     f"{rule} needs a cohort of at least {a}f + 3 = {req.needed}; allowed: {' or '.join(fix)}")
    if args.krum_m is not None and args.krum_m > n:
        parser.error(f"--krum-m {args.krum_m} exceeds the cohort (--cohort-size {n}): Multi-Krum averages m of "
                     f"the cohort's n updates; allowed: 1 <= --krum-m <= {n}")
