"""``build``: a dataset name plus a partition name in, a :class:`Population` out.

The one entry point the command line uses. Datasets and partitions:

========================  ====================================================================
dataset                   clients and test set (task)
========================  ====================================================================
``synthetic``             Synthetic(synthetic_alpha, synthetic_beta) of Li et al. 2020
                          (:func:`jaxqfl.data.synthetic.synthetic`); the pooled held-out rows
                          of all clients are the test set (classification).
``synthetic-regression``  the same clients and features with linear-model targets
                          (:func:`jaxqfl.data.synthetic.synthetic_regression`) (regression).
``gaussian-mixture``      K Gaussian components, each client drawing from a few
                          (:func:`jaxqfl.data.mixture.gaussian_mixture`) (clustering;
                          labels are the component ids).
``mnist``                 the training split of ``data_path`` (Keras ``mnist.npz``) divided by
                          a partitioner; the official test split is the test set.
``npz``                   the user's ``.npz`` at ``data_path`` (keys ``x``, ``y``, optional
                          ``client_id``, ``x_test``, ``y_test``; :func:`jaxqfl.data.files.load_npz`).
``leaf``                  a LEAF folder at ``data_path`` (``train/*.json``, ``test/*.json``;
                          :func:`jaxqfl.data.files.load_leaf`), natural clients; with
                          ``task="next-token"`` its string rows (Shakespeare) as byte windows.
``cifar10``               the ``cifar-10-batches-py`` folder at ``data_path``
                          (:func:`jaxqfl.data.cifar10.load_cifar10`) divided by a partitioner;
                          ``test_batch`` is the test set (classification).
``text``                  the ``*.txt`` files of the folder ``data_path`` as byte windows of
                          ``context`` (:func:`jaxqfl.data.text.load_text`): one client per file,
                          or ``entries_per_client`` fortune entries per client (next-token).
``packed``                the packed folder at ``data_path`` (``jaxqfl data pack``;
                          :func:`jaxqfl.data.packed.read_packed`): its clients and test set as
                          written, the rows memory-mapped (read by cohort when streamed).
========================  ====================================================================

``partition=None`` means the dataset's own default: ``"natural"`` for the
generated datasets, for leaf, text, and npz files with ``client_id``; ``"iid"``
for mnist, cifar10 and npz files without ``client_id``. Next-token data (text,
LEAF strings) takes ``natural``, ``iid`` or ``quantity`` (its windows have no class label).

Choice for a dataset with natural clients and a partitioner (``"iid"``,
``"dirichlet"``, ``"shards"``, ``"quantity"``): the clients' training rows are
pooled and the partitioner re-divides them among ``num_clients`` clients. This
keeps the features and labelling but replaces the client heterogeneity with the
chosen one (e.g. ``"iid"`` is an IID control on the very same examples); the
test set is unchanged. Note this is *not* the paper's Synthetic-IID, which draws
one shared model (:func:`jaxqfl.data.synthetic.synthetic` with ``iid=True``).

``task`` (None: the dataset's own) may relabel integer-labelled data between
``"classification"`` and ``"clustering"``; regression needs real targets.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxqfl.data import partition as partitioners
from jaxqfl.data.files import load_leaf, load_npz
from jaxqfl.data.mixture import gaussian_mixture
from jaxqfl.data.mnist import NUM_CLASSES as MNIST_CLASSES
from jaxqfl.data.mnist import load_mnist
from jaxqfl.data.population import TASKS, Population, from_client_indices
from jaxqfl.data.synthetic import synthetic, synthetic_regression
from jaxqfl.registry import datasets as _registry

__all__ = ["build", "DATASETS", "PARTITIONS", "DEFAULT_TASK", "FILE_DATASETS"]

#: The datasets, one per entry of ``jaxqfl.registry.datasets`` (doc, default task, run defaults).
DATASETS = _registry.NAMES
#: Datasets read from ``data_path``.
FILE_DATASETS = tuple(e.name for e in _registry.ENTRIES if e.reads is not None)
#: Partitioners by name; "natural" is the dataset's own clients (not mnist's).
PARTITIONS = ("natural", "iid", "dirichlet", "shards", "quantity")
#: The task of each dataset when none is asked for (npz, leaf and packed: inferred from the targets).
DEFAULT_TASK = {e.name: e.task for e in _registry.ENTRIES}
_GENERATED = tuple(e.name for e in _registry.ENTRIES if e.generated)


def build(
    dataset: str,
    *,
    num_clients: int | None,
    partition: str | None = None,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    sigma: float = 1.0,
    data_path=None,
    seed: int = 0,
    synthetic_alpha: float = 1.0,
    synthetic_beta: float = 1.0,
    task: str | None = None,
    size_mean: float = 4.0,
    size_sigma: float = 2.0,
    min_size: int = 50,
    max_size: int | None = None,
    num_outputs: int = 1,
    noise: float = 0.5,
    components: int = 10,
    concentration: float = 0.3,
    separation: float = 4.0,
    num_features: int | None = None,
    context: int = 80,
    entries_per_client: int | None = None,
) -> Population:
    """Build the federated population ``dataset`` split over ``num_clients`` clients.

    Args:
        dataset: one of :data:`DATASETS`.
        num_clients: number of clients, ``>= 1``; for npz and leaf with natural
            clients, None (the file's) or the file's number.
        partition: ``None`` (the dataset's default, see module docstring),
            ``"natural"``, ``"iid"``, ``"dirichlet"``, ``"shards"`` or ``"quantity"``.
        alpha: Dirichlet concentration of ``partition="dirichlet"``.
        shards_per_client: shards per client of ``partition="shards"``.
        sigma: log-normal size spread of ``partition="quantity"``.
        data_path: the file or folder of mnist, npz and leaf (the CLI's ``--data-path``).
        seed: seeds the data generation and the partition (independently).
        synthetic_alpha, synthetic_beta: alpha and beta of Synthetic(alpha, beta)
            (also of synthetic-regression).
        task: None (the dataset's) or one of ``classification, regression, clustering``.
        size_mean, size_sigma, min_size, max_size: client sizes of the generated
            datasets, ``n_k = min(floor(LogNormal(size_mean, size_sigma)) + min_size, max_size)``.
        num_outputs, noise: synthetic-regression's target dimension and noise std.
        components, concentration, separation: gaussian-mixture's K, Dirichlet
            concentration of the clients' weights, and the spread of the means.
        num_features: features of the generated datasets (None: 60 for the
            synthetic ones, 10 for the mixture).
        context: the window length of text (tokens per example).
        entries_per_client: text: None (one client per file) or fortune entries per client.

    Raises:
        ValueError: unknown dataset or partition, a partition the dataset does
            not have, a file dataset without ``data_path``, a task the data
            cannot serve, or bad hyper-parameters.
        FileNotFoundError: nothing at ``data_path``.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; allowed datasets are {', '.join(DATASETS)}")
    if partition is not None and partition not in PARTITIONS:
        raise ValueError(f"unknown partition {partition!r}; allowed partitions are {', '.join(PARTITIONS)}")
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; allowed tasks are {', '.join(TASKS)}")
    if dataset in FILE_DATASETS and data_path is None:
        raise ValueError(f"dataset {dataset!r} reads a file: pass --data-path (data_path=...)")
    data_seed, partition_seed = data_and_partition_seeds(seed)

    if dataset == "text":
        if task not in (None, "next-token"):
            raise ValueError(f"dataset 'text' is for next-token prediction; task {task!r} does not apply")
        from jaxqfl.data.text import load_text

        return load_text(data_path, context, entries_per_client=entries_per_client, partition=partition,
                         num_clients=num_clients, sigma=sigma, seed=seed)
    if dataset == "packed":
        from jaxqfl.data.packed import read_packed

        if partition not in (None, "natural"):
            raise ValueError(f"a packed population keeps the clients it was packed with; partition {partition!r} "
                             f"would re-split (and so read) every row: pack the data again divided as wanted")
        pop = read_packed(data_path)
        if num_clients is not None and num_clients != pop.num_clients:
            raise ValueError(f"num_clients={num_clients}, but the packed population {data_path!r} has "
                             f"{pop.num_clients} clients (leave it unset)")
        return _with_task(pop, task, dataset)
    if task == "next-token" and dataset != "leaf":
        raise ValueError(f"task 'next-token' needs text: dataset text or leaf (string rows), not {dataset!r}")

    if dataset in ("npz", "leaf"):
        loader = load_npz if dataset == "npz" else load_leaf
        return loader(data_path, task=task, partition=partition, num_clients=num_clients, seed=seed,
                      alpha=alpha, shards_per_client=shards_per_client, sigma=sigma)

    sizes = dict(size_mean=size_mean, size_sigma=size_sigma, min_size=min_size, max_size=max_size)
    if dataset in _GENERATED:
        if partition is None:
            partition = "natural"
        generated_clients = num_clients
        if dataset == "synthetic":
            pop = synthetic(synthetic_alpha, synthetic_beta, generated_clients, data_seed,
                            num_features=num_features or 60, **sizes)
        elif dataset == "synthetic-regression":
            pop = synthetic_regression(synthetic_alpha, synthetic_beta, generated_clients, data_seed,
                                       num_features=num_features or 60, num_outputs=num_outputs, noise=noise, **sizes)
        else:
            pop = gaussian_mixture(components, generated_clients, data_seed, num_features=num_features or 10,
                                   concentration=concentration, separation=separation, **sizes)
        pop = _with_task(pop, task, dataset)
        if partition == "natural":
            return pop
        x, y, x_test, y_test, num_classes = pop.x, pop.y, pop.x_test, pop.y_test, pop.num_classes
        base_name, task = pop.name, pop.task
    else:  # mnist, cifar10: labelled images without natural clients
        if partition == "natural":
            raise ValueError(
                f"{dataset} has no natural partition; allowed partitions for {dataset} are "
                f"{', '.join(p for p in PARTITIONS if p != 'natural')}"
            )
        if task == "regression":
            raise ValueError(f"{dataset} holds class labels: task 'regression' needs real targets")
        partition = partition or "iid"
        if dataset == "mnist":
            x, y, x_test, y_test = load_mnist(data_path)
            num_classes = MNIST_CLASSES
        else:
            from jaxqfl.data.cifar10 import NUM_CLASSES as CIFAR_CLASSES
            from jaxqfl.data.cifar10 import load_cifar10

            x, y, x_test, y_test = load_cifar10(data_path)
            num_classes = CIFAR_CLASSES
        base_name, task = dataset, task or "classification"

    if task == "regression" and partition in ("dirichlet", "shards"):
        raise ValueError(f"partition {partition!r} splits by class label; regression targets have none: "
                         "use iid or quantity")
    split, label = partitioners.by_name(partition, alpha, shards_per_client, sigma, num_classes or None)
    client_indices = split(y if task != "regression" else np.zeros(len(y), np.int32), num_clients, partition_seed)
    return from_client_indices(x, y, client_indices, x_test, y_test, num_classes, name=f"{base_name}/{label}",
                               task=task)


def data_and_partition_seeds(seed: int) -> tuple[np.random.SeedSequence, np.random.SeedSequence]:
    """Independent streams for generating the data and for partitioning it (the two children of ``seed``)."""
    data_seed, partition_seed = np.random.SeedSequence(seed).spawn(2)
    return data_seed, partition_seed


def _with_task(pop: Population, task: str | None, dataset: str) -> Population:
    """``pop`` relabelled for ``task`` (classification <-> clustering), or refused."""
    if task is None or task == pop.task:
        return pop
    if "regression" in (task, pop.task):
        raise ValueError(f"dataset {dataset!r} is for {pop.task}; task {task!r} needs "
                         f"{'real targets' if task == 'regression' else 'integer labels'}")
    return dataclasses.replace(pop, task=task)
