"""The resolved settings of one run: what the rules (``*_rules``) check and fill in, and the runners read.

``Settings`` is a flat namespace of the experiment's settings by their flat names (``client_lr``, ``async``)
plus this invocation's (``out``, ``log``, ``overwrite``, ``resume``, ``no_progress``, ``print_config``,
``config``). Each rule's ``validate(refuser, settings)`` refuses a meaningless combination through
``refuser.error(message)`` and fills in the automatic values (dataset defaults) and derived ones (names
starting with ``_``, never part of the config). The command line's refuser is its flag parser (usage
and exit status 2); the library's, :class:`Refuse`, raises :class:`ExperimentError`.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import NoReturn, Protocol

from jaxqfl.value_kinds import ExperimentError

Settings = SimpleNamespace

#: the settings of an invocation, not of the experiment: never in its config.toml
INVOCATION_DEFAULTS = {"config": None, "print_config": False, "overwrite": False, "resume": None, "out": None,
                       "no_progress": True, "log": ("jsonl",)}


class Refuser(Protocol):
    def error(self, message: str) -> NoReturn:
        """Refuse the run with ``message`` (which names the settings and what is allowed)."""


class Refuse:
    """The library's refuser: raises :class:`ExperimentError`."""

    def error(self, message: str) -> NoReturn:
        raise ExperimentError(message)


def settings_of(experiment, **invocation) -> Settings:
    """A fresh, unresolved namespace of ``experiment``'s settings and the invocation's (``INVOCATION_DEFAULTS``
    where not given); the experiment itself is never changed."""
    unknown = set(invocation) - set(INVOCATION_DEFAULTS)
    if unknown:
        raise ExperimentError(f"unknown run option(s) {sorted(unknown)}; allowed: {sorted(INVOCATION_DEFAULTS)}")
    return Settings(command="run", **experiment.flat(), **{**INVOCATION_DEFAULTS, **invocation})
