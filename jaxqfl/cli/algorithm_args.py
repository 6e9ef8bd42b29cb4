"""``--algorithm`` and its hyper-parameters for ``jaxqfl run``: flags, checks, the Algorithm.

How the shared flags map onto each algorithm (``jaxqfl.algorithms``):

=========  ==================================================================================
fedavg     client SGD ``--client-lr``; server ``--server-opt`` at ``--server-lr`` (FedAvg,
           FedAvgM, FedAdam, FedYogi, FedAdagrad); ``--weighting``
fedprox    fedavg's flags plus the proximal coefficient ``--mu``
scaffold   local SGD step ``--client-lr`` (eta_l), global step ``--server-lr`` (eta_g);
           server SGD only; uniform weighting (the paper's)
fednova    local SGD ``--client-lr``; ``--server-opt`` at ``--server-lr``; ``--weighting``
feddyn     client SGD ``--client-lr``; ``--feddyn-alpha``; no server optimizer; uniform weighting
mimelite   base optimizer ``--server-opt`` whose learning rate is ``--client-lr`` (clients step
           with it, its statistics frozen; the server only updates the statistics); ``--weighting``
=========  ==================================================================================
"""
from __future__ import annotations

import argparse

from jaxqfl.cli.argtypes import nonneg_floats as _nonneg_floats
from jaxqfl.choices import ALGORITHMS

DEFAULT_MU = 0.01
DEFAULT_FEDDYN_ALPHA = 0.01


def add_arguments(g) -> None:
    """Add ``--algorithm``, ``--mu`` and ``--feddyn-alpha`` to an argparse group."""
    from jaxqfl.cli.argtypes import positive_float

    g.add_argument("--algorithm", choices=ALGORITHMS, default="fedavg",
                   help="FL algorithm (README: table of algorithms); default fedavg")
    g.add_argument("--mu", type=_nonneg_floats, default=None,
                   help=f"FedProx proximal coefficient (--algorithm fedprox; default {DEFAULT_MU}); a "
                        f"comma-separated list sweeps it")
    g.add_argument("--feddyn-alpha", type=positive_float, default=None,
                   help=f"FedDyn regularization alpha (--algorithm feddyn; default {DEFAULT_FEDDYN_ALPHA})")


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse flags the chosen algorithm does not use; fill --mu / --feddyn-alpha defaults."""
    a = args.algorithm
    if isinstance(args.mu, tuple):  # a list not split into a sweep by jaxqfl run: one value only
        if len(args.mu) > 1:
            parser.error(f"--mu takes one value here, got {','.join(f'{m:g}' for m in args.mu)}")
        args.mu = args.mu[0]
    if args.mu is not None and a != "fedprox":
        parser.error(f"--mu applies to --algorithm fedprox, got --algorithm {a}")
    if args.feddyn_alpha is not None and a != "feddyn":
        parser.error(f"--feddyn-alpha applies to --algorithm feddyn, got --algorithm {a}")
    if a in ("scaffold", "feddyn") and args.server_opt != "sgd":
        parser.error(f"--algorithm {a} has no server optimizer; --server-opt must be sgd, got {args.server_opt}")
    if a in ("feddyn", "mimelite") and "server_lr" in getattr(args, "sweep_values", {}):
        parser.error(f"--algorithm {a} has no server learning rate; --server-lr takes no list")
    if a in ("feddyn", "mimelite") and args.server_lr != 1.0:
        parser.error(f"--algorithm {a} has no server learning rate; --server-lr must be 1, got {args.server_lr}")
    if a == "fedprox" and args.mu is None:  # defaults only for the algorithm that reads them (a config file
        args.mu = DEFAULT_MU                 # written from these args must not name another's flag)
    if a == "feddyn" and args.feddyn_alpha is None:
        args.feddyn_alpha = DEFAULT_FEDDYN_ALPHA


def build(args: argparse.Namespace, hp: dict | None = None):
    """``(algorithm, hyper-parameters dict)`` for the validated flags.

    ``hp`` (a sweep) overrides ``client_lr`` / ``server_lr`` / ``mu`` with traced values;
    the returned dict records the flags' (first) values.
    """
    import optax

    from jaxqfl import algorithms

    hp = hp or {}
    a, lr, server_lr = args.algorithm, hp.get("client_lr", args.client_lr), hp.get("server_lr", args.server_lr)
    server = lambda: algorithms.server_optimizer(args.server_opt, server_lr)
    fedopt = {"client_lr": args.client_lr, "server_opt": args.server_opt, "server_lr": args.server_lr,
              "weighting": args.weighting}
    if a == "fedavg":
        return algorithms.fedavg(optax.sgd(lr), server(), weighting=args.weighting), fedopt
    if a == "fedprox":
        return (algorithms.fedprox(optax.sgd(lr), hp.get("mu", args.mu), server(), weighting=args.weighting),
                {**fedopt, "mu": args.mu})
    if a == "scaffold":
        return (algorithms.scaffold(lr, global_lr=server_lr),
                {"local_lr": args.client_lr, "global_lr": args.server_lr, "weighting": "uniform"})
    if a == "fednova":
        return algorithms.fednova(lr, 0.0, server(), weighting=args.weighting), {**fedopt, "momentum": 0.0}
    if a == "feddyn":
        return (algorithms.feddyn(optax.sgd(lr), alpha=args.feddyn_alpha),
                {"client_lr": args.client_lr, "alpha": args.feddyn_alpha, "weighting": "uniform"})
    base = algorithms.server_optimizer(args.server_opt, lr)
    return algorithms.mimelite(base, weighting=args.weighting), {
        "base_optimizer": args.server_opt, "learning_rate": args.client_lr, "weighting": args.weighting}
