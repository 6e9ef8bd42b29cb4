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
from jaxqfl.algorithms.feddyn import feddyn
from jaxqfl.algorithms.fedopt import fedadagrad, fedadam, fedopt_adaptive, fedyogi
from jaxqfl.algorithms.fednova import fednova
from jaxqfl.algorithms.fedprox import fedprox
from jaxqfl.algorithms.kmeans import KMeansUpdate, lloyd, minibatch_kmeans
from jaxqfl.algorithms.kmeans_seeding import kmeans_plus_plus, sample_rows
from jaxqfl.algorithms.mimelite import mimelite
from jaxqfl.algorithms.scaffold import scaffold

__all__ = [
    "Algorithm",
    "ClientInfo",
    "ClientLocalState",
    "ClientOutput",
    "SERVER_OPTIMIZERS",
    "ServerInfo",
    "ServerMessage",
    "WEIGHTINGS",
    "fedadagrad",
    "fedadam",
    "fedavg",
    "feddyn",
    "fednova",
    "fedopt_adaptive",
    "fedprox",
    "fedsgd",
    "fedyogi",
    "KMeansUpdate",
    "kmeans_plus_plus",
    "lloyd",
    "mimelite",
    "minibatch_kmeans",
    "sample_rows",
    "scaffold",
    "server_optimizer",
]
