"""``--population memory|procedural``: where a generated population's rows live.

``memory`` (the default) builds every row on the host (``jaxqfl.data.build``).
``procedural`` builds none: ``jaxqfl.data.procedural.procedural_synthetic`` gives each
client's rows as a function of (data seed, client id), generated inside each round for
the cohort only, so ``--num-clients 100000000`` fits in memory. Its rows follow the law
of Synthetic(alpha, beta) but are not the in-memory generator's; ``--max-client-size``
is then the static row cap ``max_count`` (default 512), and the test set is the rows of
``--test-clients`` clients outside the population.

``--dataset gaussian-mixture --task classification`` is the procedural mixture (label = component).

Refused with ``procedural`` (``validate``, before JAX starts), each by name: datasets other than
``synthetic`` and ``gaussian-mixture`` (regression has no procedural generator yet), the mixture's
clustering task (k-means reads the population), ``--stream``,
a ``--partition`` other than natural, ``--client-test labels``, ``--sampling poisson``, ``--async``,
``--availability``, ``--selection``, ``--deadline``, ``--tiers``, ``--speeds`` (per-client profiles),
``--client-state host``, sweeps
(``--seeds``, list-valued flags). Algorithms, aggregators and codecs that keep per-client states are
refused by ``engine.build`` (the run ends with its message and status 2).
"""
from __future__ import annotations

from jaxqfl.experiment.resolved import Refuser, Settings

from jaxqfl import choices



POPULATIONS = choices.POPULATIONS
DEFAULT_MAX_COUNT = 512
SYNTHETIC_CLASSES = 10  # procedural_synthetic's classes (the in-memory Synthetic's)


def on(args) -> bool:
    return getattr(args, "population", "memory") == "procedural"


def validate(refuser: Refuser, args: Settings) -> None:
    """Refuse, by name, what ``--population procedural`` cannot take (module docstring)."""
    if not on(args):
        return
    if args.dataset not in ("synthetic", "gaussian-mixture"):
        refuser.error(f"--population procedural generates --dataset synthetic or gaussian-mixture; --dataset "
                       f"{args.dataset} has no procedural generator (use --population memory)")
    if args.dataset == "gaussian-mixture" and args.task != "classification":
        refuser.error(f"--population procedural with --dataset gaussian-mixture needs --task classification (the "
                       f"component as label); --task {args.task or 'clustering'} (k-means) reads the whole population")
    max_count = args.max_client_size or DEFAULT_MAX_COUNT
    if args.min_client_size > max_count:
        refuser.error(f"--min-client-size {args.min_client_size} exceeds the procedural row cap {max_count} "
                       f"(--max-client-size)")
    refused = [flag for flag, used in (
        ("--stream", getattr(args, "stream", False)),
        (f"--partition {args.partition}", args.partition not in (None, "natural")),
        ("--client-test labels", getattr(args, "client_test", "auto") == "labels"),
        ("--sampling poisson", getattr(args, "sampling", "fixed") != "fixed"),
        (f"--async {getattr(args, 'async', None)}", getattr(args, "async", None) is not None),
        ("--availability", getattr(args, "availability", None) not in (None, "always")),
        ("--selection", getattr(args, "selection", None) not in (None, "uniform")),
        ("--deadline", getattr(args, "deadline", None) is not None),
        ("--tiers", getattr(args, "tiers", None) is not None),
        ("--speeds", getattr(args, "speeds", None) is not None),
        ("--client-state host", getattr(args, "client_state", "auto") == "host"),
        ("--seeds / list-valued flags (a sweep)", bool(getattr(args, "sweep_values", None))
         or getattr(args, "seeds", None) is not None),
    ) if used]
    if refused:
        refuser.error(f"--population procedural generates each round's cohort inside the round and keeps no "
                       f"per-client data; it does not support {', '.join(refused)}")


def procedural_sizes(args: Settings) -> tuple[int, int, int]:
    """``(row cap, features, classes)`` of the procedural population of the data flags (what :func:`build` makes
    and the memory check counts)."""
    if args.dataset == "gaussian-mixture":
        return args.max_client_size or DEFAULT_MAX_COUNT, args.num_features or 10, args.components
    return args.max_client_size or DEFAULT_MAX_COUNT, args.num_features or 60, SYNTHETIC_CLASSES


def build(args: Settings, seed: int):
    """The procedural population of the data flags."""
    from jaxqfl.data.procedural import procedural_mixture, procedural_synthetic

    max_count, num_features, num_classes = procedural_sizes(args)
    if args.dataset == "gaussian-mixture":
        return procedural_mixture(
            num_classes, args.num_clients, seed, num_features=num_features,
            concentration=args.concentration, separation=args.separation, size_mean=args.client_size_mean,
            size_sigma=args.client_size_sigma, min_size=args.min_client_size,
            max_count=max_count, test_clients=args.test_clients)
    return procedural_synthetic(
        args.synthetic_alpha, args.synthetic_beta, args.num_clients, seed, num_features=num_features,
        num_classes=num_classes, size_mean=args.client_size_mean, size_sigma=args.client_size_sigma,
        min_size=args.min_client_size, max_count=max_count, test_clients=args.test_clients)
