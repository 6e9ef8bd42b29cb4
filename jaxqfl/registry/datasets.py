"""The built-in datasets (``--dataset``): one entry each (see ``jaxqfl.registry``).

An entry holds what a run needs to know about a dataset before reading it: its one-line doc, the task it
serves when ``--task`` is left automatic (None: inferred from the file's targets), whether it is generated
(no ``--data-path``) or read from a file or a folder (``reads``, with what ``--data-path`` must name), whether
it has natural clients (``--partition natural``), and :class:`RunDefaults`: the values of the flags left
unset for it (``jaxqfl run --print-config --dataset NAME`` shows them resolved). ``jaxqfl.data.build``
builds the population (its ``DATASETS``, ``FILE_DATASETS`` and ``DEFAULT_TASK`` derive from these entries);
``jaxqfl.experiment.data_rules`` and ``runner`` read the entries instead of a table of their own.

Importing this registry starts no JAX (nor NumPy).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

from jaxqfl.registry import check_unique


class RunDefaults(NamedTuple):
    """The run flags a dataset fills when they are left unset (``--local-steps`` or ``--local-epochs``: one
    of the two is None). ``num_clients`` None: the file's own clients (or 100 for a partitioner)."""

    model: str
    num_clients: Optional[int]
    cohort_size: int
    rounds: int
    client_lr: float
    batch_size: int
    eval_every: int
    local_steps: Optional[int] = None
    local_epochs: Optional[int] = None


class DatasetEntry(NamedTuple):
    name: str
    doc: str
    defaults: RunDefaults
    task: Optional[str]  # the default --task (None: inferred from the targets)
    reads: Optional[str] = None  # "file" / "folder": what --data-path names (None: generated data)
    path_doc: str = ""  # the --data-path it needs, as a refusal names it
    layout: str = ""  # the file it reads ("is a folder" refusal) or the folder's layout ("no such folder")
    natural: bool = True  # has clients of its own (--partition natural)
    hyper: tuple = ()  # none: a dataset's own flags are plain settings (jaxqfl.experiment.data_settings)

    @property
    def generated(self) -> bool:
        """Drawn from a seed, not read from ``--data-path``."""
        return self.reads is None


# the defaults of the file datasets read by local epochs (mnist, npz, leaf, cifar10, packed)
_FILES = dict(cohort_size=10, rounds=50, client_lr=0.05, local_epochs=1, batch_size=32, eval_every=5)

ENTRIES = (
    DatasetEntry("synthetic", "Synthetic(alpha, beta) of Li et al. 2020 (FedProx), generated",
                 RunDefaults("logreg", 1000, 100, 300, 0.01, 10, 20, local_steps=20), "classification"),
    DatasetEntry("synthetic-regression", "synthetic's clients and features with linear-model targets, generated",
                 RunDefaults("linear", 1000, 100, 100, 0.001, 10, 10, local_steps=20), "regression"),
    DatasetEntry("gaussian-mixture", "K Gaussian components, each client drawing from a few, generated",
                 RunDefaults("logreg", 1000, 100, 100, 0.01, 10, 10, local_steps=20), "clustering"),
    DatasetEntry("mnist", "MNIST (the Keras mnist.npz) divided by a partitioner",
                 RunDefaults("mlp", num_clients=100, **_FILES), "classification", "file",
                 "PATH/mnist.npz (the Keras mnist.npz layout)", "the Keras mnist.npz", natural=False),
    # npz / leaf / packed: num_clients None = the file's natural clients (or 100 for a partitioner)
    DatasetEntry("npz", "your .npz (x, y, optional client_id, x_test, y_test)",
                 RunDefaults("mlp", num_clients=None, **_FILES), None, "file", "FILE.npz (keys x, y, ...)",
                 "a .npz holding x, y, ..."),
    DatasetEntry("leaf", "a LEAF folder (train/*.json, test/*.json), natural clients",
                 RunDefaults("mlp", num_clients=None, **_FILES), None, "folder",
                 "DIR (holding train/*.json and test/*.json)", "LEAF data is a folder with train/ and test/"),
    DatasetEntry("cifar10", "CIFAR-10 (the cifar-10-batches-py folder) divided by a partitioner",
                 RunDefaults("resnet20", num_clients=100, **_FILES), "classification", "folder",
                 "DIR (the cifar-10-batches-py folder: data_batch_1..5, test_batch)",
                 "CIFAR-10 is the folder cifar-10-batches-py", natural=False),
    # text: num_clients None = one client per file (or per --entries-per-client group); client lr 1.47 as
    # McMahan et al. 2017's Shakespeare LSTM (0.5 stayed at the unigram plateau for 10 rounds on fortunes)
    DatasetEntry("text", "a folder of *.txt files as byte windows, one client per file",
                 RunDefaults("lstm", None, 10, 50, 1.47, 16, 5, local_steps=20), "next-token", "folder",
                 "DIR (a folder of *.txt files)", "a folder of *.txt files"),
    DatasetEntry("packed", "a folder written by `jaxqfl data pack`, read by cohort from disk",
                 RunDefaults("mlp", num_clients=None, **_FILES), None, "folder",
                 "DIR (a folder written by `jaxqfl data pack SRC DIR`)", "write one with `jaxqfl data pack SRC DIR`"),
)
check_unique(ENTRIES, "dataset")
BY_NAME = {e.name: e for e in ENTRIES}
NAMES = tuple(BY_NAME)
