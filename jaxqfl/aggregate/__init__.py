"""Aggregators: how the cohort's client outputs become one aggregate (``jaxqfl.aggregate.base``)."""
from jaxqfl.aggregate import attacks
from jaxqfl.aggregate.base import (
    REDUCTIONS,
    Aggregator,
    CohortInfo,
    CohortStatistics,
    check_aggregator,
)
from jaxqfl.aggregate.central_dp import central_dp, central_gaussian, fixed_denominator_mean
from jaxqfl.aggregate.compose import clip_updates
from jaxqfl.aggregate.distributed_dp import distributed_skellam
from jaxqfl.aggregate.dp import dp_mean
from jaxqfl.aggregate.clipping import centered_clip, norm_bound
from jaxqfl.aggregate.coordinatewise import median, trimmed_mean
from jaxqfl.aggregate.geomed import geometric_median
from jaxqfl.aggregate.integer import integer_mean
from jaxqfl.aggregate.krum import bulyan, krum, multi_krum
from jaxqfl.aggregate.mean import gather_mean, mean
from jaxqfl.aggregate.secure import secure_sum
from jaxqfl.aggregate.sensitivity import Sensitivity
from jaxqfl.aggregate.named import aggregator_by_name, attacked
from jaxqfl.aggregate.threat import label_flip_transform, malicious_mask, with_attack
from jaxqfl.aggregate.tier_weighted import precision_factors, tier_weighted

__all__ = [
    "Aggregator",
    "CohortInfo",
    "CohortStatistics",
    "REDUCTIONS",
    "Sensitivity",
    "aggregator_by_name",
    "attacked",
    "attacks",
    "bulyan",
    "central_dp",
    "central_gaussian",
    "centered_clip",
    "check_aggregator",
    "clip_updates",
    "distributed_skellam",
    "dp_mean",
    "fixed_denominator_mean",
    "gather_mean",
    "geometric_median",
    "integer_mean",
    "krum",
    "label_flip_transform",
    "malicious_mask",
    "mean",
    "secure_sum",
    "median",
    "multi_krum",
    "norm_bound",
    "precision_factors",
    "tier_weighted",
    "trimmed_mean",
    "with_attack",
]
