"""The sections of an experiment generated from the registries (``jaxqfl.registry``): the algorithm
(``--algorithm``) and every registered algorithm's own hyper-parameters (``--mu``, ``--feddyn-alpha``, ...);
the aggregation rule (``--aggregator``) and every rule's own (``--trim-fraction``, ``--krum-m``, ...).

A hyper-parameter left automatic (None) takes its entry's default when its entry is chosen, and must stay
None otherwise (``jaxqfl.experiment.algorithm_rules``, ``robust_rules``).
"""
from __future__ import annotations

from jaxqfl.experiment.setting import hyper_fields, make_section, setting
from jaxqfl.registry import aggregators as aggregator_registry
from jaxqfl.registry import algorithms as registry

_DOC = "FL algorithm: " + "; ".join(f"{e.name}, {e.doc}" for e in registry.ENTRIES) + "; default fedavg"

Algorithm = make_section(
    "Algorithm", "algorithm", "The FL algorithm and its own hyper-parameters.",
    [("name", "str", setting("fedavg", choices=registry.NAMES, dest="algorithm", help=_DOC))]
    + hyper_fields(registry.HYPER, "--algorithm"))

_AGGREGATOR_DOC = ("how the server combines the cohort's updates: " + "; ".join(
    f"{e.name}, {e.doc}" for e in aggregator_registry.ENTRIES) + "; default mean")

Aggregator = make_section(
    "Aggregator", "aggregator", "The aggregation rule and its own hyper-parameters.",
    [("name", "str", setting("mean", choices=aggregator_registry.NAMES, dest="aggregator", help=_AGGREGATOR_DOC))]
    + hyper_fields(aggregator_registry.HYPER, "--aggregator"))
