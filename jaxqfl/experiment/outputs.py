"""A run's output folder and its files: a unique default name, refusal to overwrite, a lock, strict JSON.

Every check here runs before any data is built or program compiled, so an
unusable ``--out`` is refused at once. A run holds an exclusive lock on its
folder (``flock`` of ``OUT/.jaxqfl.lock``, taken before the emptiness check and
held until the command returns), so a second run into the same folder (or a
``--resume`` of it) is refused while the first is writing, instead of both
truncating the same files. The lock ends with the process, even a killed one. JSON written by a run is strict (RFC 8259):
a non-finite number (NaN, +-Infinity: a diverged loss) is written as ``null``.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
import time

from jaxqfl.sinks import finite_or_none, strict_dumps  # noqa: F401  (re-exported: the CLI's strict JSON)

#: What a run writes into its folder; ``--overwrite`` removes these (and nothing else) first, with a
#: sweep's config folders (``is_config_folder``).
RUN_FILES = ("metrics.jsonl", "summary.json", "config.toml", "final_params.msgpack", "checkpoints",
             "sweep.json", "sweep.md", "damaged-checkpoints", "metrics.csv", "tensorboard")
LOCK_NAME = ".jaxqfl.lock"
_HELD: dict[str, int] = {}  # folder -> the open lock file descriptor
_CREATED: set[str] = set()  # the locked folders this process created


def is_config_folder(path: pathlib.Path) -> bool:
    """A sweep's per-config folder (``seed=3`` or ``client_lr=0.1,seed=3``) holding a run's files."""
    return (path.is_dir() and any(part.startswith("seed=") for part in path.name.split(","))
            and any((path / f).exists() for f in ("metrics.jsonl", "summary.json")))


def lock_folder(path: pathlib.Path, flag: str = "--out") -> None:
    """Take the folder's exclusive lock (non-blocking) for this process; ``OutputError`` if another run holds it."""
    import fcntl

    key = str(pathlib.Path(path).resolve())
    if key in _HELD:
        return
    fd = os.open(pathlib.Path(path) / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise OutputError(f"{flag} {str(path)!r} is in use by another jaxqfl run (it holds {LOCK_NAME}); wait for "
                          f"it to end or choose another folder") from None
    _HELD[key] = fd


def release_locks() -> None:
    """Release every folder lock this process took (the command has returned).

    A folder that holds nothing but its lock file (a run refused after its folder was opened, e.g. when its
    data file could not be read) is left as it was found: the lock file is removed, and the folder too when
    this process created it. Both happen while the lock is still held, so no other run can be using it.
    """
    import fcntl

    for key, fd in list(_HELD.items()):
        path = pathlib.Path(key)
        try:
            if [p.name for p in path.iterdir()] == [LOCK_NAME]:
                (path / LOCK_NAME).unlink()
                if key in _CREATED:
                    path.rmdir()
        except OSError:  # e.g. the folder was removed or changed meanwhile: leave it as it is
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        del _HELD[key]
        _CREATED.discard(key)


class OutputError(ValueError):
    """An output folder that cannot be used, with the reason and what to do."""


def _unique_default(dataset: str, seed: int, root: str = "runs") -> pathlib.Path:
    """``runs/<dataset>-<YYYYmmdd-HHMMSS.mmm>-s<seed>[-N]``, created atomically (``mkdir`` fails if taken)."""
    base = pathlib.Path(root)
    base.mkdir(parents=True, exist_ok=True)
    t = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"
    name = f"{dataset}-{stamp}-s{seed}"
    for n in range(10_000):
        path = base / (name if n == 0 else f"{name}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise OutputError(f"could not create a fresh folder under {base}/ named {name}-N")


def _check_writable(path: pathlib.Path) -> None:
    probe = path / f".jaxqfl-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"--out {str(path)!r} is not writable ({e.strerror}); choose another folder") from None


def check_output_file(path: str, flag: str = "--out") -> pathlib.Path:
    """An output FILE that can be written, checked leaving nothing behind; raises ``OutputError``.

    Refused: an existing folder, an existing file that is read-only, a path under a
    file, or under a folder that is not writable. Missing folders are created when
    the file is written.
    """
    p = pathlib.Path(path)
    if p.is_dir():
        raise OutputError(f"{flag} {path!r} is a folder; give a file name")
    if p.exists() and not os.access(p, os.W_OK):
        raise OutputError(f"{flag} {path!r} exists and is not writable; choose another path")
    folder = p.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{flag} {path!r} cannot be created: {str(folder)!r} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path!r} cannot be created: the folder {str(folder)!r} is not writable")
    try:  # what os.access cannot tell: a pseudo file system (/proc, /sys), a read-only mount, a full quota
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OutputError(f"{flag} {path!r} cannot be created: no file can be written in {str(folder)!r} "
                          f"({e.strerror or e}); choose another path") from None
    return p


def prepare_out(out: str | None, *, dataset: str, seed: int, overwrite: bool) -> pathlib.Path:
    """Create (or check) the output folder and return it; raises ``OutputError`` with what to do.

    ``out=None``: a fresh folder under ``runs/``. An existing non-empty ``out`` is
    refused unless ``overwrite``, which removes a previous run's files and nothing else
    (:func:`remove_run_files`).
    """
    if out is None:
        try:
            path = _unique_default(dataset, seed)
        except OSError as e:
            raise OutputError(f"cannot create a run folder under runs/ ({e.strerror}); give --out FOLDER") from None
        _check_writable(path)
        lock_folder(path)
        _CREATED.add(str(path.resolve()))
        return path
    if not str(out).strip():
        raise OutputError(f"--out {out!r} is an empty path; give a folder (or drop --out for a fresh one "
                          f"under runs/)")
    path = pathlib.Path(out)
    if path.exists() and not path.is_dir():
        raise OutputError(f"--out {out!r} exists and is not a folder; choose another path")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"--out {out!r} cannot be created ({e.strerror}); choose another folder") from None
    _check_writable(path)
    lock_folder(path)  # before the emptiness check: two runs cannot both find the folder empty
    if created:
        _CREATED.add(str(path.resolve()))
    if any(p.name != LOCK_NAME for p in path.iterdir()):
        if not overwrite:
            raise OutputError(f"--out {out!r} exists and is not empty; add --overwrite to replace the run in it, "
                              f"--resume {out} to continue it, or choose another folder")
        remove_run_files(path)
    return path


