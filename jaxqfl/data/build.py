"""``build``: a dataset name plus a partition name in, a :class:`Population` out.

The one entry point the command line uses. Datasets and partitions:

=============  ============================================================================
dataset        clients and test set
=============  ============================================================================
``synthetic``  Synthetic(synthetic_alpha, synthetic_beta) of Li et al. 2020, generated
               per client (:func:`jaxqfl.data.synthetic.synthetic`); the pooled
               held-out rows of all clients are the test set.
``mnist``      the training split of ``data_path`` (Keras ``mnist.npz``) divided by a
               partitioner; the official test split is the test set.
=============  ============================================================================

``partition=None`` means the dataset's own default: ``"natural"`` for synthetic
(client k holds the rows generated from client k's model), ``"iid"`` for mnist,
which has no natural partition.

Choice for synthetic with a partitioner (``"iid"``, ``"dirichlet"``, ``"shards"``,
``"quantity"``): the clients' training rows are pooled and the partitioner
re-divides them among ``num_clients`` clients. This keeps Synthetic's features
and labelling but replaces its client heterogeneity with the chosen one (e.g.
``"iid"`` is an IID control on the very same examples); the test set is
unchanged. Note this is *not* the paper's Synthetic-IID, which draws one shared
model (:func:`jaxqfl.data.synthetic.synthetic` with ``iid=True``).
"""
from __future__ import annotations

import numpy as np

from jaxqfl.data import partition as partitioners
from jaxqfl.data.mnist import NUM_CLASSES as MNIST_CLASSES
from jaxqfl.data.mnist import load_mnist
from jaxqfl.data.population import Population, from_client_indices
from jaxqfl.data.synthetic import synthetic

__all__ = ["build", "DATASETS", "PARTITIONS"]

DATASETS = ("synthetic", "mnist")
#: Partitioners by name; "natural" (the dataset's own clients) exists for synthetic only.
PARTITIONS = ("natural", "iid", "dirichlet", "shards", "quantity")
_DEFAULT_PARTITION = {"synthetic": "natural", "mnist": "iid"}


def build(
    dataset: str,
    *,
    num_clients: int,
    partition: str | None = None,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    sigma: float = 1.0,
    data_path=None,
    seed: int = 0,
    synthetic_alpha: float = 1.0,
    synthetic_beta: float = 1.0,
) -> Population:
    """Build the federated population ``dataset`` split over ``num_clients`` clients.

    Args:
        dataset: one of ``"synthetic"``, ``"mnist"``.
        num_clients: number of clients, ``>= 1``.
        partition: ``None`` (the dataset's default, see module docstring),
            ``"natural"`` (synthetic only), ``"iid"``, ``"dirichlet"``,
            ``"shards"`` or ``"quantity"``.
        alpha: Dirichlet concentration of ``partition="dirichlet"``.
        shards_per_client: shards per client of ``partition="shards"``.
        sigma: log-normal size spread of ``partition="quantity"``.
        data_path: path of ``mnist.npz`` (the CLI's ``--data-path``); mnist only.
        seed: seeds the data generation and the partition (independently).
        synthetic_alpha, synthetic_beta: alpha and beta of Synthetic(alpha, beta).

    Raises:
        ValueError: unknown dataset or partition, a partition the dataset does
            not have, mnist without ``data_path``, or bad hyper-parameters.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; allowed datasets are {', '.join(DATASETS)}")
    if partition is None:
        partition = _DEFAULT_PARTITION[dataset]
    if partition not in PARTITIONS:
        raise ValueError(f"unknown partition {partition!r}; allowed partitions are {', '.join(PARTITIONS)}")
    # Independent streams for generating the data and for partitioning it.
    data_seed, partition_seed = np.random.SeedSequence(seed).spawn(2)

    if dataset == "synthetic":
        pop = synthetic(synthetic_alpha, synthetic_beta, num_clients, data_seed)
        if partition == "natural":
            return pop
        x, y, x_test, y_test, num_classes = pop.x, pop.y, pop.x_test, pop.y_test, pop.num_classes
        base_name = pop.name
    else:  # mnist
        if partition == "natural":
            raise ValueError(
                "mnist has no natural partition; allowed partitions for mnist are "
                f"{', '.join(p for p in PARTITIONS if p != 'natural')}"
            )
        if data_path is None:
            raise ValueError("dataset 'mnist' needs the path of mnist.npz: pass --data-path (data_path=...)")
        x, y, x_test, y_test = load_mnist(data_path)
        num_classes, base_name = MNIST_CLASSES, "mnist"

    split, label = partitioners.by_name(partition, alpha, shards_per_client, sigma, num_classes)
    client_indices = split(y, num_clients, partition_seed)
    return from_client_indices(x, y, client_indices, x_test, y_test, num_classes, name=f"{base_name}/{label}")
