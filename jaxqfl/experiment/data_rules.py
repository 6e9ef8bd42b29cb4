"""The data flags of ``jaxqfl run``: datasets, the user's files, the task, generated client sizes.

Every dataset is an entry of ``jaxqfl.registry.datasets`` (what ``--data-path`` it reads, its default task,
whether it has natural clients, the run defaults it fills); the checks read the entries.

Checked before JAX starts (``validate``); the population is built by
``build_population``, which turns a loader's refusal (a malformed file) into a
message and exit status 2, never a traceback.
"""
from __future__ import annotations

from jaxqfl.experiment.resolved import Refuser, Settings
from jaxqfl.value_kinds import ExperimentError

import math
import os

from jaxqfl.experiment import population_rules
from jaxqfl.data.build import PARTITIONS  # NumPy only: JAX is not started yet
from jaxqfl.registry import datasets as registry


def fill_packed_task(refuser: Refuser, args: Settings) -> None:
    """``--dataset packed``: a layout packed for next-token data (its ``meta.json``, read before any row) sets
    ``--task next-token``, so the model rules see text as such; a ``--task`` the layout cannot take is refused by
    name. Other tasks stay automatic (resolved from the rows, as for ``npz``); a folder that is not a readable layout
    is refused, naming the file, when its data is read."""
    if args.dataset != "packed" or args.data_path is None or not os.path.isdir(args.data_path):
        return  # validate_data refuses a missing or wrong --data-path
    from jaxqfl.data.packed import packed_task

    try:
        packed = packed_task(args.data_path)
    except ValueError:
        return
    labels = ("classification", "clustering")  # integer labels serve both
    if args.task is not None and args.task != packed and not (args.task in labels and packed in labels):
        refuser.error(f"--task {args.task} does not fit --data-path {args.data_path!r}, packed for {packed} "
                      f"(drop --task, or pack the source again with `jaxqfl data pack ... --task {args.task}`)")
    if args.task is None and packed == "next-token":
        args.task = packed


def validate_data(refuser: Refuser, args: Settings) -> None:
    """Refuse inconsistent data flags; fill the dataset's task."""
    entry = registry.BY_NAME[args.dataset]
    kind = entry.reads
    if kind is not None:
        if args.data_path is None:
            refuser.error(f"--dataset {args.dataset} needs --data-path {entry.path_doc}")
        if kind == "file" and os.path.isdir(args.data_path):
            refuser.error(f"--data-path {args.data_path!r} is a folder; --dataset {args.dataset} reads one file "
                           f"({entry.layout})")
        if kind == "file" and not os.path.isfile(args.data_path):
            refuser.error(f"--data-path {args.data_path!r}: {_not_a_file(args.data_path)}")
        if kind == "folder" and os.path.isfile(args.data_path):
            refuser.error(f"--data-path {args.data_path!r} is a file; --dataset {args.dataset} reads a folder")
        if kind == "folder" and not os.path.isdir(args.data_path):
            refuser.error(f"--data-path {args.data_path!r}: no such folder ({entry.layout})")
    elif args.data_path is not None:
        readers = [e.name for e in registry.ENTRIES if e.reads is not None]
        refuser.error(f"--data-path applies to --dataset {', '.join(readers[:-1])} or {readers[-1]}; "
                       f"{args.dataset} data is generated")
    if args.dataset == "packed" and args.partition not in (None, "natural"):
        refuser.error(f"--partition {args.partition}: --dataset packed keeps the clients it was packed with (a "
                       f"re-split would read every row); pack the data again divided as wanted")
    if args.partition == "natural" and not entry.natural:
        refuser.error(f"--partition natural does not exist for {args.dataset}; choose one of "
                       f"{[p for p in PARTITIONS if p != 'natural']}")
    if not (args.sigma >= 0 and math.isfinite(args.sigma)):
        refuser.error(f"--sigma must be a finite number >= 0, got {args.sigma}")
    if args.max_client_size is not None and args.max_client_size < args.min_client_size:
        refuser.error(f"--max-client-size {args.max_client_size} is below --min-client-size {args.min_client_size}")
    task = args.task or entry.task
    if entry.task == "next-token" and task != "next-token":
        refuser.error(f"--task {task} does not fit --dataset {args.dataset}, which is for next-token prediction")
    if task == "next-token" and args.dataset not in ("text", "leaf", "packed"):
        refuser.error(f"--task next-token needs text: --dataset text, leaf with string rows (Shakespeare), or "
                       f"packed from such a folder; not --dataset {args.dataset}")
    if task == "next-token" and args.partition in ("dirichlet", "shards"):
        refuser.error(f"--partition {args.partition} splits by class label; next-token windows have none "
                       "(use natural, iid or quantity)")
    own = entry.task
    if own is not None:  # a task of its own: classification and clustering share integer labels
        if (task == "regression") != (own == "regression"):
            refuser.error(f"--task {task} does not fit --dataset {args.dataset}, which holds "
                           f"{'real targets' if own == 'regression' else 'integer labels'}")
    if task == "regression" and args.partition in ("dirichlet", "shards"):
        refuser.error(f"--partition {args.partition} splits by class label; regression targets have none "
                       "(use iid or quantity)")
    population_rules.validate(refuser, args)


