"""Client and server update rules (the FedAvg family)."""
from jaxqfl.algorithms.fedavg import (
    SERVER_OPTIMIZERS,
    WEIGHTINGS,
    Algorithm,
    ClientLocalState,
    fedavg,
    fedsgd,
    server_optimizer,
)

__all__ = [
    "Algorithm",
    "ClientLocalState",
    "SERVER_OPTIMIZERS",
    "WEIGHTINGS",
    "fedavg",
    "fedsgd",
    "server_optimizer",
]
