"""``--algorithm`` and its hyper-parameters: checks, defaults and the Algorithm, from the registry.

Every algorithm is an entry of ``jaxqfl.registry.algorithms`` (its factory, its own hyper-parameters with
their defaults, and its properties); nothing here names an algorithm. The rules:

* an algorithm's own hyper-parameter given while another algorithm is chosen is refused, naming both;
* an algorithm without a server optimizer (``server_optimizer=False``) takes ``--server-opt sgd`` only, one
  without a server learning rate (``server_lr=False``) ``--server-lr 1`` only, and no list of it;
* the chosen algorithm's hyper-parameters left automatic take their entry's defaults (the others stay
  unset: a config written from these settings must not name another algorithm's hyper-parameter).
"""
from __future__ import annotations

from jaxqfl.experiment.resolved import Refuser, Settings



from jaxqfl.registry import algorithms as registry

#: each algorithm-specific setting (its flat name) and the algorithms that read it
OWN_FLAGS = {name: users for name, (_, users) in registry.HYPER.items()}
#: algorithms that weigh every client 1 whatever --weighting says (their papers' uniform means)
UNIFORM_ALGORITHMS = tuple(e.name for e in registry.ENTRIES if e.uniform)


def weighs_by_examples(args: Settings) -> bool:
    """True when the run's algorithm weighs clients by their example counts (``--weighting examples``)."""
    return (getattr(args, "weighting", "examples") == "examples"
            and getattr(args, "algorithm", "fedavg") not in UNIFORM_ALGORITHMS)


def validate(refuser: Refuser, args: Settings) -> None:
    """Refuse hyper-parameters the chosen algorithm does not read; fill in its own defaults."""
    a = args.algorithm
    entry = registry.BY_NAME[a]
    for h in entry.hyper:  # a list not split into a sweep by jaxqfl run: one value only
        value = getattr(args, h.name, None)
        if isinstance(value, tuple):
            if len(value) > 1:
                refuser.error(f"--{h.name.replace('_', '-')} takes one value here, got "
                               f"{','.join(f'{m:g}' for m in value)}")
            setattr(args, h.name, value[0])
    for dest, users in OWN_FLAGS.items():
        if getattr(args, dest, None) is not None and a not in users:
            refuser.error(f"--{dest.replace('_', '-')} applies to --algorithm {' / '.join(users)}, got --algorithm {a}")
    if getattr(args, "head", None) is not None:
        import re

        try:
            re.compile(args.head)
        except re.error as err:
            refuser.error(f"--head {args.head!r} is not a regular expression: {err}")
    if not entry.server_optimizer and args.server_opt != "sgd":
        refuser.error(f"--algorithm {a} has no server optimizer; --server-opt must be sgd, got {args.server_opt}")
    if not entry.server_lr and "server_lr" in getattr(args, "sweep_values", {}):
        refuser.error(f"--algorithm {a} has no server learning rate; --server-lr takes no list")
    if not entry.server_lr and args.server_lr != 1.0:
        refuser.error(f"--algorithm {a} has no server learning rate; --server-lr must be 1, got {args.server_lr}")
    for h in entry.hyper:
        if h.default is not None and getattr(args, h.name, None) is None:
            setattr(args, h.name, h.default)


def build(args: Settings, hp: dict | None = None):
    """``(algorithm, hyper-parameters dict)`` for the validated settings (the entry's factory).

    ``hp`` (a sweep) overrides ``client_lr`` / ``server_lr`` / ``mu`` with traced values;
    the returned dict records the settings' (first) values.
    """
    return registry.BY_NAME[args.algorithm].build(args, hp or {})
