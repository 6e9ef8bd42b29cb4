"""The user's own data from files: an ``.npz`` archive, or a folder in LEAF's JSON layout.

``.npz`` (``--dataset npz --data-path FILE``) holds

    x          [N, ...]        numeric features
    y          [N] or [N, k]   labels (integer) or regression targets
    client_id  [N]  optional   the client of each row (integers or strings): natural clients
    tier       [N]  optional   the client tier of each row (integers 0..T-1, one per client), for
                               ``--tiers data/PRESET/UPLINK;...`` (:func:`load_npz_tiers`)
    x_test     [M, ...]  optional, with y_test: the test set (else rows are held out)
    y_test     [M] or [M, k]

LEAF (Caldas et al. 2018; ``--dataset leaf --data-path DIR``): ``DIR/train/*.json``
and ``DIR/test/*.json``, each file an object

    {"users": [u, ...], "num_samples": [n_u, ...],
     "user_data": {u: {"x": [row, ...], "y": [label, ...]}, ...}}

(the layout FEMNIST and Synthetic ship in; rows are numbers or nested lists of
numbers). The training users, in the order of the sorted file names and then
of ``users``, are the natural clients; the test files' rows, pooled, are the
test set. A user listed with no training rows is left out (it cannot train).
Text datasets (Shakespeare's rows are strings ``x`` with the next character
``y``) are read for ``task="next-token"`` only, as byte windows
(:func:`jaxqfl.data.text.from_leaf_strings`); other tasks refuse them.

Both loaders hand the arrays to :func:`jaxqfl.data.arrays.from_arrays` and
refuse malformed input with a ``ValueError`` naming the file, the key and the value.

Reference:
    Caldas, Duddu, Wu, Li, Konečný, McMahan, Smith, Talwalkar. LEAF: A
    Benchmark for Federated Settings. arXiv:1812.01097, 2018.
"""
from __future__ import annotations

import errno
import glob
import json
import os
import sys
import zipfile

import numpy as np

from jaxqfl.data.arrays import check_label_range, from_arrays
from jaxqfl.data.npz_archive import open_npz

__all__ = ["load_npz", "load_npz_tiers", "tiers_by_client", "load_leaf", "NPZ_KEYS"]

#: How deeply a LEAF row may nest its lists (NumPy's 64 dimensions, less the axis of rows).
MAX_ROW_DEPTH = 63
#: The keys an ``.npz`` may hold (``x`` and ``y`` are required).
NPZ_KEYS = ("x", "y", "client_id", "x_test", "y_test", "tier")


def _exists(path: str, kind: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, f"no {kind} at {path!r}", path)


def _open_npz(path: str):
    _exists(path, ".npz file")
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory; expected an .npz file with keys {list(NPZ_KEYS)}")
    return open_npz(path, "x, y")


def _read_key(path: str, archive, k: str) -> np.ndarray:
    try:
        return archive[k]
    except ValueError as err:  # object arrays need pickle, which is refused
        raise ValueError(f"{path!r}: key {k!r} cannot be read without pickle ({err}); "
                         "store numeric (or, for client_id, string) arrays") from err
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path!r}: key {k!r} cannot be read: {err}") from err


