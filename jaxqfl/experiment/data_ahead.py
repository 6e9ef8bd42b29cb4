"""A generated population built on a worker thread while JAX starts: the run's first two costs overlap.

A run's first second goes to starting JAX (importing it: about 0.5 s on a 2-core CPU) and then to its
population (the default Synthetic's 330,851 rows: 0.4-0.6 s to generate, 0.1 s to read back from the
population cache). Neither needs the other: a generated population is a pure function of its data settings
(``jaxqfl.data.population_cache``), drawn by NumPy, which releases the GIL while it fills arrays. So
:func:`start`, called with the parsed settings before the rules resolve them (before JAX is imported),
begins reading-or-generating the population on a worker thread, and ``data_rules.build_population`` takes it
(:func:`take`) where it would have built it: the same function of the same settings, run earlier.

What is started: a generated dataset held in host memory (not ``--population procedural``, not a file) whose
rows take at most :data:`MAX_BYTES` and a quarter of the host's available memory, known from the flags
alone (the client sizes are drawn first: ``jaxqfl.data.footprint``), so the worker never runs ahead of the
memory check (``pipeline.check_memory``) on anything it could refuse. Anything else is built where it was.

Refusals are unchanged: the rules still run on the calling thread, in their order, and none waits for the
worker. The worker is a daemon thread: a refused ``jaxqfl run`` exits at once, and ``jaxqfl.run`` raises its
``ExperimentError`` at once, the worker finishing (and filling the population cache) behind it. A population
whose settings a rule changed is not used: :func:`take` compares the settings it was started with against
the resolved ones and returns None when they differ (the caller then builds as before). A worker's error
(e.g. a generator's ValueError) is raised by :func:`take`, where building in place would have raised it.

``tests/test_data_ahead.py`` checks that a run started ahead equals one built in place, byte for byte, and
that changed settings are not served the started population.
"""
from __future__ import annotations

import copy
import threading
from typing import Any, Optional

from jaxqfl.experiment.resolved import Settings

#: Largest population (host bytes of its rows) built ahead.
MAX_BYTES = 2 * 2**30
#: Most clients whose sizes are drawn to size the population before it is started.
MAX_CLIENTS = 1_000_000


class _Started:
    """One population on its way: the settings it was started with, its thread, its result or error."""

    def __init__(self, key: dict, build):
        self.key, self.population, self.error, self.done = key, None, None, threading.Event()
        self.thread = threading.Thread(target=self._run, args=(build,), name="jaxqfl-data-ahead", daemon=True)
        self.thread.start()

    def _run(self, build) -> None:
        try:
            build(self._ready)  # a built population is stored in the cache after it is handed over
        except BaseException as e:  # handed to take(), on the thread that would have built it
            if not self.done.is_set():
                self.error = e
        finally:
            self.done.set()

    def _ready(self, population) -> None:
        self.population = population
        self.done.set()


_started: Optional[_Started] = None


def key_of(args: Settings) -> dict:
    """What names the population: the dataset and ``data_rules.data_settings``."""
    from jaxqfl.experiment.data_rules import data_settings

    return {"dataset": args.dataset, **data_settings(args)}


def start(args: Settings) -> bool:
    """Start building ``args``'s generated population on a worker thread (see the module docstring); True when
    started. Settings the rules would refuse start nothing that matters: what they build is never taken."""
    global _started
    _started = None
    args = _as_resolved(args)
    if args is None or not _fits(args):
        return False
    from jaxqfl import data  # noqa: F401 (imported here, not on the worker: no import races with JAX's)
    from jaxqfl.data import population_cache  # noqa: F401
    from jaxqfl.experiment.data_rules import cached_generated

    _started = _Started(key_of(args), lambda ready: cached_generated(args, ready))
    return True


def take(args: Settings) -> Any:
    """The population started for ``args``'s data settings (waiting for it), or None when none was; once."""
    global _started
    started, _started = _started, None
    if started is None or started.key != key_of(args):
        return None
    started.done.wait()
    if started.error is not None:
        raise started.error
    return started.population


def _as_resolved(args: Settings) -> Settings | None:
    """A copy of ``args`` with what the rules fill in for the data: the dataset's default ``--num-clients``, seed 0
    when none is given; None for a dataset that is not generated, or for ``--seeds`` (a sweep)."""
    from jaxqfl.registry import datasets as registry

    entry = registry.BY_NAME.get(getattr(args, "dataset", None))
    if entry is None or not entry.generated or getattr(args, "seeds", None) is not None:
        return None
    args = copy.copy(args)
    if args.num_clients is None:
        args.num_clients = entry.defaults.num_clients
    if args.seed is None:
        args.seed = 0
    return args


def _fits(args: Settings) -> bool:
    """An in-memory population, small enough to build before the memory check (module docstring)."""
    from jaxqfl.experiment import population_rules

    if population_rules.on(args):
        return False
    if not isinstance(args.num_clients, int) or not 1 <= args.num_clients <= MAX_CLIENTS:
        return False
    from jaxqfl.experiment import memory_guard

    try:
        footprint = memory_guard.footprint_from_flags(args)
    except (ValueError, TypeError, OverflowError):  # the rules refuse such flags, by name
        return False
    if footprint is None:
        return False
    return footprint.bytes <= min(MAX_BYTES, memory_guard.host_available_bytes() // 4)
