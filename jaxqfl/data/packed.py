"""A population packed on disk: CSR arrays in ``.npy`` files, memory-mapped and read by cohort.

``write_packed(population, OUT)`` writes the folder ``OUT``:

    x.npy            [N, *feature_shape]   every client's training rows, client-major (the population's dtype)
    y.npy            [N, *target_shape]    their targets
    offsets.npy      [C + 1] int64         CSR row pointer: client c owns rows offsets[c] : offsets[c + 1]
    x_test.npy       [M, *feature_shape]   the test set
    y_test.npy       [M, *target_shape]
    test_counts.npy  [C] int32, optional   each client's own test rows (``Population.test_counts``)
    meta.json        {"format": "jaxqfl-packed-population", "version": 1, "name", "task", "num_classes",
                      "num_clients", "num_rows", "num_test_rows", "feature_shape", "target_shape",
                      "dtypes": {file stem: dtype}, "client_test_rows": bool,
                      "source": {"path", "kind", "bytes", and "sha256" (a file) or "files", "mtime" (a folder)}}

``read_packed(OUT)`` opens the arrays with ``np.load(..., mmap_mode="r")``: no
training row is read until a cohort's gather asks for it
(``jaxqfl.engine.streaming.gather_rows``), so a population larger than host
memory can be trained on (``jaxqfl run --dataset packed``). The layout is
checked on opening (files present, format and version, shapes and dtypes
against ``meta.json``, ``offsets`` starting at 0, increasing and ending at
``num_rows``); the rows' values (finite, labels in range) were checked by
:class:`~jaxqfl.data.population.Population` when they were written and are not
re-read. The folder is written into a temporary sibling and renamed into place,
so ``OUT`` holds either nothing or a whole layout.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil

import numpy as np

from jaxqfl.data.population import Population, is_read_only_map

__all__ = ["FORMAT", "VERSION", "PackedInfo", "write_packed", "read_packed", "packed_task", "source_of"]

FORMAT = "jaxqfl-packed-population"
VERSION = 1
#: The arrays of every layout (``test_counts.npy`` is there when ``meta["client_test_rows"]``).
ARRAYS = ("x", "y", "offsets", "x_test", "y_test")
META = "meta.json"
_HASH_CHUNK = 1 << 24


@dataclasses.dataclass(frozen=True)
class PackedInfo:
    """What :func:`write_packed` wrote: the folder, its files and their total size."""

    path: str
    files: tuple[str, ...]
    bytes: int
    num_clients: int
    num_rows: int


def source_of(path) -> dict:
    """``meta.json``'s record of the data a layout was packed from: a file's size and sha256, or a folder's
    file count, total size and latest modification time (its files are not hashed)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isfile(path):
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
                digest.update(chunk)
        return {"path": path, "kind": "file", "bytes": os.path.getsize(path), "sha256": digest.hexdigest()}
    files = [os.path.join(d, f) for d, _, names in os.walk(path) for f in names]
    return {"path": path, "kind": "folder", "files": len(files), "bytes": sum(os.path.getsize(f) for f in files),
            "mtime": max((os.path.getmtime(f) for f in files), default=os.path.getmtime(path))}


def check_out(out, force: bool) -> None:
    """Refuse ``out`` as the folder to write a packed layout to, before anything is read.

    A missing or empty folder is written; an existing packed layout (``meta.json`` and the arrays, nothing
    else) only with ``force``, which replaces it. Anything else is refused, with ``force`` too: a folder
    holding other files (a run's folder, the source file, a working folder) is not a layout to replace.

    Raises:
      FileExistsError: ``out`` holds a packed layout and ``force`` is False.
      ValueError: ``out`` is a file, or a folder holding files a packed layout does not.
    """
    out = os.fspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{out!r} is a file; the packed layout is a folder (choose another OUT)")
    held = set(os.listdir(out)) if os.path.isdir(out) else set()
    if not held:
        return
    foreign = sorted(held - {META, *(f"{stem}.npy" for stem in (*ARRAYS, "test_counts"))})
    if foreign or META not in held:
        what = f"files a packed layout does not hold ({', '.join(map(repr, foreign[:3]))}" \
               f"{', ...' if len(foreign) > 3 else ''})" if foreign else f"no {META}"
        raise ValueError(f"{out!r} exists and holds {what}: it is not a packed layout, and is not replaced even "
                         f"with --force / force=True (choose another OUT)")
    if not force:
        raise FileExistsError(errno.EEXIST, f"{out!r} holds a packed layout; refusing to overwrite it "
                                            f"(choose another OUT, or force=True / --force to replace it)", out)