def tiers_by_client(client_ids, tier_of_row, num_tiers: int, *, source: str = "arrays") -> np.ndarray:
    """``[C]`` int32: the tier of each natural client, from a per-row tier column.

    Client ``i`` is the ``i``-th id of ``np.unique(client_ids)`` (the natural clients of
    :func:`jaxqfl.data.arrays.from_arrays`); its tier is the value its rows share.

    Raises:
      ValueError: naming ``source``: a column of the wrong length or type, a tier outside
        ``[0, num_tiers)``, or a client whose rows disagree (the client and both tiers named).
    """
    ids, tiers = np.asarray(client_ids), np.asarray(tier_of_row)
    if tiers.shape != ids.shape or tiers.ndim != 1:
        raise ValueError(f"{source}: 'tier' has shape {tiers.shape}; expected {ids.shape}, one tier per row like "
                         f"'client_id'")
    if not (np.issubdtype(tiers.dtype, np.integer) and tiers.dtype != np.bool_):
        raise ValueError(f"{source}: 'tier' has dtype {tiers.dtype}; expected integers 0 to {num_tiers - 1}")
    bad = (tiers < 0) | (tiers >= num_tiers)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{source}: 'tier' holds {int(tiers[i])} (row {i}); --tiers lists {num_tiers} tier(s), "
                         f"so tiers are 0 to {num_tiers - 1}")
    _, client_of_row = np.unique(ids, return_inverse=True)
    client_of_row = client_of_row.reshape(-1)
    of_client = np.full(int(client_of_row.max()) + 1, -1, np.int64)
    of_client[client_of_row] = tiers  # the last row of each client wins; any disagreement is refused below
    clash = of_client[client_of_row] != tiers
    if clash.any():
        i = int(np.flatnonzero(clash)[0])
        raise ValueError(f"{source}: client {ids[i].item()!r} has rows in tier {int(tiers[i])} and in tier "
                         f"{int(of_client[client_of_row[i]])}; a client's rows must share one tier")
    return of_client.astype(np.int32)


def load_npz_tiers(path, num_tiers: int) -> np.ndarray:
    """``[C]`` int32: each natural client's tier from the ``.npz``'s ``tier`` and ``client_id`` keys.

    Raises:
      ValueError: the file lacks either key (named), or :func:`tiers_by_client`'s refusals.
    """
    path = os.fspath(path)
    with _open_npz(path) as archive:
        missing = [k for k in ("client_id", "tier") if k not in archive.files]
        if missing:
            raise ValueError(f"{path!r} lacks the key(s) {missing} that tiers read from the data need: 'client_id' "
                             f"(the natural client of each row) and 'tier' (its tier, 0 to {num_tiers - 1}); "
                             f"it has {sorted(archive.files)}")
        ids, tiers = _read_key(path, archive, "client_id"), _read_key(path, archive, "tier")
    return tiers_by_client(ids, tiers, num_tiers, source=repr(path))


def load_npz(path, **kwargs):
    """The population of the ``.npz`` at ``path`` (see module docstring).

    ``kwargs`` go to :func:`from_arrays` (``task``, ``partition``,
    ``num_clients``, ``seed``, ...). Natural clients when the file has ``client_id``.
    """
    path = os.fspath(path)
    with _open_npz(path) as archive:
        missing = [k for k in ("x", "y") if k not in archive.files]
        if missing:
            raise ValueError(f"{path!r} lacks the key(s) {missing}; it has {sorted(archive.files)}, "
                             f"needs x and y (optional: client_id, x_test, y_test, tier)")
        unknown = sorted(set(archive.files) - set(NPZ_KEYS))
        if unknown:
            raise ValueError(f"{path!r} has the unknown key(s) {unknown}; allowed keys are {list(NPZ_KEYS)}")
        arrays = {k: _read_key(path, archive, k) for k in archive.files if k != "tier"}
    kwargs.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    return from_arrays(
        arrays["x"], arrays["y"], client_ids=arrays.get("client_id"), x_test=arrays.get("x_test"),
        y_test=arrays.get("y_test"), source=repr(path),
        key_names={k: f"key {k!r}" for k in ("x", "y", "x_test", "y_test")} | {"client_ids": "key 'client_id'"},
        **kwargs,
    )


