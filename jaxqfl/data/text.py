"""Text for next-token prediction: bytes in, fixed windows of token ids out (the ``next-token`` task).

Vocabulary: the 256 byte values. Text is read as bytes (no decoding, so any
encoding works; UTF-8 characters span several tokens). A model embeds input ids
``0..256``: ``PAD_INPUT = 256`` marks input positions that hold no text, and
predicts 256 logits; the target of a padding position is ``PAD_TARGET = -1``,
which the loss and the metrics ignore (:func:`jaxqfl.tasks.next_token`).

Windows (static shapes): a text ``s`` of ``L`` bytes gives ``W = ceil((L - 1) / T)``
examples of context ``T``, non-overlapping; example ``k`` is

    x_k[t] = s[kT + t],   y_k[t] = s[kT + t + 1]        for kT + t + 1 < L,
    x_k[t] = PAD_INPUT,   y_k[t] = PAD_TARGET           otherwise (only the last window),

so every byte but the first is a target exactly once.

Text folder (``--dataset text --data-path DIR``, :func:`load_text`): every
``*.txt`` file of ``DIR`` in sorted name order. Clients, either

- one per file (``entries_per_client=None``, the default), or
- groups of ``entries_per_client`` consecutive entries of the ``fortune(6)``
  format, in which a line holding only ``%`` ends an entry: the file is cut after
  every such line (the separator stays with its entry, so the clients' texts
  joined are the file) and consecutive pieces are grouped. Clients never
  span two files, so the topics of the files stay non-IID.

Test set: from each client the last ``floor(test_fraction * W_k)`` of its
windows (the tail of its text; a client keeps at least one window), pooled.
A client whose text has fewer than 2 bytes holds no window and is left out.

LEAF's Shakespeare (Caldas et al. 2018; :func:`from_leaf_strings`): each row is
a string ``x`` (80 characters) and its next character ``y``; the example is the
bytes ``q = utf8(x + y)`` as ``x = q[:-1]``, ``y = q[1:]``, padded to the longest row.
"""
from __future__ import annotations

import glob
import math
import os

import numpy as np

from jaxqfl.data import partition as partitioners
from jaxqfl.data.population import PAD_TARGET, Population, from_client_indices

__all__ = ["BYTE_VOCAB", "PAD_INPUT", "PAD_TARGET", "windows", "split_entries", "text_population", "load_text",
           "from_leaf_strings"]

#: Output vocabulary: the 256 byte values.
BYTE_VOCAB = 256
#: The input id of a padding position (embedding tables have BYTE_VOCAB + 1 rows).
PAD_INPUT = 256


