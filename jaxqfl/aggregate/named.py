"""Aggregators and threat models by name (the CLI's ``--aggregator`` / ``--attack`` and the benchmarks).

The rules are the entries of ``jaxqfl.registry.aggregators`` (their factories, hyper-parameters and checks);
the attacks are the entries of ``jaxqfl.registry.attacks`` (their behaviours, default strengths, whether they
flip labels).
"""
from __future__ import annotations

from jaxqfl.aggregate import attacks
from jaxqfl.aggregate.base import Aggregator
from jaxqfl.aggregate.threat import label_flip_transform, with_attack
from jaxqfl.registry import attacks as attack_registry


def aggregator_by_name(name: str, *, trim_fraction: float = 0.2, krum_m: int | None = None,
                       clip_radius: float = 1.0) -> Aggregator:
    """The rule called ``name`` (an entry of ``jaxqfl.registry.aggregators``, which builds it)."""
    from types import SimpleNamespace

    from jaxqfl.registry import aggregators as registry

    if name not in registry.BY_NAME:
        raise ValueError(f"unknown aggregator {name!r}; choose one of {list(registry.NAMES)}")
    return registry.BY_NAME[name].build(SimpleNamespace(trim_fraction=trim_fraction, krum_m=krum_m,
                                                         clip_radius=clip_radius))


def attacked(aggregator: Aggregator, attack: str, fraction: float, *, num_clients: int, num_classes: int,
             seed: int, scale: float | None = None):
    """``(aggregator, label_transform)`` for ``--attack``: ``with_attack`` around ``aggregator`` (unchanged
    for ``"none"``) and the label transform for an attack that flips labels (else None)."""
    if attack not in attack_registry.NAMES:
        raise ValueError(f"unknown attack {attack!r}; choose one of {list(attack_registry.NAMES)}")
    entry = attack_registry.BY_NAME[attack]
    if entry.build is None:
        return aggregator, None
    behaviour = attacks.by_name(attack, scale)
    wrapped = with_attack(behaviour, fraction, aggregator, num_clients=num_clients, seed=seed)
    labels = None
    if entry.flips_labels:
        labels = label_flip_transform(fraction, num_clients=num_clients, num_classes=num_classes, seed=seed)
    return wrapped, labels
