"""FL algorithms on the round protocol (``jaxqfl.algorithms.base``)."""
from jaxqfl.algorithms.base import (
    WEIGHTINGS,
    Algorithm,
    ClientInfo,
    ClientOutput,
    ServerInfo,
    ServerMessage,
)
from jaxqfl.algorithms.fedavg import (
    SERVER_OPTIMIZERS,
    ClientLocalState,
    fedavg,
    fedsgd,
    server_optimizer,
)

__all__ = [
    "Algorithm",
    "ClientInfo",
    "ClientLocalState",
    "ClientOutput",
    "SERVER_OPTIMIZERS",
    "ServerInfo",
    "ServerMessage",
    "WEIGHTINGS",
    "fedavg",
    "fedsgd",
    "server_optimizer",
]