def windows(text: bytes, context: int) -> tuple[np.ndarray, np.ndarray]:
    """The next-token windows of ``text`` (module docstring): ``(x [W, T], y [W, T])`` int32."""
    if context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    s = np.frombuffer(bytes(text), np.uint8).astype(np.int32)
    n = max(s.size - 1, 0)  # positions that have a next byte
    w = -(-n // context)
    x = np.full(w * context, PAD_INPUT, np.int32)
    y = np.full(w * context, PAD_TARGET, np.int32)
    x[:n], y[:n] = s[:n], s[1:]
    return x.reshape(w, context), y.reshape(w, context)


def split_entries(text: bytes) -> list[bytes]:
    """``text`` cut after every line holding only ``%`` (fortune format); the pieces joined are ``text``."""
    pieces, current = [], []
    for line in bytes(text).splitlines(keepends=True):
        current.append(line)
        if line.rstrip(b"\r\n") == b"%":
            pieces.append(b"".join(current))
            current = []
    if current:
        pieces.append(b"".join(current))
    return pieces


def text_population(texts, context: int, *, test_fraction: float = 0.1, partition: str | None = None,
                    num_clients: int | None = None, sigma: float = 1.0, seed: int = 0,
                    name: str = "text") -> Population:
    """A next-token population: one natural client per text of ``texts`` (bytes), or a partitioner's re-split.

    ``partition``: None or ``"natural"`` (one client per text), ``"iid"`` or
    ``"quantity"`` (the pooled training windows re-split over ``num_clients``);
    the label partitioners (``dirichlet``, ``shards``) are refused: next bytes are no class labels.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    _check_partition(partition, num_clients)
    if not isinstance(context, (int, np.integer)) or isinstance(context, bool) or context < 1:
        raise ValueError(f"context must be an integer >= 1, got {context!r}")
    texts = [bytes(t) for t in texts]
    # W_k windows and the held-out tail of each text, counted before any window is built: a context no text can
    # hold out a test window of is refused before it allocates (a 2^31 context asked 16 GB per text)
    counts = [-(-max(len(t) - 1, 0) // context) for t in texts]
    held = [min(int(np.floor(test_fraction * w)), w - 1) for w in counts]
    if not any(counts):
        raise ValueError(f"{name}: no text holds 2 bytes or more; nothing to learn from")
    if not any(held):
        longest = max(len(t) for t in texts)
        bound = _longest_context(longest - 1, test_fraction)
        fits = f"a context of at most {bound:,} holds one out" if bound else "no context holds one out"
        raise ValueError(f"{name}: no client holds enough windows to hold out a test window (test_fraction "
                         f"{test_fraction}, context {context}; the longest text has {longest:,} bytes: {fits}); use "
                         f"more text or a shorter context")
    xs, ys, xt, yt = [], [], [], []
    for text, w, h in zip(texts, counts, held):
        if w == 0:
            continue
        x, y = windows(text, context)
        xs.append(x[:w - h])
        ys.append(y[:w - h])
        xt.append(x[w - h:])
        yt.append(y[w - h:])
    x_test, y_test = np.concatenate(xt), np.concatenate(yt)
    x, y = np.concatenate(xs), np.concatenate(ys)
    return _population(x, y, [len(a) for a in xs], x_test, y_test, partition=partition, num_clients=num_clients,
                       sigma=sigma, seed=seed, name=name, what="texts with 2 bytes or more")


def _longest_context(positions: int, test_fraction: float) -> int:
    """The longest context whose ``ceil(positions / T)`` windows hold out a test window (0 when none does): the
    fewest windows ``m`` with ``min(floor(test_fraction m), m - 1) >= 1``, then the largest ``T`` with
    ``ceil(positions / T) >= m``, i.e. ``positions / T > m - 1``."""
    m = max(2, math.ceil(1 / test_fraction))
    while math.floor(test_fraction * m) < 1:
        m += 1
    while m > 2 and math.floor(test_fraction * (m - 1)) >= 1:
        m -= 1
    return max((positions - 1) // (m - 1), 0)


def _check_partition(partition, num_clients) -> None:
    if partition in ("dirichlet", "shards"):
        raise ValueError(f"partition {partition!r} splits by class label; next-token windows have none: "
                         "use natural, iid or quantity")
    if partition not in (None, "natural", "iid", "quantity"):
        raise ValueError(f"unknown partition {partition!r}; next-token data takes natural, iid or quantity")
    if partition not in (None, "natural") and num_clients is None:
        raise ValueError(f"partition {partition!r} needs num_clients (--num-clients on the command line)")


def _population(x, y, counts, x_test, y_test, *, partition, num_clients, sigma, seed, name, what) -> Population:
    """Windows of natural clients (``counts`` consecutive rows each) or a partitioner's re-split, as a Population."""
    partition = partition or "natural"
    if partition == "natural":
        if num_clients is not None and num_clients != len(counts):
            raise ValueError(f"{name} has {len(counts)} natural clients ({what}); got num_clients={num_clients}: "
                             "leave it unset or use a partitioner (iid, quantity)")
        bounds = np.concatenate([[0], np.cumsum(counts)])
        indices = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(counts))]
        label = "natural"
    else:
        if num_clients > x.shape[0]:
            raise ValueError(f"{name}: {num_clients} clients but only {x.shape[0]} training windows")
        split, label = partitioners.by_name(partition, sigma=sigma)
        indices = split(np.zeros(x.shape[0], np.int32), num_clients, np.random.SeedSequence(seed).spawn(2)[1])
    return from_client_indices(x.astype(np.float32), y, indices, x_test.astype(np.float32), y_test, BYTE_VOCAB,
                               name=f"{name}/{label}", task="next-token")


