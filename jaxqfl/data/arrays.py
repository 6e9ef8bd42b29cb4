"""The user's own data: arrays in, a :class:`Population` out.

:func:`from_arrays` takes a feature array ``x[N, ...]`` and targets ``y`` and
makes the clients either

- *natural*: from ``client_ids[N]`` (any integers or strings; rows with the same
  id form one client). Client ``i`` is the ``i``-th id of ``np.unique(client_ids)``
  (sorted order) and keeps its rows in the order given, or
- from a partitioner (``"iid"``, ``"dirichlet"``, ``"shards"``, ``"quantity"``,
  :mod:`jaxqfl.data.partition`) over ``num_clients`` clients.

The task decides what ``y`` is:

==================  =======================================================  ==============
task                ``y``                                                    ``num_classes``
==================  =======================================================  ==============
``classification``  ``[N]`` integer labels ``>= 0``                          ``max label + 1``
``regression``      ``[N]`` or ``[N, k]`` real targets (stored as float32)   ``0``
``clustering``      ``[N]`` integer component ids (used only for ARI / NMI)  ``max id + 1``
==================  =======================================================  ==============

``task=None`` infers it from ``y``: integer (or bool) 1-D labels mean
classification, anything else regression. Features are stored as float32
unscaled (divide images by 255 yourself).

Test set: ``(x_test, y_test)`` when given; otherwise ``floor(test_fraction * n)``
rows are held out at random (``seed``) -- from each natural client its own
share ``floor(test_fraction * n_k)`` (a client keeps at least one row), or from
the pooled rows before a partitioner splits the rest.

Every refusal names the array (or, through :func:`jaxqfl.data.files.load_npz`,
the file and key), the bad value and what is allowed.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from jaxqfl.data import partition as partitioners
from jaxqfl.data.population import TASKS, Population, from_client_indices

__all__ = ["from_arrays"]


def from_arrays(
    x,
    y,
    *,
    client_ids=None,
    partition: str | None = None,
    num_clients: int | None = None,
    x_test=None,
    y_test=None,
    task: str | None = None,
    num_classes: int | None = None,
    seed: int = 0,
    test_fraction: float = 0.1,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    sigma: float = 1.0,
    name: str = "arrays",
    source: str | None = None,
    key_names: dict | None = None,
) -> Population:
    """Build a federated population from the user's arrays (see module docstring).

    Args:
        x: ``[N, ...]`` numeric features.
        y: ``[N]`` labels or ``[N]`` / ``[N, k]`` regression targets.
        client_ids: ``[N]`` client of each row (integers or strings), for natural clients.
        partition: ``None`` (``"natural"`` when ``client_ids`` is given, else
            ``"iid"``), ``"natural"`` or a partitioner of :mod:`jaxqfl.data.partition`;
            a partitioner re-splits the pooled rows and ignores ``client_ids``.
        num_clients: clients of a partitioner (required then); with natural
            clients, if given, it must equal the number of distinct ids.
        x_test, y_test: the test set (both or neither).
        task: ``"classification"``, ``"regression"``, ``"clustering"`` or None (inferred).
        num_classes: number of classes (classification, clustering); default ``max label + 1``.
        seed: seeds the held-out split and the partitioner.
        test_fraction: share held out when no test set is given, in ``(0, 1)``.
        alpha, shards_per_client, sigma: hyper-parameters of the partitioners.
        name: the population's name.
        source, key_names: for loaders: ``source`` (e.g. the file) prefixes every
            error message and ``key_names`` renames the arguments in them
            (``{"client_ids": "client_id"}``).

    Raises:
        ValueError: naming the bad array, its value and what is allowed.
    """
    names = {k: k for k in ("x", "y", "client_ids", "x_test", "y_test")}
    names.update(key_names or {})
    where = f"{source}: " if source else ""

    def fail(msg: str):
        raise ValueError(where + msg)

    if task is not None and task not in TASKS:
        fail(f"task {task!r} is not one of {', '.join(TASKS)}")
    if not isinstance(test_fraction, numbers.Real) or not 0 < test_fraction < 1:
        fail(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    x = _numeric(names["x"], x, fail)
    if x.ndim < 2:
        fail(f"{names['x']} has shape {x.shape}; expected [N, features...] (a 1-D x is ambiguous: "
             "reshape one feature per row to [N, 1])")
    n = x.shape[0]
    if n == 0:
        fail(f"{names['x']} is empty (shape {x.shape})")
    y = _numeric(names["y"], y, fail)
    if task is None:
        task = "classification" if y.ndim == 1 and _is_integer(y) else "regression"
    _check_targets(names["y"], y, n, names["x"], task, fail)

    if (x_test is None) != (y_test is None):
        given, missing = ("x_test", "y_test") if y_test is None else ("y_test", "x_test")
        fail(f"{names[given]} is given but {names[missing]} is not: give both or neither")
    if x_test is not None:
        x_test = _numeric(names["x_test"], x_test, fail)
        y_test = _numeric(names["y_test"], y_test, fail)
        if x_test.ndim < 1 or x_test.shape[1:] != x.shape[1:] or x_test.shape[0] == 0:
            fail(f"{names['x_test']} has shape {x_test.shape}; expected [M >= 1, {', '.join(map(str, x.shape[1:]))}] "
                 f"like {names['x']} {x.shape}")
        _check_targets(names["y_test"], y_test, x_test.shape[0], names["x_test"], task, fail)
        if y_test.shape[1:] != y.shape[1:]:
            fail(f"{names['y_test']} has shape {y_test.shape} but {names['y']} has shape {y.shape}: "
                 "the targets' trailing shape must match")

    if task == "regression":
        num_classes = 0
        y = y.astype(np.float32)
        y_test = None if y_test is None else y_test.astype(np.float32)
    else:
        largest = int(max(y.max(), -1 if y_test is None else y_test.max()))
        if num_classes is None:
            num_classes = largest + 1
        elif not isinstance(num_classes, numbers.Integral) or num_classes <= largest:
            fail(f"num_classes={num_classes!r} but the labels reach {largest}: allowed is an integer > {largest}")
        y = y.astype(np.int32)
        y_test = None if y_test is None else y_test.astype(np.int32)
    x = x.astype(np.float32, copy=False)
    x_test = None if x_test is None else x_test.astype(np.float32, copy=False)

    if client_ids is not None:
        client_ids = np.asarray(client_ids)
        if client_ids.shape != (n,):
            fail(f"{names['client_ids']} has shape {client_ids.shape}; expected [{n}], one id per row of {names['x']}")
        if not (_is_integer(client_ids) or client_ids.dtype.kind in "US"):
            fail(f"{names['client_ids']} has dtype {client_ids.dtype}; expected integers or strings")
    if partition is None:
        partition = "natural" if client_ids is not None else "iid"
    allowed = ("natural",) + partitioners.NAMES
    if partition not in allowed:
        fail(f"unknown partition {partition!r}; allowed partitions are {', '.join(allowed)}")
    if partition == "natural" and client_ids is None:
        fail(f"partition 'natural' needs {names['client_ids']} (the client of each row)")

    rng = np.random.default_rng(np.random.SeedSequence(seed))
    if partition == "natural":
        _, client_of_row = np.unique(client_ids, return_inverse=True)
        client_of_row = client_of_row.reshape(-1)
        count = int(client_of_row.max()) + 1
        if num_clients is not None and num_clients != count:
            fail(f"num_clients={num_clients} but {names['client_ids']} holds {count} distinct clients; "
                 "with natural clients leave num_clients unset or equal to that")
        is_test = np.zeros(n, bool)
        if x_test is None:
            is_test = _held_out_per_client(client_of_row, count, test_fraction, rng)
            if not is_test.any():
                fail(f"test_fraction={test_fraction} holds out no row (every client has fewer than "
                     f"{math.ceil(1 / test_fraction)} rows): pass {names['x_test']} and {names['y_test']}, or "
                     f"(Python API) a larger test_fraction argument")
            x_test, y_test = x[is_test], y[is_test]
        train = np.flatnonzero(~is_test)
        order = train[np.argsort(client_of_row[train], kind="stable")]
        bounds = np.cumsum(np.bincount(client_of_row[train], minlength=count))[:-1]
        indices = np.split(order, bounds)
        label = "natural"
    else:
        if num_clients is None:
            fail(f"partition {partition!r} needs num_clients (--num-clients on the command line): the data has "
                 f"no client ids")
        rows = np.arange(n)
        if x_test is None:
            held = math.floor(test_fraction * n)
            if held == 0:
                fail(f"test_fraction={test_fraction} of {n} rows holds out none: pass x_test and y_test")
            perm = rng.permutation(n)
            x_test, y_test = x[np.sort(perm[:held])], y[np.sort(perm[:held])]
            rows = np.sort(perm[held:])
        labels = y[rows] if (task != "regression") else np.zeros(rows.size, np.int32)
        split, label = partitioners.by_name(partition, alpha, shards_per_client, sigma,
                                            num_classes if task != "regression" else None)
        try:
            indices = [rows[ix] for ix in split(labels, num_clients, rng.integers(2**63))]
        except ValueError as err:
            fail(str(err))
    return from_client_indices(x, y, indices, x_test, y_test, num_classes, name=f"{name}/{label}", task=task)


def _is_integer(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_


def _numeric(key: str, a, fail) -> np.ndarray:
    a = np.asarray(a)
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        fail(f"{key} has dtype {a.dtype}; expected numbers")
    if np.issubdtype(a.dtype, np.complexfloating):
        fail(f"{key} has complex dtype {a.dtype}; expected real numbers")
    if np.issubdtype(a.dtype, np.floating):
        finite = np.isfinite(a)
        if not finite.all():
            i = np.unravel_index(int(np.flatnonzero(~finite.reshape(-1))[0]), a.shape)
            fail(f"{key} holds {a.size - np.count_nonzero(finite)} NaN or Inf values (first {a[i]} at index "
                 f"{tuple(int(v) for v in i)}); values must be finite")
    return a


def _check_targets(key: str, y: np.ndarray, n: int, x_key: str, task: str, fail) -> None:
    allowed_ndim = (1, 2) if task == "regression" else (1,)
    if y.ndim not in allowed_ndim or y.shape[0] != n:
        shape = f"[{n}] or [{n}, k]" if task == "regression" else f"[{n}]"
        fail(f"{key} has shape {y.shape}; expected {shape} ({x_key} has {n} rows) for {task}")
    if task == "regression":
        return
    if not _is_integer(y):
        frac = np.flatnonzero(np.mod(y, 1) != 0)
        if frac.size:
            fail(f"{key} holds the non-integer label {y[frac[0]].item()!r} at index {int(frac[0])}; {task} "
                 "needs integer labels (pass task='regression' for real targets)")
    neg = np.flatnonzero(y < 0)
    if neg.size:
        fail(f"{key} holds the label {y[neg[0]].item()!r} at index {int(neg[0])}; labels must be >= 0")
    check_label_range(key, y, fail)


#: Labels are stored as int32: the largest allowed label is 2^31 - 1.
LABEL_LIMIT = 2**31


def check_label_range(key: str, y: np.ndarray, fail) -> None:
    """Refuse a label >= 2^31 before the int32 cast would wrap it (2^32 + 1 would silently become 1)."""
    y = np.asarray(y)
    if y.size == 0 or y.dtype == np.bool_:
        return
    big = np.flatnonzero((y >= LABEL_LIMIT).reshape(-1))
    if big.size:
        value = y.reshape(-1)[big[0]].item()
        fail(f"{key} holds the label {value!r} at index {int(big[0])}; labels are stored as int32 and must lie "
             f"in [0, 2^31 - 1 = {LABEL_LIMIT - 1}] (renumber the classes 0, 1, ..., or pass task='regression' "
             "for real targets)")


def _held_out_per_client(client_of_row: np.ndarray, count: int, fraction: float, rng) -> np.ndarray:
    """``[N]`` bool: ``floor(fraction * n_k)`` rows of each client chosen uniformly at random."""
    sizes = np.bincount(client_of_row, minlength=count)
    held = np.floor(fraction * sizes).astype(np.int64)
    order = np.lexsort((rng.random(client_of_row.size), client_of_row))  # by client, random within
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.empty(client_of_row.size, np.int64)
    rank[order] = np.arange(client_of_row.size) - np.repeat(starts, sizes)
    return rank < held[client_of_row]
