"""The persistent compilation cache: a second run of the same shapes loads its programs instead of compiling them.

``enable()`` turns on JAX's persistent compilation cache in
``<jaxqfl cache>/xla`` (``$JAXQFL_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxqfl``,
else ``~/.cache/jaxqfl``: the chunk-tuning cache's folder,
``jaxqfl.cache_dir.default_cache_dir``), for every program whatever its
compile time or size (the round, evaluation and initialisation programs all
take seconds to compile and load in milliseconds), capped at ``MAX_BYTES``
(JAX evicts the least recently used entries). It leaves alone a cache the user
configured (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``) and does nothing
when ``JAXQFL_CACHE_DIR=off``. It must run before the process's first
compilation (JAX decides once whether a process uses the cache).

A cached program is the one XLA would compile: same HLO, same compile options,
same JAX/XLA version and devices (JAX's cache key), so results are identical;
``tests/test_compile_cache.py`` checks it. ``CacheHits`` counts the programs a
block of code loaded from the cache (JAX's ``cache_hits`` event).
"""
from __future__ import annotations

import pathlib

import jax

SUBDIR = "xla"
MAX_BYTES = 4 * 2**30
HIT_EVENT = "/jax/compilation_cache/cache_hits"


def enable(directory=None) -> pathlib.Path | None:
    """Use ``directory`` (default: the jaxqfl cache's ``xla`` folder) as JAX's persistent cache; its path, or None.

    Returns the folder in use: the user's own when one is configured, None when caching is off.
    """
    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return pathlib.Path(configured)
    if directory is None:
        from jaxqfl.cache_dir import default_cache_dir

        base = default_cache_dir()
        if base is None:  # JAXQFL_CACHE_DIR=off
            return None
        directory = base / SUBDIR
    directory = pathlib.Path(directory).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:  # an unwritable cache folder costs compile time, never the run
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    try:  # JAX evicts old entries only with filelock (a dependency); without it the cache is uncapped
        import filelock  # noqa: F401

        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    except ImportError:
        pass
    return directory


class CacheHits:
    """``with CacheHits() as hits: ...`` then ``hits.count``: programs loaded from the persistent cache."""

    def __init__(self):
        self.count = 0

    def _listener(self, event: str, **kwargs) -> None:
        del kwargs
        if event == HIT_EVENT:
            self.count += 1

    def __enter__(self) -> "CacheHits":
        jax.monitoring.register_event_listener(self._listener)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_listener(self._listener)
