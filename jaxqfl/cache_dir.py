"""The folder of what jaxqfl can build again: tuned chunk sizes, compiled programs, generated populations.

``$JAXQFL_CACHE_DIR`` (``off``, ``0``, ``false`` or ``no``: no cache), else ``$XDG_CACHE_HOME/jaxqfl``, else
``~/.cache/jaxqfl``. Its users: ``jaxqfl.engine.autotune`` (``autotune.json``), ``jaxqfl.engine.compile_cache``
(``xla/``) and ``jaxqfl.data.population_cache`` (``data/``). This module imports neither JAX nor NumPy, so the
data can be looked up before JAX starts (``jaxqfl.experiment.data_ahead``).
"""
from __future__ import annotations

import os
import pathlib

CACHE_DIR_ENV = "JAXQFL_CACHE_DIR"
OFF = ("0", "off", "false", "no")


def default_cache_dir() -> pathlib.Path | None:
    """``$JAXQFL_CACHE_DIR`` (None when it is "off"), else ``$XDG_CACHE_HOME/jaxqfl``, else ``~/.cache/jaxqfl``."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env is not None and env.strip():
        return None if env.strip().lower() in OFF else pathlib.Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg) if xdg else pathlib.Path.home() / ".cache"
    return base / "jaxqfl"
