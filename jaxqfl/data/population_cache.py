"""Generated populations built once: a later run with the same data settings reads them back from disk.

A generated dataset (``jaxqfl.registry.datasets``: synthetic, synthetic-regression,
gaussian-mixture, ...) is a pure function of its settings and seed, and building the
default one (330,851 rows) takes 0.4-0.5 s of a 2.4 s warm 10-round run on a 2-core CPU.
``cached(directory, settings, build)`` keys an entry by the SHA-256 of ``settings``
(canonical JSON) with the jaxqfl and NumPy versions (NumPy's generators make the rows)
and the SHA-256 of the generators' own source (every ``.py`` file of ``jaxqfl/data``:
an edited generator misses without a version bump), and keeps it as ``DIR/<key>/``: one
``.npy`` per array of the ``Population`` and a strict ``meta.json`` (its scalars, the
settings, the versions), written into a temporary sibling and renamed into place, so a
reader sees a whole entry or none. A later call loads the
arrays (the ``Population`` validates them again, as any); an entry that cannot be read
back, or whose meta does not match, is built and written again. Entries past
``MAX_BYTES`` in all are removed, least recently used first. A miss costs the write of
the arrays (about 0.1 s for the default population); a cache that cannot be written
(a full or read-only disk) costs nothing else.

``tests/test_population_cache.py`` checks that a loaded population equals the built one
array for array, dtypes included, and that a changed setting, version or generator source misses.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from typing import Callable

import numpy as np

from jaxqfl.data.population import Population

FORMAT = 1
MAX_BYTES = 2 * 2**30
GENERATOR_SOURCES = pathlib.Path(__file__).resolve().parent  # jaxqfl/data: the code that makes the rows
ARRAYS = ("x", "y", "offsets", "counts", "x_test", "y_test", "test_counts")
SCALARS = ("num_classes", "name", "task")


def key_of(settings: dict) -> str:
    """The entry's name: SHA-256 of the settings, the format, the versions and the source that make the rows."""
    from jaxqfl import __version__

    text = json.dumps({"settings": settings, "format": FORMAT, "jaxqfl": __version__, "numpy": np.__version__,
                       "code": source_digest(GENERATOR_SOURCES)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def source_digest(folder: pathlib.Path) -> str:
    """SHA-256 over the names and bytes of ``folder``'s ``.py`` files, in name order (about a millisecond)."""
    digest = hashlib.sha256()
    for path in sorted(pathlib.Path(folder).glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cached(directory: str | os.PathLike | None, settings: dict, build: Callable[[], Population]) -> Population:
    """``build()``'s population, read from ``directory``'s entry for ``settings`` when it holds one (else built and
    stored). ``directory`` None: built, nothing read or written. ``settings`` must be JSON (it names the entry)."""
    try:
        key = key_of(settings)
    except (TypeError, ValueError):  # settings that are not JSON cannot name an entry: built every time
        directory = None
    if directory is None:
        return build()
    entry = pathlib.Path(directory) / key
    population = load(entry, settings)
    if population is not None:
        return population
    population = build()
    store(entry, population, settings)
    return population


def has_entry(directory: str | os.PathLike, settings: dict) -> bool:
    """Whether ``directory`` holds a whole entry for ``settings`` (its ``meta.json``: written last); nothing is read."""
    try:
        return (pathlib.Path(directory) / key_of(settings) / "meta.json").is_file()
    except (TypeError, ValueError):
        return False


def load(entry: pathlib.Path, settings: dict) -> Population | None:
    """The population stored in ``entry``, or None when there is none or it cannot be read back whole."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("format") != FORMAT or meta.get("settings") != settings:
            return None
        arrays = {name: np.load(entry / f"{name}.npy", allow_pickle=False) for name in meta["arrays"]}
        population = Population(**arrays, **{k: meta[k] for k in SCALARS})
    except (OSError, ValueError, KeyError, TypeError):  # missing, truncated, damaged: built again
        return None
    try:
        os.utime(entry / "meta.json")  # recently used: kept when older entries are evicted
    except OSError:
        pass
    return population


def store(entry: pathlib.Path, population: Population, settings: dict) -> bool:
    """Write ``population`` as ``entry`` (temporary sibling, then a rename); False when it could not be written."""
    arrays = [name for name in ARRAYS if getattr(population, name) is not None]
    meta = {"format": FORMAT, "settings": settings, "arrays": arrays,
            **{k: getattr(population, k) for k in SCALARS}}
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
        try:
            for name in arrays:
                np.save(tmp / f"{name}.npy", np.asarray(getattr(population, name)), allow_pickle=False)
            (tmp / "meta.json").write_text(json.dumps(meta, allow_nan=False))
            if entry.exists():  # a damaged entry (or a concurrent writer's): replaced whole
                shutil.rmtree(entry, ignore_errors=True)
            os.replace(tmp, entry)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    except OSError:  # a full or read-only disk: the run goes on with the population it built
        return False
    evict(entry.parent, keep=entry.name)
    return True


def evict(directory: pathlib.Path, keep: str, max_bytes: int = MAX_BYTES) -> None:
    """Remove the least recently used entries of ``directory`` until they hold at most ``max_bytes`` (``keep`` stays)."""
    sizes = []
    for entry in directory.iterdir():
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        try:
            used = (entry / "meta.json").stat().st_mtime
            size = sum(f.stat().st_size for f in entry.iterdir())
        except OSError:
            continue
        sizes.append((used, size, entry))
    total = sum(s for _, s, _ in sizes)
    for _, size, entry in sorted(sizes, key=lambda t: t[0]):
        if total <= max_bytes:
            break
        if entry.name != keep:
            shutil.rmtree(entry, ignore_errors=True)
            total -= size
