"""The federated population: flat example arrays plus per-client offsets and counts (CSR).

A population of ``C`` clients holding ``N`` examples in all is

    x[N, *feature_shape]   float32 features, client-major
    y[N]                   int32 labels in [0, num_classes) (classification, clustering)
    or y[N] / y[N, k]      float32 targets (regression, num_classes == 0)
    or y[N, T]             int32 next tokens in [0, num_classes), -1 = padding (next-token;
                           x[N, T] then holds the input token ids, see jaxqfl.data.text)
    offsets[C]             int32, client i's rows are x[offsets[i] : offsets[i] + counts[i]]
    counts[C]              int32, >= 1

plus a held-out test set ``(x_test, y_test)`` that travels with it, and the
``task`` the data is for (``"classification"``, ``"regression"``,
``"clustering"`` or ``"next-token"``; by default classification when ``num_classes > 0``, else
regression). Clustering data carries the true component ids as labels (used
only for reporting ARI / NMI). Memory is
O(N), not O(C x largest client), and a client's local batch is a gather of
``batch_size`` row indices drawn in ``[0, counts[i])`` (DESIGN.md, "Data layout").
The arrays live on the host (NumPy); the engine moves them to the devices, or, for
a population read from disk (``jaxqfl.data.packed``), ``x`` and ``y`` are read-only
memory maps of which only the rows a cohort needs are ever read.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

#: The learning tasks a population can be for.
TASKS = ("classification", "regression", "clustering", "next-token")
#: The target of a padding position in next-token data (ignored by the loss and the metrics).
PAD_TARGET = -1

@dataclasses.dataclass(frozen=True, eq=False)
class Population:
    """A federated dataset in CSR layout, validated on construction (see module docstring)."""

    x: np.ndarray
    y: np.ndarray
    offsets: np.ndarray
    counts: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str = ""
    task: str = ""
    # [C] test rows of each client, when the test set is the clients' own held-out rows, client-major
    # (client c owns x_test[sum(test_counts[:c]) : ... + test_counts[c]]; rows past sum(test_counts) belong to
    # no client and count in the pooled metrics only); None: a pooled test set only
    test_counts: np.ndarray | None = None

    def __post_init__(self):
        # Accept array-likes (lists, JAX arrays) but store NumPy arrays: the population lives on the host.
        for field in ("x", "y", "offsets", "counts", "x_test", "y_test"):
            object.__setattr__(self, field, np.asarray(getattr(self, field)))
        object.__setattr__(self, "num_classes", int(self.num_classes))
        if self.test_counts is not None:
            object.__setattr__(self, "test_counts", np.asarray(self.test_counts))
        if not self.task:
            object.__setattr__(self, "task", "classification" if self.num_classes > 0 else "regression")
        _validate(self)

    @property
    def num_clients(self) -> int:
        return int(self.counts.shape[0])

    @property
    def num_examples(self) -> int:
        return int(self.x.shape[0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def max_count(self) -> int:
        return int(self.counts.max())

    @property
    def is_classification(self) -> bool:
        return self.num_classes > 0

    def client(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Client ``i``'s examples ``(x, y)``."""
        if not 0 <= i < self.num_clients:
            raise IndexError(f"client index {i} is outside [0, {self.num_clients})")
        s = slice(int(self.offsets[i]), int(self.offsets[i] + self.counts[i]))
        return self.x[s], self.y[s]

    def client_ids_of_rows(self) -> np.ndarray:
        """``[N]`` int32: the client that owns each row."""
        return np.repeat(np.arange(self.num_clients, dtype=np.int32), self.counts)


