"""Privacy accounting (``dp-accounting``) for the DP aggregators of ``jaxqfl.aggregate``."""
from jaxqfl.privacy.accounting import (
    SAMPLINGS,
    accountant_name,
    describe,
    effective_noise_multiplier,
    epsilon,
    make_accountant,
    max_target_epsilon,
    noise_for_epsilon,
    round_event,
    run_event,
)
from jaxqfl.privacy.distributed import (
    distributed_epsilon,
    distributed_noise_for_epsilon,
    skellam_noise_multiplier,
)
from jaxqfl.privacy.planning import DistributedDpPlan, plan_distributed_skellam

__all__ = [
    "DistributedDpPlan",
    "SAMPLINGS",
    "accountant_name",
    "describe",
    "distributed_epsilon",
    "distributed_noise_for_epsilon",
    "effective_noise_multiplier",
    "epsilon",
    "make_accountant",
    "max_target_epsilon",
    "noise_for_epsilon",
    "plan_distributed_skellam",
    "round_event",
    "run_event",
    "skellam_noise_multiplier",
]