def _leaf_split(folder: str, split: str, text: bool = False, labels: bool = True):
    """Rows of every user of ``folder/split/*.json``: (users, list of x arrays, list of y arrays).

    ``labels``: integer ``y`` entries are class labels (not regression targets), checked against int32's range.
    """
    files = sorted(glob.glob(os.path.join(folder, split, "*.json")))
    if not files:
        raise ValueError(f"{os.path.join(folder, split)!r} holds no *.json file; LEAF's layout is "
                         f"DIR/train/*.json and DIR/test/*.json")
    users, xs, ys, seen = [], [], [], {}
    for f in files:
        try:
            with open(f) as fh:
                blob = json.load(fh)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{f!r} is not readable JSON: {err}") from err
        except RecursionError:  # Python's parser recurses once per level of nesting
            raise ValueError(f"{f!r} nests its JSON deeper than Python's parser can read (more than about "
                             f"{sys.getrecursionlimit()} levels); LEAF rows are lists of numbers nested at most "
                             f"{MAX_ROW_DEPTH} deep") from None
        if not isinstance(blob, dict):
            raise ValueError(f"{f!r} holds a JSON {type(blob).__name__}; expected an object with keys "
                             "users, num_samples, user_data")
        missing = [k for k in ("users", "num_samples", "user_data") if k not in blob]
        if missing:
            raise ValueError(f"{f!r} lacks the key(s) {missing}; it has {sorted(blob)}")
        names, counts, data = blob["users"], blob["num_samples"], blob["user_data"]
        if not isinstance(names, list) or not isinstance(counts, list) or not isinstance(data, dict):
            raise ValueError(f"{f!r}: 'users' and 'num_samples' must be lists and 'user_data' an object, got "
                             f"{type(names).__name__}, {type(counts).__name__}, {type(data).__name__}")
        if len(names) != len(counts):
            raise ValueError(f"{f!r}: 'users' lists {len(names)} users but 'num_samples' has {len(counts)} entries")
        for u, count in zip(names, counts):
            if u in seen:
                raise ValueError(f"{f!r}: user {u!r} is listed again (first in {seen[u]!r}); users must be unique")
            seen[u] = f
            if u not in data:
                raise ValueError(f"{f!r}: user {u!r} is in 'users' but not in 'user_data'")
            record = data[u]
            if not isinstance(record, dict) or "x" not in record or "y" not in record:
                raise ValueError(f"{f!r}: user_data[{u!r}] must be an object with keys 'x' and 'y', got "
                                 f"{record if not isinstance(record, dict) else sorted(record)!r}")
            if text:
                x, y = _leaf_strings(f, u, "x", record["x"]), _leaf_strings(f, u, "y", record["y"])
            else:
                x, y = _leaf_rows(f, u, "x", record["x"]), _leaf_rows(f, u, "y", record["y"])
            if labels and not text and (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
                check_label_range(f"{f!r}: user_data[{u!r}]['y']", y, _raise)
            if not isinstance(count, int) or isinstance(count, bool) or not (len(x) == len(y) == count):
                raise ValueError(f"{f!r}: user {u!r} has num_samples {count!r}, but {len(x)} rows in "
                                 f"user_data[{u!r}]['x'] and {len(y)} in ['y']: they must be equal")
            if count == 0:
                continue
            if not text and xs and x.shape[1:] != xs[0].shape[1:]:
                raise ValueError(f"{f!r}: user_data[{u!r}]['x'] has rows of shape {x.shape[1:]}, but user "
                                 f"{users[0]!r}'s have shape {xs[0].shape[1:]}")
            if not text and ys and y.shape[1:] != ys[0].shape[1:]:
                raise ValueError(f"{f!r}: user_data[{u!r}]['y'] has entries of shape {y.shape[1:]}, but user "
                                 f"{users[0]!r}'s have shape {ys[0].shape[1:]}")
            users.append(u)
            xs.append(x)
            ys.append(y)
    if not users:
        raise ValueError(f"{os.path.join(folder, split)!r}: no user holds any row")
    return users, xs, ys


def _leaf_strings(f: str, user, key: str, rows) -> list:
    where = f"{f!r}: user_data[{user!r}][{key!r}]"
    if not isinstance(rows, list) or not all(isinstance(r, str) for r in rows):
        raise ValueError(f"{where} must be a list of strings for the next-token task (LEAF Shakespeare's "
                         f"layout), got {type(rows).__name__ if not isinstance(rows, list) else 'non-string rows'}")
    return rows


def _raise(message: str):
    raise ValueError(message)


def _leaf_rows(f: str, user, key: str, rows) -> np.ndarray:
    where = f"{f!r}: user_data[{user!r}][{key!r}]"
    if not isinstance(rows, list):
        raise ValueError(f"{where} is a {type(rows).__name__}; expected a list with one entry per example")
    if rows and isinstance(rows[0], str):
        raise ValueError(f"{where} holds text ({rows[0][:20]!r}...); text rows are read for the next-token "
                         "task only (task='next-token', --task next-token)")
    depth, probe = 0, rows
    while isinstance(probe, list) and probe:
        depth, probe = depth + 1, probe[0]
    if depth > MAX_ROW_DEPTH + 1:  # the list of rows, then each row's nesting
        raise ValueError(f"{where} nests its first row {depth - 1} lists deep; a row may nest at most "
                         f"{MAX_ROW_DEPTH} (NumPy's dimension limit, less the rows' own axis)")
    try:
        a = np.asarray(rows)
    except ValueError as err:  # ragged lists
        raise ValueError(f"{where} has rows of different lengths: {err}") from err
    if rows and not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        huge = next((v for v in a.reshape(-1) if isinstance(v, int) and not isinstance(v, bool)
                     and not -2**63 <= v < 2**64), None) if a.dtype == object else None
        if huge is not None:
            raise ValueError(f"{where} holds the integer {huge}, beyond 64 bits; labels must lie in "
                             f"[0, 2^31 - 1] and other values must be numbers")
        raise ValueError(f"{where} holds non-numeric values (dtype {a.dtype}); expected numbers")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise ValueError(f"{where} holds NaN or Inf values; expected finite numbers")
    return a


def load_leaf(folder, **kwargs):
    """The population of a LEAF folder ``folder/{train,test}/*.json``, natural clients (see module docstring).

    ``kwargs`` go to :func:`from_arrays` (``task``, ``seed``, ...; a
    ``partition`` re-splits the pooled training rows).
    """
    folder = os.fspath(folder)
    _exists(folder, "LEAF folder")
    if not os.path.isdir(folder):
        raise ValueError(f"{folder!r} is a file; expected a LEAF folder holding train/ and test/")
    for split in ("train", "test"):
        if not os.path.isdir(os.path.join(folder, split)):
            raise ValueError(f"{folder!r} has no {split}/ folder; LEAF's layout is DIR/train/*.json and DIR/test/*.json")
    if kwargs.get("task") == "next-token":
        from jaxqfl.data.text import from_leaf_strings

        _, xs, ys = _leaf_split(folder, "train", text=True)
        _, xs_test, ys_test = _leaf_split(folder, "test", text=True)
        return from_leaf_strings(xs, ys, [r for rows in xs_test for r in rows], [r for rows in ys_test for r in rows],
                                 name=f"leaf:{os.path.basename(os.path.normpath(folder))}",
                                 **{k: kwargs[k] for k in ("partition", "num_clients", "sigma", "seed") if k in kwargs})
    labels = kwargs.get("task") != "regression"
    users, xs, ys = _leaf_split(folder, "train", labels=labels)
    _, xs_test, ys_test = _leaf_split(folder, "test", labels=labels)
    if xs_test[0].shape[1:] != xs[0].shape[1:]:
        raise ValueError(f"{folder!r}: test rows have shape {xs_test[0].shape[1:]}, training rows {xs[0].shape[1:]}")
    client_ids = np.repeat(np.arange(len(users)), [len(x) for x in xs])  # in file order: 0, 1, ...
    kwargs.setdefault("name", f"leaf:{os.path.basename(os.path.normpath(folder))}")
    return from_arrays(
        np.concatenate(xs), np.concatenate(ys), client_ids=client_ids, x_test=np.concatenate(xs_test),
        y_test=np.concatenate(ys_test), source=repr(folder), **kwargs,
    )