def write_packed(population: Population, out, *, source=None, force: bool = False) -> PackedInfo:
    """Write ``population`` as the packed layout ``out`` (module docstring); return what was written.

    ``source``: the file or folder it was read from (recorded in ``meta.json``), or None. Each array is
    written from the population's own buffer (no copy of the rows is made). ``out`` must not exist or be
    an empty folder, or, with ``force``, a packed layout (replaced once the new one is complete): see
    :func:`check_out`.

    Raises:
      FileExistsError: ``out`` holds a packed layout and ``force`` is False.
      ValueError: ``out`` is a file or holds other files (:func:`check_out`), or ``population`` is procedural
        (it has no rows to write).
    """
    if not hasattr(population, "x"):
        raise ValueError("a procedural population generates its rows inside the round: there are no rows to pack")
    out = os.path.abspath(os.fspath(out))
    check_out(out, force)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(out)}.packing-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.mkdir(tmp)
    try:
        csr = np.zeros(population.num_clients + 1, np.int64)
        np.cumsum(population.counts, dtype=np.int64, out=csr[1:])
        arrays = {"x": population.x, "y": population.y, "offsets": csr, "x_test": population.x_test,
                  "y_test": population.y_test}
        if population.test_counts is not None:
            arrays["test_counts"] = population.test_counts.astype(np.int32)
        for stem, a in arrays.items():
            np.save(os.path.join(tmp, f"{stem}.npy"), a, allow_pickle=False)
        meta = {
            "format": FORMAT, "version": VERSION, "name": population.name, "task": population.task,
            "num_classes": population.num_classes, "num_clients": population.num_clients,
            "num_rows": population.num_examples, "num_test_rows": int(population.x_test.shape[0]),
            "feature_shape": list(population.feature_shape), "target_shape": list(population.y.shape[1:]),
            "dtypes": {stem: np.dtype(a.dtype).str for stem, a in arrays.items()},
            "client_test_rows": population.test_counts is not None,
            "source": None if source is None else source_of(source),
        }
        with open(os.path.join(tmp, META), "w") as fh:
            json.dump(meta, fh, indent=1, allow_nan=False)
            fh.write("\n")
        check_out(out, force)  # again: something may have appeared while the rows were written
        if os.path.isdir(out) and os.listdir(out):
            old = f"{tmp}.old"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)  # over a missing or empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = tuple(sorted(os.listdir(out)))
    return PackedInfo(out, files, sum(os.path.getsize(os.path.join(out, f)) for f in files),
                      population.num_clients, population.num_examples)


def _read_meta(path: str) -> dict:
    where = os.path.join(path, META)
    if not os.path.isfile(where):
        raise ValueError(f"{path!r} is not a packed population: it has no {META} (write one with "
                         f"`jaxqfl data pack SRC OUT`)")
    try:
        with open(where) as fh:
            meta = json.load(fh, parse_constant=_refuse_constant)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{where!r} is not readable strict JSON: {err}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{where!r} holds a JSON {type(meta).__name__}; expected an object")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{where!r}: format is {meta.get('format')!r}; expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise ValueError(f"{where!r}: version is {meta.get('version')!r}; this jaxqfl reads version {VERSION} "
                         f"(pack the data again with this version)")
    ints = ("num_classes", "num_clients", "num_rows", "num_test_rows")
    for k in ints:
        v = meta.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{where!r}: {k} is {v!r}; expected a non-negative integer")
    for k in ("feature_shape", "target_shape"):
        v = meta.get(k)
        if not isinstance(v, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in v):
            raise ValueError(f"{where!r}: {k} is {v!r}; expected a list of non-negative integers")
    for k, kind in (("name", str), ("task", str), ("client_test_rows", bool), ("dtypes", dict)):
        if not isinstance(meta.get(k), kind):
            raise ValueError(f"{where!r}: {k} is {meta.get(k)!r}; expected a {kind.__name__}")
    return meta


