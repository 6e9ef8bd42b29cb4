"""``--aggregator`` and ``--attack`` with their settings: checks and defaults, from the registry.

Every rule is an entry of ``jaxqfl.registry.aggregators`` (its factory, its own hyper-parameters with their
defaults, its rule-specific check: the trim range, the cohort Krum and Bulyan need), every attack an entry
of ``jaxqfl.registry.attacks`` (its behaviour, or none); nothing here names a rule or an attack. A rule's hyper-parameter given with another rule would do nothing, so it is refused (the rule of
README's "Flags that do nothing are refused"), like ``--mu`` without FedProx; so are the attack settings
without an attack:

=======================  ===================================================
``--byzantine-fraction`` any ``--attack`` but none (default 0.2)
``--attack-scale``       any ``--attack`` but none (default: the attack's own)
=======================  ===================================================

Defaults are filled only for the chosen rule and attack, so a run's ``config.toml`` names no setting that
did nothing.
"""
from __future__ import annotations

import math

from jaxqfl.experiment.resolved import Refuser, Settings
from jaxqfl.registry import aggregators as registry
from jaxqfl.registry import attacks as attack_registry

DEFAULT_BYZANTINE_FRACTION = 0.2
_ATTACK_SETTINGS = {"byzantine_fraction": DEFAULT_BYZANTINE_FRACTION, "attack_scale": None}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def validate(refuser: Refuser, args: Settings) -> None:
    """Refuse settings the chosen rule or attack does not read, fill the defaults, check the cohort.

    A resumed run keeps its checkpoint's config (``run_folder.check_resume`` refuses any
    change), which may predate this rule: its settings are only range-checked.
    """
    resumed = getattr(args, "_resume_meta", None) is not None
    entry = registry.BY_NAME[args.aggregator]
    for dest, (h, rules) in registry.HYPER.items():
        if args.aggregator in rules:
            if getattr(args, dest) is None:
                setattr(args, dest, h.default)
        elif getattr(args, dest) is not None and not resumed:
            refuser.error(f"{_flag(dest)} applies to --aggregator {' / '.join(rules)}; it does nothing with "
                           f"--aggregator {args.aggregator}: drop it or choose one of those rules")
    attacking = attack_registry.BY_NAME[args.attack].build is not None
    for dest, default in _ATTACK_SETTINGS.items():
        if attacking:
            if getattr(args, dest) is None:
                setattr(args, dest, default)
        elif getattr(args, dest) is not None and not resumed:
            attacks = ", ".join(e.name for e in attack_registry.ENTRIES if e.cli and e.build is not None)
            refuser.error(f"{_flag(dest)} applies to an --attack ({attacks}); "
                           f"it does nothing with --attack {args.attack}: drop it or choose an attack")
    if args.byzantine_fraction is not None and not 0.0 <= args.byzantine_fraction <= 1.0:
        refuser.error(f"--byzantine-fraction must lie in [0, 1], got {args.byzantine_fraction}")
    if attacking and args.attack_scale is not None and not attack_registry.BY_NAME[args.attack].reads_scale:
        refuser.error(f"--attack-scale does nothing with --attack {args.attack}, which reads no strength: drop it")
    if args.attack_scale is not None and not (0.0 <= args.attack_scale < math.inf):
        refuser.error(f"--attack-scale must be a finite number >= 0, got {args.attack_scale}")
    problem = entry.check(args) if entry.check is not None else None
    if problem is not None:
        refuser.error(problem)
