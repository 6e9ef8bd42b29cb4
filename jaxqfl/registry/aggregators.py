"""The built-in aggregation rules: one entry each (see ``jaxqfl.registry``), their factories and checks.

``build(settings)`` makes the rule from its hyper-parameters (read as attributes of ``settings``, already
filled with the entry's defaults); ``check(settings)`` returns why this rule cannot serve the run (its
hyper-parameters' rule-specific ranges, the cohort it needs), or None. ``trim_fraction`` is the fraction
of rows a rule assumes adversarial: the trimmed mean drops ``floor(beta n)`` values at each end; Krum,
Multi-Krum and Bulyan assume ``f = floor(beta n)`` Byzantine rows (Bulyan needs ``beta < 0.25``).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

from jaxqfl import value_kinds as v
from jaxqfl.registry import HyperParameter, check_unique, hyper_users


class AggregatorEntry(NamedTuple):
    name: str
    doc: str
    build: Callable[[Any], Any]  # settings -> jaxqfl.aggregate.Aggregator
    hyper: tuple = ()
    check: Optional[Callable[[Any], Optional[str]]] = None


TRIM = HyperParameter("trim_fraction", float, "fraction of rows a robust rule assumes adversarial", 0.2)
KRUM_M = HyperParameter("krum_m", v.positive_int, "Multi-Krum's m, at most the cohort (default n - f)",
                        type="int | None")
RADIUS = HyperParameter("clip_radius", v.positive_float, "norm-bound / centered-clip radius", 1.0)


def _trim_below(high: float):
    def check(s) -> Optional[str]:
        if not 0.0 <= s.trim_fraction < high:
            return (f"--trim-fraction must lie in [0, {high}) for --aggregator {s.aggregator}, "
                    f"got {s.trim_fraction}")
        return None

    return check


def _krum_family(high: float):
    """The trim range, then Krum / Multi-Krum's n >= 2f + 3 or Bulyan's n >= 4f + 3, and Multi-Krum's m <= n."""
    trim = _trim_below(high)

    def check(s) -> Optional[str]:
        problem = trim(s)
        if problem is not None:
            return problem
        from jaxqfl.aggregate.krum import cohort_requirement

        n, beta, rule = s.cohort_size, s.trim_fraction, s.aggregator
        req = cohort_requirement(rule, beta, n)
        if not req.met:
            a = 4 if rule == "bulyan" else 2
            fix = [f"--cohort-size {req.next_cohort}"] if req.next_cohort is not None else []
            if req.largest_fraction is not None and req.largest_fraction > 0:
                fix.append(f"--trim-fraction below {req.largest_fraction:.3g}")
            return (f"--aggregator {rule} with --trim-fraction {beta:g} assumes f = floor({beta:g} x {n}) = "
                    f"{req.assumed_byzantine} Byzantine clients in the cohort of --cohort-size {n}, and "
                    f"{rule} needs a cohort of at least {a}f + 3 = {req.needed}; allowed: {' or '.join(fix)}")
        if getattr(s, "krum_m", None) is not None and s.krum_m > n:
            return (f"--krum-m {s.krum_m} exceeds the cohort (--cohort-size {n}): Multi-Krum averages m of "
                    f"the cohort's n updates; allowed: 1 <= --krum-m <= {n}")
        return None

    return check


def _rule(name: str, *hyper: str):
    """A factory calling ``jaxqfl.aggregate.<name>`` with the named hyper-parameters (imported when called)."""
    def build(s):
        from jaxqfl import aggregate

        return getattr(aggregate, name)(*(getattr(s, h) for h in hyper))

    return build


ENTRIES = (
    AggregatorEntry("mean", "the weighted mean (FedAvg's)", _rule("mean")),
    AggregatorEntry("median", "coordinate-wise median (Yin et al. 2018)", _rule("median")),
    AggregatorEntry("trimmed-mean", "coordinate-wise trimmed mean (Yin et al. 2018)",
                    _rule("trimmed_mean", "trim_fraction"), (TRIM,), _trim_below(0.5)),
    AggregatorEntry("krum", "Krum (Blanchard et al. 2017)", _rule("krum", "trim_fraction"), (TRIM,),
                    _krum_family(0.5)),
    AggregatorEntry("multi-krum", "Multi-Krum (Blanchard et al. 2017)",
                    _rule("multi_krum", "trim_fraction", "krum_m"), (TRIM, KRUM_M), _krum_family(0.5)),
    AggregatorEntry("bulyan", "Bulyan (El Mhamdi et al. 2018)", _rule("bulyan", "trim_fraction"), (TRIM,),
                    _krum_family(0.25)),
    AggregatorEntry("geomed", "geometric median, smoothed Weiszfeld (Pillutla et al. 2022)",
                    _rule("geometric_median")),
    AggregatorEntry("centered-clip", "centered clipping (Karimireddy et al. 2021)",
                    _rule("centered_clip", "clip_radius"), (RADIUS,)),
    AggregatorEntry("norm-bound", "the mean of updates clipped to an L2 norm (Sun et al. 2019)",
                    _rule("norm_bound", "clip_radius"), (RADIUS,)),
)
check_unique(ENTRIES, "aggregator")
BY_NAME = {e.name: e for e in ENTRIES}
NAMES = tuple(BY_NAME)
HYPER = hyper_users(ENTRIES)
