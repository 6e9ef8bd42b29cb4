"""Privacy accounting (``dp-accounting``) for the DP aggregators of ``jaxqfl.aggregate``."""
from jaxqfl.privacy.accounting import (
    SAMPLINGS,
    accountant_name,
    describe,
    effective_noise_multiplier,
    epsilon,
    make_accountant,
    noise_for_epsilon,
    round_event,
    run_event,
)

__all__ = [
    "SAMPLINGS",
    "accountant_name",
    "describe",
    "effective_noise_multiplier",
    "epsilon",
    "make_accountant",
    "noise_for_epsilon",
    "round_event",
    "run_event",
]