def stream_origin(args: Settings) -> str:
    """The flag that made the run stream its cohorts, for a refusal's message."""
    if getattr(args, "dataset", None) == "packed":
        return "--dataset packed (its rows are read by cohort from disk, streamed: it implies --stream)"
    return "--stream"


def data_seed_of(args) -> int:
    """The seed of the data (population, partition, malicious set): ``--data-seed``, else the run seed."""
    return args.seed if getattr(args, "data_seed", None) is None else args.data_seed


def data_settings(args: Settings) -> dict:
    """The keyword arguments of ``jaxqfl.data.build`` that the data flags give (the seed: ``--data-seed``, else
    ``--seed``); for a generated dataset they name its population-cache entry."""
    return dict(
        num_clients=args.num_clients, partition=args.partition, alpha=args.alpha,
        shards_per_client=args.shards_per_client, sigma=args.sigma, data_path=args.data_path,
        seed=data_seed_of(args),
        synthetic_alpha=args.synthetic_alpha, synthetic_beta=args.synthetic_beta, task=args.task,
        size_mean=args.client_size_mean, size_sigma=args.client_size_sigma, min_size=args.min_client_size,
        max_size=args.max_client_size, num_outputs=args.num_outputs, noise=args.noise,
        components=args.components, concentration=args.concentration, separation=args.separation,
        num_features=args.num_features, context=getattr(args, "context", 80),
        entries_per_client=getattr(args, "entries_per_client", None),
    )


def cache_entry_settings(args: Settings) -> dict:
    """What names a generated population's entry in the population cache: the dataset and :func:`data_settings`."""
    return {"dataset": args.dataset, **data_settings(args)}


def cached_generated(args: Settings):
    """The generated population of the data flags, read from the population cache or built (and stored) there
    (``jaxqfl.data.population_cache``); None when the flags name no generated in-memory dataset. NumPy only."""
    if population_rules.on(args) or not registry.BY_NAME[args.dataset].generated:
        return None
    from jaxqfl import data
    from jaxqfl.cache_dir import default_cache_dir
    from jaxqfl.data.population_cache import cached

    base = default_cache_dir()
    return cached(None if base is None else base / "data", cache_entry_settings(args),
                  lambda: data.build(args.dataset, **data_settings(args)))


def build_population(args: Settings):
    """The population of the data flags; a malformed file ends the run with its message and status 2.

    A generated population started ahead (``jaxqfl.experiment.data_ahead``: a child process stores it in the
    population cache while JAX starts) is waited for, then read back from the cache like any stored one."""
    from jaxqfl import data
    from jaxqfl.experiment import data_ahead

    data_ahead.wait()
    try:
        if population_rules.on(args):
            return population_rules.build(args, data_seed_of(args))
        # generated rows are a pure function of these settings: built once, then read back
        population = cached_generated(args)
        return data.build(args.dataset, **data_settings(args)) if population is None else population
    except (ValueError, OSError) as err:
        fail(f"--dataset {args.dataset}: {err}")


def fail(message: str):
    """Refuse the run after its data is read: ``ExperimentError`` (the command line prints it, exit status 2)."""
    raise ExperimentError(message)


def _not_a_file(path: str) -> str:
    """Why ``path``, which is no regular file, cannot be read as one: missing, a link that leads nowhere, or a
    device, pipe or socket."""
    if os.path.lexists(path) and not os.path.exists(path):
        return "a link that leads to no file (broken, or a loop)"
    if os.path.exists(path):
        return "not a regular file (a device, pipe or socket); give the data file's path"
    return "no such file"
