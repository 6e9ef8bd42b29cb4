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
ditto      fedavg's flags for the global model; the personal models step at ``--client-lr``
           with pull ``--ditto-lambda``
fedrep     fedavg's flags; head ``--head`` (default: the model's last layer) trained for
           ``--head-steps`` local steps (default: the first half), then the body
fedper     fedavg's flags; head ``--head``; body and head trained together
perfedavg  outer (meta) step ``--client-lr`` (beta), inner step ``--perfedavg-alpha`` (default:
           ``--client-lr``); ``--server-opt`` at ``--server-lr``; ``--weighting``; evaluated
           per client one inner step from the global model (``--personal-eval 1``)
qffl       local SGD ``--client-lr`` (L = 1 / lr); fairness ``--q``; no server optimizer;
           uniform weighting
=========  ==================================================================================
"""
from __future__ import annotations

from jaxqfl.experiment.resolved import Refuser, Settings



DEFAULT_MU = 0.01
DEFAULT_FEDDYN_ALPHA = 0.01
DEFAULT_DITTO_LAMBDA = 0.1
DEFAULT_Q = 1.0
#: each algorithm-specific setting (its flat name) and the algorithms that read it
OWN_FLAGS = {"mu": ("fedprox",), "feddyn_alpha": ("feddyn",), "ditto_lambda": ("ditto",),
             "head": ("fedrep", "fedper"), "head_steps": ("fedrep",), "q": ("qffl",), "perfedavg_alpha": ("perfedavg",)}


#: algorithms that weigh every client 1 whatever --weighting says (their papers' uniform means)
UNIFORM_ALGORITHMS = ("scaffold", "feddyn", "qffl")


def weighs_by_examples(args: Settings) -> bool:
    """True when the run's algorithm weighs clients by their example counts (``--weighting examples``)."""
    return (getattr(args, "weighting", "examples") == "examples"
            and getattr(args, "algorithm", "fedavg") not in UNIFORM_ALGORITHMS)


def validate(parser: Refuser, args: Settings) -> None:
    """Refuse flags the chosen algorithm does not use; fill --mu / --feddyn-alpha defaults."""
    a = args.algorithm
    if isinstance(args.mu, tuple):  # a list not split into a sweep by jaxqfl run: one value only
        if len(args.mu) > 1:
            parser.error(f"--mu takes one value here, got {','.join(f'{m:g}' for m in args.mu)}")
        args.mu = args.mu[0]
    for dest, users in OWN_FLAGS.items():
        if getattr(args, dest, None) is not None and a not in users:
            parser.error(f"--{dest.replace('_', '-')} applies to --algorithm {' / '.join(users)}, got --algorithm {a}")
    if getattr(args, "head", None) is not None:
        import re

        try:
            re.compile(args.head)
        except re.error as err:
            parser.error(f"--head {args.head!r} is not a regular expression: {err}")
    if a in ("scaffold", "feddyn", "qffl") and args.server_opt != "sgd":
        parser.error(f"--algorithm {a} has no server optimizer; --server-opt must be sgd, got {args.server_opt}")
    if a in ("feddyn", "mimelite", "qffl") and "server_lr" in getattr(args, "sweep_values", {}):
        parser.error(f"--algorithm {a} has no server learning rate; --server-lr takes no list")
    if a in ("feddyn", "mimelite", "qffl") and args.server_lr != 1.0:
        parser.error(f"--algorithm {a} has no server learning rate; --server-lr must be 1, got {args.server_lr}")
    if a == "fedprox" and args.mu is None:  # defaults only for the algorithm that reads them (a config file
        args.mu = DEFAULT_MU                 # written from these args must not name another's flag)
    if a == "feddyn" and args.feddyn_alpha is None:
        args.feddyn_alpha = DEFAULT_FEDDYN_ALPHA
    if a == "ditto" and args.ditto_lambda is None:
        args.ditto_lambda = DEFAULT_DITTO_LAMBDA
    if a == "qffl" and args.q is None:
        args.q = DEFAULT_Q


def build(args: Settings, hp: dict | None = None):
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
    if a == "ditto":
        return (algorithms.ditto(optax.sgd(lr), lr, args.ditto_lambda, server(), weighting=args.weighting),
                {**fedopt, "personal_lr": args.client_lr, "lambda": args.ditto_lambda})
    if a in ("fedrep", "fedper"):
        head = {"head": args.head or "the model's last layer"}
        if a == "fedper":
            return algorithms.fedper(optax.sgd(lr), args.head, server(), weighting=args.weighting), {**fedopt, **head}
        return (algorithms.fedrep(optax.sgd(lr), args.head, args.head_steps, server(), weighting=args.weighting),
                {**fedopt, **head, "head_steps": args.head_steps if args.head_steps is not None else "first half"})
    if a == "perfedavg":
        alpha = args.perfedavg_alpha if args.perfedavg_alpha is not None else args.client_lr
        return (algorithms.perfedavg(alpha, lr, server(), weighting=args.weighting),
                {**fedopt, "alpha": alpha, "beta": args.client_lr})
    if a == "qffl":
        return algorithms.qffl(lr, args.q), {"local_lr": args.client_lr, "q": args.q, "weighting": "uniform"}
    base = algorithms.server_optimizer(args.server_opt, lr)
    return algorithms.mimelite(base, weighting=args.weighting), {
        "base_optimizer": args.server_opt, "learning_rate": args.client_lr, "weighting": args.weighting}
