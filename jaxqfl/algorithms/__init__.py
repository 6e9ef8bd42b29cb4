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
from jaxqfl.algorithms.kmeans import KMeansUpdate, lloyd, minibatch_kmeans
from jaxqfl.algorithms.kmeans_seeding import kmeans_plus_plus, sample_rows

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
    "KMeansUpdate",
    "kmeans_plus_plus",
    "lloyd",
    "minibatch_kmeans",
    "sample_rows",
    "server_optimizer",
]
