"""The data settings of an experiment. Where the clients' data comes from and how it is split among them.

Each field is one setting (``jaxqfl.experiment.setting``): its annotation the type, its default the
default, its doc the help of the ``jaxqfl run`` flag generated from it.
"""
from __future__ import annotations

from dataclasses import dataclass

from jaxqfl.choices import KMEANS, POPULATIONS
from jaxqfl.data.build import DATASETS, PARTITIONS
from jaxqfl.registry import datasets as dataset_registry
from jaxqfl.data.population import TASKS
from jaxqfl import value_kinds as v
from jaxqfl.experiment.setting import Section, setting


_DATASET_DOC = ("where the clients' data comes from: "
                + "; ".join(f"{e.name}, {e.doc}" for e in dataset_registry.ENTRIES) + "; default synthetic")


@dataclass(frozen=True)
class Data(Section):
    """Data."""

    section_name = "data"

    dataset: str = setting('synthetic', choices=DATASETS, help=_DATASET_DOC)
    data_path: str | None = setting(None,
                help='mnist: mnist.npz (Keras layout); npz: a file with keys x, y and optional client_id, x_test, '
                     'y_test; leaf: a folder with train/*.json and test/*.json; cifar10: the folder cifar-10-batches-'
                     'py (or one holding it); text: a folder of *.txt files; packed: a folder written by `jaxqfl data'
                     ' pack` (its rows are read by cohort from disk: implies --stream)')
    task: str | None = setting(None, choices=TASKS,
                help="what is learnt (default: the dataset's: classification for synthetic, mnist and cifar10, "
                     'regression for synthetic-regression, clustering for gaussian-mixture, next-token for text, '
                     'inferred from the targets for npz and leaf; leaf text rows need next-token)')
    partition: str | None = setting(None, choices=PARTITIONS,
                help='how examples are split over clients (default: natural for generated data, leaf and npz with '
                     'client_id; iid otherwise); a partitioner given for natural data re-splits its pooled training '
                     'rows')
    alpha: float = setting(0.5, v.positive_float, help='Dirichlet concentration (--partition dirichlet)')
    shards_per_client: int = setting(2, v.positive_int, help='label shards per client (--partition shards)')
    sigma: float = setting(1.0, float, help='log-normal size spread (--partition quantity)')
    num_clients: int | None = setting(None, v.positive_int,
                help="clients in the population (default: the dataset's, or a file's natural clients)")


@dataclass(frozen=True)
class GeneratedData(Section):
    """Generated data (synthetic, synthetic-regression, gaussian-mixture)."""

    section_name = "generated"

    synthetic_alpha: float = setting(1.0, v.nonneg_float, help='model heterogeneity alpha (1)')
    synthetic_beta: float = setting(1.0, v.nonneg_float, help='feature heterogeneity beta (1)')
    num_features: int | None = setting(None, v.positive_int, help='features (60; mixture 10)')
    client_size_mean: float = setting(4.0, v.finite_float,
                help='n_k = floor(LogNormal(mean, sigma)) + min, capped at max (4)')
    client_size_sigma: float = setting(2.0, v.nonneg_float, help='(2)')
    min_client_size: int = setting(50, v.positive_int, help='(50)')
    max_client_size: int | None = setting(None, v.positive_int, help='(no cap)')
    num_outputs: int = setting(1, v.positive_int, help='synthetic-regression target dimension (1)')
    noise: float = setting(0.5, v.nonneg_float, help='synthetic-regression target noise std (0.5)')
    components: int = setting(10, v.positive_int, help='gaussian-mixture components K (10)')
    concentration: float = setting(0.3, v.positive_float,
                help="gaussian-mixture: Dirichlet concentration of each client's component weights; small = few "
                     'components per client (0.3)')
    separation: float = setting(4.0, v.nonneg_float,
                help='gaussian-mixture: std of the component means, in units of the within-component std (4)')


@dataclass(frozen=True)
class Procedural(Section):
    """Procedural populations."""

    section_name = "procedural"

    population: str = setting('memory', choices=POPULATIONS,
                help="memory: every row built on the host (default); procedural: each client's rows generated from "
                     '(data seed, client id) inside the round, for the cohort only (synthetic)')
    test_clients: int = setting(100, v.positive_int,
                help='--population procedural: the held-out clients whose rows are the test set (100)')


@dataclass(frozen=True)
class Zoo(Section):
    """Zoo models (resnet20, lstm, transformer) and text windows."""

    section_name = "zoo"

    context: int = setting(80, v.positive_int,
                help='--dataset text: bytes per window (inputs and next-byte targets), 80 as LEAF Shakespeare')
    entries_per_client: int | None = setting(None, v.positive_int, metavar='K',
                help='--dataset text: split each file on lines holding only %% (fortune format) and make a client of '
                     'every K consecutive entries (default: one client per file)')
    resnet_groups: int = setting(2, v.positive_int, help='resnet20: GroupNorm groups per layer, a divisor of 16 (2)')
    embed_dim: int = setting(8, v.positive_int, help='lstm: byte embedding width (8, as McMahan et al.)')
    lstm_hidden: int = setting(256, v.positive_int, help='lstm: units per layer (256)')
    lstm_layers: int = setting(2, v.positive_int, help='lstm: LSTM layers (2)')
    transformer_width: int = setting(64, v.positive_int, help='transformer: model width (64)')
    transformer_depth: int = setting(2, v.positive_int, help='transformer: blocks (2)')
    transformer_heads: int = setting(4, v.positive_int, help='transformer: attention heads, dividing the width (4)')


@dataclass(frozen=True)
class Clustering(Section):
    """Clustering (--task clustering, the default of gaussian-mixture)."""

    section_name = "clustering"

    clusters: int | None = setting(None, v.positive_int,
                help='K centroids (default: the number of labels of the data, e.g. --components)')
    kmeans: str = setting('lloyd', choices=KMEANS,
                help='lloyd: each round one full-batch Lloyd step per client, the server divides sums by counts; '
                     "minibatch: Sculley's mini-batch k-means over --local-steps of --batch-size rows")
    seed_points: int | None = setting(None, v.positive_int,
                help='rows each client of the seeding round uploads for k-means++ (default: about 50 K in all)')
