"""Aggregators: how the cohort's client outputs become one aggregate (``jaxqfl.aggregate.base``)."""
from jaxqfl.aggregate.base import (
    REDUCTIONS,
    Aggregator,
    CohortInfo,
    CohortStatistics,
    check_aggregator,
)
from jaxqfl.aggregate.dp import dp_mean
from jaxqfl.aggregate.integer import integer_mean
from jaxqfl.aggregate.mean import gather_mean, mean
from jaxqfl.aggregate.secure import secure_sum

__all__ = [
    "Aggregator",
    "CohortInfo",
    "CohortStatistics",
    "REDUCTIONS",
    "check_aggregator",
    "dp_mean",
    "gather_mean",
    "integer_mean",
    "mean",
    "secure_sum",
]
