"""Aggregators and threat models by name (the CLI's ``--aggregator`` / ``--attack`` and the benchmarks).

``trim_fraction`` is the fraction of rows a rule assumes adversarial: the trimmed
mean drops ``floor(beta n)`` values at each end, Krum, Multi-Krum and Bulyan
assume ``f = floor(beta n)`` Byzantine rows (Bulyan needs ``beta < 0.25``).
"""
from __future__ import annotations

from jaxqfl.aggregate import attacks
from jaxqfl.aggregate.base import Aggregator
from jaxqfl.aggregate.clipping import centered_clip, norm_bound
from jaxqfl.aggregate.coordinatewise import median, trimmed_mean
from jaxqfl.aggregate.geomed import geometric_median
from jaxqfl.aggregate.krum import bulyan, krum, multi_krum
from jaxqfl.aggregate.mean import mean
from jaxqfl.aggregate.threat import label_flip_transform, with_attack
from jaxqfl.choices import AGGREGATORS, ATTACK_NAMES


def aggregator_by_name(name: str, *, trim_fraction: float = 0.2, krum_m: int | None = None,
                       clip_radius: float = 1.0) -> Aggregator:
    """The rule called ``name`` (one of ``jaxqfl.choices.AGGREGATORS``)."""
    builders = {
        "mean": mean,
        "median": median,
        "trimmed-mean": lambda: trimmed_mean(trim_fraction),
        "krum": lambda: krum(trim_fraction),
        "multi-krum": lambda: multi_krum(trim_fraction, krum_m),
        "bulyan": lambda: bulyan(trim_fraction),
        "geomed": geometric_median,
        "centered-clip": lambda: centered_clip(clip_radius),
        "norm-bound": lambda: norm_bound(clip_radius),
    }
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {name!r}; choose one of {list(AGGREGATORS)}")
    return builders[name]()


def attacked(aggregator: Aggregator, attack: str, fraction: float, *, num_clients: int, num_classes: int,
             seed: int, scale: float | None = None):
    """``(aggregator, label_transform)`` for ``--attack``: ``with_attack`` around ``aggregator`` (unchanged
    for ``"none"``) and the label transform for ``"label-flip"`` (else None)."""
    if attack not in ATTACK_NAMES:
        raise ValueError(f"unknown attack {attack!r}; choose one of {list(ATTACK_NAMES)}")
    if attack == "none":
        return aggregator, None
    behaviour = attacks.by_name(attack, scale)
    wrapped = with_attack(behaviour, fraction, aggregator, num_clients=num_clients, seed=seed)
    labels = None
    if behaviour.flips_labels:
        labels = label_flip_transform(fraction, num_clients=num_clients, num_classes=num_classes, seed=seed)
    return wrapped, labels
