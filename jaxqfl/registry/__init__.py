"""Registries of the built-in algorithms, aggregation rules, attacks, datasets and models, in the pattern
of ``jaxqfl/compress/spec.py``.

Each entry is one choice: its name, its one-line doc, its factory and its own hyper-parameters
(:class:`HyperParameter`: a value kind with its range, a default, a doc). An experiment's settings, the
``jaxqfl run`` flags, their ``--help`` and their range checks are generated from the entries
(``jaxqfl.experiment.algorithm_settings``), and the rules read an entry's properties instead of naming
algorithms or rules. So a new algorithm is its module in ``jaxqfl.algorithms`` plus one entry in
``algorithms.py``; a new aggregation rule is its module in ``jaxqfl.aggregate`` plus one entry in
``aggregators.py``; a new attack is its behaviour in ``jaxqfl.aggregate.attacks`` plus one entry in
``attacks.py``; a new dataset is its loader in ``jaxqfl.data`` (dispatched by ``jaxqfl.data.build``) plus
one entry in ``datasets.py``, whose run defaults the run fills for flags left unset; a new model is its
factory in ``jaxqfl.models`` plus one entry in ``models.py``.

Importing a registry starts no JAX: factories import their modules when called.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional


class HyperParameter(NamedTuple):
    """One hyper-parameter of a registry entry: a setting of its own (flag ``--name-with-dashes``).

    ``kind``: a ``jaxqfl.value_kinds`` kind (its range); ``default``: the value filled in when the entry is
    chosen and the setting is left automatic (None: it stays None, and the factory decides); ``type``: the
    setting's annotation; ``sweep``: a comma-separated list sweeps it (one program for every value).
    """

    name: str
    kind: Optional[Callable[[str], Any]]
    doc: str
    default: Any = None
    type: str = "float | None"
    metavar: Optional[str] = None
    sweep: bool = False


def check_unique(entries, what: str) -> None:
    """Refuse (at import) two entries of one name, or one hyper-parameter declared two ways."""
    names, hyper = set(), {}
    for e in entries:
        if e.name in names:
            raise ValueError(f"two {what} entries are named {e.name!r}")
        names.add(e.name)
        for h in e.hyper:
            if h.name in hyper and hyper[h.name] != h:
                raise ValueError(f"{what} hyper-parameter {h.name!r} is declared two ways: {hyper[h.name]} and {h}")
            hyper[h.name] = h


def hyper_users(entries) -> dict:
    """``{hyper-parameter name: (HyperParameter, names of the entries that read it)}``, in declaration order."""
    out: dict = {}
    for e in entries:
        for h in e.hyper:
            out[h.name] = (h, out.get(h.name, (h, ()))[1] + (e.name,))
    return out
