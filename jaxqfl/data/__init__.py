"""Federated datasets on the host: the CSR population, partitioners, generators and loaders.

    Population, from_client_indices   the layout: flat rows + per-client offsets/counts
    from_arrays                       the user's arrays -> Population (natural clients or a partitioner)
    load_npz, load_leaf               the user's .npz file, a LEAF JSON folder
    partition.iid / dirichlet / shards / quantity
                                      labels -> per-client row indices
    synthetic, synthetic_parameters   Synthetic(alpha, beta) of Li et al. 2020 (FedProx), streamed in float32
    synthetic_regression              the same clients with linear-model regression targets
    gaussian_mixture                  K Gaussian components, each client drawing from a few (clustering)
    load_mnist                        MNIST from a local Keras mnist.npz
    load_cifar10                      CIFAR-10 from a local cifar-10-batches-py folder
    text.load_text                    a folder of text files as next-byte windows (next-token task)
    build                             dataset + partition names -> Population (the CLI's entry)
    procedural (import it: uses JAX)  ProceduralPopulation: rows generated from (seed, client id) inside
                                      the round, for the cohort only (procedural_synthetic, from_function)
"""
from jaxqfl.data import partition
from jaxqfl.data.arrays import from_arrays
from jaxqfl.data import text
from jaxqfl.data.build import DATASETS, PARTITIONS, build
from jaxqfl.data.client_test import split_test_by_labels
from jaxqfl.data.files import load_leaf, load_npz
from jaxqfl.data.mixture import MixtureParameters, gaussian_mixture, mixture_parameters
from jaxqfl.data.cifar10 import load_cifar10
from jaxqfl.data.mnist import load_mnist
from jaxqfl.data.population import TASKS, Population, from_client_indices
from jaxqfl.data.synthetic import SyntheticParameters, synthetic, synthetic_parameters, synthetic_regression

__all__ = [
    "split_test_by_labels",
    "DATASETS",
    "MixtureParameters",
    "PARTITIONS",
    "Population",
    "SyntheticParameters",
    "TASKS",
    "build",
    "from_arrays",
    "from_client_indices",
    "gaussian_mixture",
    "load_cifar10",
    "load_leaf",
    "load_mnist",
    "load_npz",
    "mixture_parameters",
    "partition",
    "synthetic",
    "synthetic_parameters",
    "synthetic_regression",
    "text",
]


def __getattr__(name):
    """``data.procedural`` on first use: the module imports JAX, which the rest of ``jaxqfl.data`` does not."""
    if name == "procedural":
        import importlib

        return importlib.import_module("jaxqfl.data.procedural")
    raise AttributeError(f"module 'jaxqfl.data' has no attribute {name!r}")