def packed_task(path) -> str:
    """The task a layout was packed for (``meta.json``'s ``task``), read before any row: what a run checks its flags
    against. Raises ValueError, naming the file, for a folder that is not a readable layout."""
    return _read_meta(os.fspath(path))["task"]


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not strict JSON")


def _open(path: str, stem: str, meta: dict, shape: tuple) -> np.ndarray:
    where = os.path.join(path, f"{stem}.npy")
    if not os.path.isfile(where):
        raise ValueError(f"{path!r} is a damaged packed population: {stem}.npy is missing")
    try:
        a = np.load(where, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{where!r} is not a readable .npy array (truncated or damaged?): {err}") from None
    want = meta["dtypes"].get(stem)
    if want is None or np.dtype(a.dtype).str != want:
        raise ValueError(f"{where!r} has dtype {np.dtype(a.dtype).str}; {META} says {want!r}")
    if a.shape != shape:
        raise ValueError(f"{where!r} has shape {a.shape}; {META} says {shape}")
    return a


def read_packed(path) -> Population:
    """The population of the packed layout at ``path``, its arrays memory-mapped (module docstring).

    Raises:
      FileNotFoundError: nothing at ``path``.
      ValueError: naming the file and what is wrong: a missing file or ``meta.json`` key, another format
        or version, an array whose dtype or shape disagrees with ``meta.json``, offsets that do not start
        at 0, do not increase (every client holds a row) or do not end at ``num_rows``.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, f"no packed population at {path!r}", path)
    if not os.path.isdir(path):
        raise ValueError(f"{path!r} is a file; a packed population is a folder (written by `jaxqfl data pack`)")
    meta = _read_meta(path)
    C, N, M = meta["num_clients"], meta["num_rows"], meta["num_test_rows"]
    features, targets = tuple(meta["feature_shape"]), tuple(meta["target_shape"])
    x = _open(path, "x", meta, (N, *features))
    y = _open(path, "y", meta, (N, *targets))
    csr = _open(path, "offsets", meta, (C + 1,))
    x_test = _open(path, "x_test", meta, (M, *features))
    y_test = _open(path, "y_test", meta, (M, *targets))
    test_counts = _open(path, "test_counts", meta, (C,)) if meta["client_test_rows"] else None
    where = os.path.join(path, "offsets.npy")
    if csr.dtype != np.int64:
        raise ValueError(f"{where!r} has dtype {csr.dtype}; offsets are int64")
    if C == 0:
        raise ValueError(f"{os.path.join(path, META)!r}: num_clients is 0; a population has at least one client")
    if csr[0] != 0 or csr[-1] != N:
        raise ValueError(f"{where!r} runs from {int(csr[0])} to {int(csr[-1])}; the row pointer must start at 0 "
                         f"and end at num_rows = {N}")
    counts = np.diff(csr)
    if counts.min() < 1:
        c = int(np.argmin(counts))
        raise ValueError(f"{where!r} does not increase at client {c} (offsets[{c}] = {int(csr[c])}, "
                         f"offsets[{c + 1}] = {int(csr[c + 1])}); every client owns at least one row")
    index = np.int32 if N < 2**31 else np.int64
    return Population(x=x, y=y, offsets=csr[:-1].astype(index), counts=counts.astype(np.int32),
                      x_test=x_test, y_test=y_test, num_classes=meta["num_classes"], name=meta["name"],
                      task=meta["task"], test_counts=None if test_counts is None else np.array(test_counts))


def is_packed(population) -> bool:
    """Whether ``population``'s training rows are memory-mapped from a packed layout on disk."""
    return hasattr(population, "x") and is_read_only_map(population.x)
