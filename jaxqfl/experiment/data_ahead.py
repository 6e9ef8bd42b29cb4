"""A generated population built in a child process while JAX starts: the run's first two costs overlap.

A first run's first second goes to starting JAX (importing it: about 0.5 s on a 2-core CPU) and then to its
population (the default Synthetic's 330,851 rows: 0.4-0.6 s to generate and store in the population cache,
``jaxqfl.data.population_cache``). Neither needs the other: a generated population is a pure function of its
data settings. So :func:`start`, called with the parsed settings before the rules resolve them (before JAX is
imported), forks a child that generates the population and stores it in the cache, and ``build_population``
(:func:`wait` first) reads it back (0.05-0.1 s) where it would have generated it. In a process, not a thread:
measured on a 2-core CPU, a thread generating while JAX imports made both slower (page faults of the fresh
arrays against the loader's mappings of JAX's libraries) and gained nothing; the child had the population
stored 0.27 s before the thread's was ready.

What is started: a generated dataset held in host memory (not ``--population procedural``, not a file), not
yet in the cache, whose rows take at most :data:`MAX_BYTES` and a quarter of the host's available memory
(known from the flags alone: the client sizes are drawn first, ``jaxqfl.data.footprint``), so the child
never runs ahead of the memory check (``pipeline.check_memory``) on anything it could refuse; only on Linux,
from a process that has not started JAX and runs one Python thread (``os.fork`` is safe there: what
``multiprocessing``'s default start method does), with a population cache to hand it over through. Anything
else is built in place, as before.

Nothing changes but the timing: the child runs the very function the run would (``data_rules.cached_generated``)
and the run reads the cache entry back through the same function, so a run whose resolved settings differ
(a rule changed a data setting) misses the entry and builds its own, and a child that failed (a generator's
refusal, a full disk) leaves no entry, and the run builds in place and refuses as it always did. Refusals do
not wait for the child: it finishes (or is reaped) on its own.

``tests/test_data_ahead.py`` checks that the child's entry is the population built in place, that a run started
ahead writes the model of one that was not, and what is not started.
"""
from __future__ import annotations

import copy
import os
import sys
import threading
from typing import Optional

from jaxqfl.experiment.resolved import Settings

#: Largest population (host bytes of its rows) built ahead.
MAX_BYTES = 2 * 2**30
#: Most clients whose sizes are drawn to size the population before it is started.
MAX_CLIENTS = 1_000_000

_child: Optional[int] = None  # the pid of the child started for this run, until wait() reaps it


def start(args: Settings) -> bool:
    """Fork a child that builds ``args``'s generated population into the cache (see the module docstring); True when
    started. Settings the rules would refuse start nothing that matters: an entry a run never reads."""
    global _child
    wait()  # a child of an earlier call in this process, reaped
    args = _as_resolved(args)
    if args is None or not _can_fork() or not _fits(args):
        return False
    from jaxqfl.cache_dir import default_cache_dir
    from jaxqfl.data import population_cache
    from jaxqfl.experiment.data_rules import cache_entry_settings, cached_generated

    base = default_cache_dir()
    if base is None or population_cache.has_entry(base / "data", cache_entry_settings(args)):
        return False  # no cache to hand it over through, or nothing to build: read in place
    pid = os.fork()
    if pid == 0:  # the child: build, store, leave (no atexit handlers, no buffers flushed twice)
        status = 1
        try:
            quiet = os.open(os.devnull, os.O_RDWR)  # the parent's pipes are not held open: a caller reading the
            for fd in (0, 1, 2):                      # command's output sees its end when the command ends
                os.dup2(quiet, fd)
            cached_generated(args)
            status = 0
        finally:
            os._exit(status)
    _child = pid
    return True


def wait() -> None:
    """Wait for this run's child (if one was started) to have stored its population."""
    global _child
    pid, _child = _child, None
    if pid is not None:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:  # already reaped
            pass


def _can_fork() -> bool:
    return (sys.platform.startswith("linux") and hasattr(os, "fork") and "jax" not in sys.modules
            and threading.active_count() == 1)


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
    from jaxqfl.experiment import memory_guard, population_rules

    if population_rules.on(args):
        return False
    if not isinstance(args.num_clients, int) or not 1 <= args.num_clients <= MAX_CLIENTS:
        return False
    try:
        footprint = memory_guard.footprint_from_flags(args)
    except (ValueError, TypeError, OverflowError):  # the rules refuse such flags, by name
        return False
    if footprint is None:
        return False
    return footprint.bytes <= min(MAX_BYTES, memory_guard.host_available_bytes() // 4)
