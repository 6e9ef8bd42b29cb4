"""Federated datasets on the host: the CSR population, partitioners and loaders.

    Population, from_client_indices   the layout: flat rows + per-client offsets/counts
    partition.iid / dirichlet / shards / quantity
                                      labels -> per-client row indices
    synthetic, synthetic_parameters   Synthetic(alpha, beta) of Li et al. 2020 (FedProx)
    load_mnist                        MNIST from a local Keras mnist.npz
    build                             dataset + partition names -> Population (the CLI's entry)
"""
from jaxqfl.data import partition
from jaxqfl.data.build import DATASETS, PARTITIONS, build
from jaxqfl.data.mnist import load_mnist
from jaxqfl.data.population import Population, from_client_indices
from jaxqfl.data.synthetic import SyntheticParameters, synthetic, synthetic_parameters

__all__ = [
    "DATASETS",
    "PARTITIONS",
    "Population",
    "SyntheticParameters",
    "build",
    "from_client_indices",
    "load_mnist",
    "partition",
    "synthetic",
    "synthetic_parameters",
]