def load_text(folder, context: int, *, entries_per_client: int | None = None, **kwargs) -> Population:
    """The next-token population of the ``*.txt`` files of ``folder`` (module docstring).

    ``kwargs`` go to :func:`text_population` (``test_fraction``, ``partition``, ``num_clients``, ...).
    """
    folder = os.fspath(folder)
    _check_partition(kwargs.get("partition"), kwargs.get("num_clients"))
    if not os.path.isdir(folder):
        raise ValueError(f"{folder!r} is not a folder; --dataset text reads the *.txt files of a folder")
    files = sorted(f for f in glob.glob(os.path.join(folder, "*.txt")) if os.path.isfile(f))
    if not files:
        raise ValueError(f"{folder!r} holds no *.txt file")
    if entries_per_client is not None and entries_per_client < 1:
        raise ValueError(f"entries_per_client must be >= 1 (or None: one client per file), got {entries_per_client}")
    texts = []
    for f in files:
        try:
            with open(f, "rb") as fh:
                data = fh.read()
        except OSError as err:
            raise ValueError(f"{f!r} cannot be read: {err}") from err
        if entries_per_client is None:
            texts.append(data)
            continue
        pieces = split_entries(data)
        texts.extend(b"".join(pieces[i:i + entries_per_client]) for i in range(0, len(pieces), entries_per_client))
    kwargs.setdefault("name", f"text:{os.path.basename(os.path.normpath(folder))}")
    return text_population(texts, context, **kwargs)


def from_leaf_strings(users_x, users_y, test_x, test_y, *, partition: str | None = None,
                      num_clients: int | None = None, sigma: float = 1.0, seed: int = 0,
                      name: str = "leaf") -> Population:
    """LEAF Shakespeare-style rows (``x`` strings, ``y`` next characters) as next-token windows.

    ``users_x[u]`` / ``users_y[u]`` are user ``u``'s row lists (its natural
    client), ``test_x`` / ``test_y`` the pooled test rows. Example: ``q =
    utf8(x + y)``, input ``q[:-1]``, targets ``q[1:]``, padded to the longest row.
    ``partition``: None / natural (one client per user), iid or quantity over ``num_clients``.
    """
    _check_partition(partition, num_clients)

    def encode(rows_x, rows_y, where):
        out = []
        for i, (a, b) in enumerate(zip(rows_x, rows_y)):
            if not isinstance(a, str) or not isinstance(b, str):
                raise ValueError(f"{where}: row {i} has x {type(a).__name__} and y {type(b).__name__}; the "
                                 "next-token task needs strings in both (LEAF Shakespeare's layout)")
            q = (a + b).encode("utf-8")
            if len(q) < 2:
                raise ValueError(f"{where}: row {i} holds {len(q)} byte(s); an example needs 2 or more")
            out.append(q)
        return out

    train = [encode(x, y, f"user {u}") for u, (x, y) in enumerate(zip(users_x, users_y))]
    test = encode(test_x, test_y, "the test rows")
    width = max(len(q) for rows in train + [test] for q in rows) - 1

    def pack(rows):
        x = np.full((len(rows), width), PAD_INPUT, np.int32)
        y = np.full((len(rows), width), PAD_TARGET, np.int32)
        for i, q in enumerate(rows):
            s = np.frombuffer(q, np.uint8)
            x[i, :len(q) - 1], y[i, :len(q) - 1] = s[:-1], s[1:]
        return x, y

    packed = [pack(rows) for rows in train]
    x_test, y_test = pack(test)
    x, y = np.concatenate([p[0] for p in packed]), np.concatenate([p[1] for p in packed])
    return _population(x, y, [p[0].shape[0] for p in packed], x_test, y_test, partition=partition,
                       num_clients=num_clients, sigma=sigma, seed=seed, name=name, what="LEAF users")