def _written_by_a_run(folder: str, name: str) -> bool:
    """Whether ``name`` inside the run's sub-folder ``folder`` is what a run writes there: orbax's round folders
    (``12``, and their temporary names while written), round folders set aside (``12-20261206-101500``), event
    files."""
    if folder in ("checkpoints", "damaged-checkpoints"):
        step = name.split(".", 1)[0].split("-", 1)[0]
        return step.isdigit()
    return folder == "tensorboard" and name.startswith("events.out.tfevents")


def remove_run_files(path: pathlib.Path) -> None:
    """Remove from ``path`` the files a run writes there (``RUN_FILES``, the contents of its sub-folders, a sweep's
    config folders), and nothing else: a file of the user's in one of those sub-folders stays, with the folder."""
    for name in RUN_FILES:
        target = path / name
        if target.is_dir() and not target.is_symlink():
            for entry in target.iterdir():
                if _written_by_a_run(name, entry.name):
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            if not any(target.iterdir()):
                target.rmdir()
        elif target.exists() or target.is_symlink():
            target.unlink()
    for config in [p for p in path.iterdir() if is_config_folder(p)]:
        remove_run_files(config)
        if not any(config.iterdir()):
            config.rmdir()


def write_json(path: pathlib.Path, obj) -> None:
    """Write strict JSON atomically (a temporary file renamed over ``path``)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(strict_dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def versions() -> dict:
    """The versions of jaxqfl, jax and jaxlib, and the device kind of the first device."""
    import jax
    import jaxlib

    import jaxqfl

    dev = jax.devices()[0]
    return {"jaxqfl": jaxqfl.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "platform": dev.platform, "device_kind": dev.device_kind, "device_count": jax.device_count()}
