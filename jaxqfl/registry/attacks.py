"""The built-in Byzantine attacks (``--attack``): one entry each (see ``jaxqfl.registry``).

An entry holds the attack's name, its one-line doc, its factory ``build(scale) -> jaxqfl.aggregate.Attack``
(the behaviour of ``jaxqfl.aggregate.attacks``, imported when called), ``scale``: the strength the behaviour
uses when ``--attack-scale`` is left automatic (None: computed from the round's cohort, or not read), and
whether it lives in the training labels (``flips_labels``: the run builds the relabelling, and a task
without class labels cannot take it). ``"none"`` is the entry without a behaviour (``build`` None).
``cli``: offered as a ``--attack`` choice (False: reachable from Python only, ``attacks.by_name``).

Importing this registry starts no JAX: factories import ``jaxqfl.aggregate.attacks`` when called.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

from jaxqfl.registry import check_unique


class AttackEntry(NamedTuple):
    name: str
    doc: str
    build: Optional[Callable[[Optional[float]], Any]]  # scale (None: the default) -> jaxqfl.aggregate.Attack
    scale: Optional[float] = None  # the default strength (None: computed from the round, or not read)
    flips_labels: bool = False
    cli: bool = True
    reads_scale: bool = True  # False: --attack-scale would do nothing with it (refused)
    hyper: tuple = ()  # none of its own: --byzantine-fraction and --attack-scale serve every attack


def _behaviour(factory: str, takes_scale: bool = True):
    """``build(scale)`` calling ``jaxqfl.aggregate.attacks.<factory>`` (imported when called)."""
    def build(scale: Optional[float] = None):
        from jaxqfl.aggregate import attacks

        make = getattr(attacks, factory)
        return make(scale) if takes_scale else make()

    return build


ENTRIES = (
    AttackEntry("none", "no malicious clients", None, reads_scale=False),
    AttackEntry("sign-flip", "send -scale u", _behaviour("sign_flip"), 1.0),
    AttackEntry("scale", "model replacement: send scale u (Bagdasaryan et al. 2020)", _behaviour("scaling"), 10.0),
    AttackEntry("gaussian", "send scale z, z ~ N(0, I)", _behaviour("gaussian"), 1.0),
    AttackEntry("label-flip", "train on labels y -> K - 1 - y, send the update unchanged",
                _behaviour("label_flip", takes_scale=False), flips_labels=True, reads_scale=False),
    AttackEntry("alie", "a little is enough: mu - z sigma (Baruch et al. 2019; scale fixes z)", _behaviour("alie")),
    AttackEntry("ipm", "inner product manipulation: -scale mu (Xie et al. 2020)", _behaviour("ipm"), 0.1),
    AttackEntry("minmax", "min-max, average criterion (Shejwalkar & Houmansadr 2021; scale fixes gamma)",
                _behaviour("min_max")),
    AttackEntry("minsum", "min-sum, average criterion (Shejwalkar & Houmansadr 2021; scale fixes gamma)",
                _behaviour("min_sum"), cli=False),
)
check_unique(ENTRIES, "attack")
BY_NAME = {e.name: e for e in ENTRIES}
NAMES = tuple(e.name for e in ENTRIES if e.cli)  # the --attack choices
BEHAVIOURS = tuple(e.name for e in ENTRIES if e.build is not None)  # attacks.by_name's names
