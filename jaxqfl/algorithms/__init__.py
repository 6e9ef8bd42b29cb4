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
from jaxqfl.algorithms.ditto import ditto
from jaxqfl.algorithms.feddyn import feddyn
from jaxqfl.algorithms.fedopt import fedadagrad, fedadam, fedopt_adaptive, fedyogi
from jaxqfl.algorithms.fednova import fednova
from jaxqfl.algorithms.fedprox import fedprox
from jaxqfl.algorithms.fedrep import fedper, fedrep
from jaxqfl.algorithms.kmeans import KMeansUpdate, lloyd, minibatch_kmeans
from jaxqfl.algorithms.kmeans_seeding import kmeans_plus_plus, sample_rows
from jaxqfl.algorithms.mimelite import mimelite
from jaxqfl.algorithms.perfedavg import perfedavg
from jaxqfl.algorithms.qffl import qffl
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
    "ditto",
    "fedadagrad",
    "fedadam",
    "fedavg",
    "feddyn",
    "fednova",
    "fedopt_adaptive",
    "fedper",
    "fedprox",
    "fedrep",
    "fedsgd",
    "fedyogi",
    "KMeansUpdate",
    "kmeans_plus_plus",
    "lloyd",
    "mimelite",
    "minibatch_kmeans",
    "perfedavg",
    "qffl",
    "sample_rows",
    "scaffold",
    "server_optimizer",
]