def from_client_indices(
    x: np.ndarray,
    y: np.ndarray,
    client_indices: Sequence[np.ndarray],
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    name: str = "",
    task: str = "",
) -> Population:
    """Build a population from per-client row indices into ``(x, y)``.

    Rows are copied client-major, so client ``i`` owns the contiguous block
    ``x[offsets[i] : offsets[i] + counts[i]]``. Indices may repeat across
    clients (the copy is then duplicated); every client must hold at least one row.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if len(client_indices) == 0:
        raise ValueError("client_indices is empty: a population needs at least one client")
    counts = np.array([len(ix) for ix in client_indices], dtype=np.int64)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise ValueError(
            f"client {int(empty[0])} has no examples ({empty.size} empty clients in all); "
            "every client must hold at least one example"
        )
    order = np.concatenate([np.asarray(ix, dtype=np.int64) for ix in client_indices])
    if order.min() < 0 or order.max() >= x.shape[0]:
        raise ValueError(f"client indices must lie in [0, {x.shape[0]}), got range [{order.min()}, {order.max()}]")
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return Population(
        x=x[order],
        y=y[order],
        offsets=offsets.astype(np.int32),
        counts=counts.astype(np.int32),
        x_test=np.asarray(x_test),
        y_test=np.asarray(y_test),
        num_classes=int(num_classes),
        name=name,
        task=task,
    )


#: Rows checked at a time for NaN/Inf: the check's temporary stays small for a million clients.
_FINITE_CHECK_ROWS = 1 << 16


def check_finite(name: str, a: np.ndarray) -> None:
    """Refuse a floating array holding NaN or Inf (``ValueError`` naming ``name``, the count and the first row)."""
    if not np.issubdtype(a.dtype, np.floating):
        return
    bad, first = 0, None
    for start in range(0, max(a.shape[0], 1), _FINITE_CHECK_ROWS):
        finite = np.isfinite(a[start:start + _FINITE_CHECK_ROWS])
        if not finite.all():
            bad += int(finite.size - np.count_nonzero(finite))
            if first is None:
                first = start + int(np.flatnonzero(~finite.reshape(finite.shape[0], -1).all(axis=1))[0])
    if bad:
        raise ValueError(
            f"{name} holds {bad} NaN or Inf values (the first in row {first}); features and targets must be finite"
        )


def check_labels(name: str, y: np.ndarray, num_classes: int, low: int = 0) -> None:
    """Refuse class labels that are fractional or outside ``[low, num_classes)`` (none checked for regression)."""
    if num_classes <= 0:
        return
    if not np.issubdtype(y.dtype, np.integer):
        fractional = np.flatnonzero(np.mod(y, 1) != 0)
        if fractional.size:
            raise ValueError(
                f"{name} must hold integer class labels for classification, got dtype {y.dtype} "
                f"with non-integer value {y.flat[fractional[0]].item()!r} at index {int(fractional[0])}"
            )
    if y.size and (y.min() < low or y.max() >= num_classes):
        raise ValueError(
            f"{name} has labels in [{y.min()}, {y.max()}], outside the allowed range [{low}, {num_classes})"
        )


def _validate(p: Population) -> None:
    if p.num_classes < 0:
        raise ValueError(f"num_classes must be >= 0 (0 means regression), got {p.num_classes}")
    if p.task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {p.task!r}")
    if (p.task == "regression") != (p.num_classes == 0):
        raise ValueError(
            f"task {p.task!r} with num_classes={p.num_classes}: regression has num_classes 0, "
            "classification and clustering have num_classes >= 1"
        )
    if p.x.ndim < 1 or p.x.shape[0] == 0:
        raise ValueError(f"the population is empty: x has shape {p.x.shape}")
    # Targets: [N] labels; regression also [N, k]; next-token [N, T] as x.
    if p.task == "next-token":
        if p.x.ndim != 2 or p.y.shape != p.x.shape:
            raise ValueError(f"next-token data needs token ids x [N, T] and next tokens y [N, T] of the same shape, "
                             f"got x {p.x.shape} and y {p.y.shape}")
    else:
        allowed_ndim = (1, 2) if p.task == "regression" else (1,)
        if p.y.ndim not in allowed_ndim or p.y.shape[0] != p.x.shape[0]:
            shape = "[N] or [N, k]" if p.task == "regression" else "[N]"
            raise ValueError(f"y has shape {p.y.shape}, but x has {p.x.shape[0]} rows: y must be {shape} with N rows")
    if p.x_test.ndim < 1 or p.x_test.shape[0] == 0:
        raise ValueError(f"the test set is empty: x_test has shape {p.x_test.shape}")
    if p.y_test.shape != (p.x_test.shape[0],) + p.y.shape[1:]:
        raise ValueError(
            f"y_test has shape {p.y_test.shape}, but x_test has {p.x_test.shape[0]} rows "
            f"and y has shape {p.y.shape}"
        )
    if p.x_test.shape[1:] != p.x.shape[1:]:
        raise ValueError(f"test features have shape {p.x_test.shape[1:]}, training features {p.x.shape[1:]}")
    if p.test_counts is not None:
        tc = p.test_counts
        if tc.shape != p.counts.shape or not np.issubdtype(tc.dtype, np.integer) or (tc.size and tc.min() < 0) \
                or int(tc.sum()) > p.x_test.shape[0]:
            raise ValueError(f"test_counts must be {p.counts.shape[0]} non-negative integers (one per client) "
                             f"summing to at most the {p.x_test.shape[0]} test rows; got shape {tc.shape}, dtype {tc.dtype}, "
                             f"sum {int(tc.sum()) if np.issubdtype(tc.dtype, np.number) else '?'}")
    if p.offsets.shape != p.counts.shape or p.counts.ndim != 1:
        raise ValueError(f"offsets {p.offsets.shape} and counts {p.counts.shape} must be 1-D of equal length")
    if p.counts.size == 0:
        raise ValueError(f"the population has no clients: counts has shape {p.counts.shape}")
    if p.counts.min() < 1:
        raise ValueError(f"client {int(np.argmin(p.counts))} has {p.counts.min()} examples; every client needs >= 1")
    total = int(p.counts.sum(dtype=np.int64))
    if total != p.x.shape[0]:
        raise ValueError(f"counts sum to {total}, but x has {p.x.shape[0]} rows: they must be equal")
    expected = np.concatenate([[0], np.cumsum(p.counts, dtype=np.int64)[:-1]])
    wrong = np.flatnonzero(expected != p.offsets)
    if wrong.size:
        i = int(wrong[0])
        raise ValueError(
            f"offsets[{i}] is {p.offsets[i]}, but the running sum of counts gives {expected[i]}: "
            "offsets must be [0, counts[0], counts[0] + counts[1], ...]"
        )
    # Training rows memory-mapped read-only from disk are not scanned: that would read the whole
    # population; jaxqfl.data.packed checked their values when it wrote them (through this class).
    # Their class labels are (one number a row, a fraction of the features' bytes): a label outside the
    # classes would index past the model's outputs.
    on_disk = is_read_only_map(p.x) and is_read_only_map(p.y)
    scanned = (("x_test", p.x_test), ("y_test", p.y_test)) if on_disk else (
        ("x", p.x), ("x_test", p.x_test), ("y", p.y), ("y_test", p.y_test))
    for name, a in scanned:
        check_finite(name, a)
    low = PAD_TARGET if p.task == "next-token" else 0
    if not on_disk or p.y.ndim == 1:
        check_labels("y", p.y, p.num_classes, low)
    check_labels("y_test", p.y_test, p.num_classes, low)


def is_read_only_map(a) -> bool:
    """Whether ``a`` is a read-only memory map of a file (``np.load(..., mmap_mode="r")``) or a view of one."""
    while isinstance(a, np.ndarray):
        if isinstance(a, np.memmap):
            return a.mode == "r"
        a = a.base
    return False
