"""Partitioners: split a labelled dataset into per-client row-index arrays.

Every partitioner maps ``labels[N]`` to a ``list`` of ``num_clients`` int64
arrays of row indices into the dataset. The arrays are disjoint, together cover
every row exactly once, each holds at least one row and is sorted ascending
(row order inside a client carries no meaning: the engine shuffles each
client's rows itself). Feed the result to
:func:`jaxqfl.data.population.from_client_indices`.

All randomness comes from ``np.random.default_rng(seed)``: the same arguments
give the same partition.

=============  =========================================================  ===========================
partitioner    what differs between clients                               reference
=============  =========================================================  ===========================
``iid``        nothing: a uniform random split, sizes differ by <= 1      --
``dirichlet``  label mix: class c's rows split by p_c ~ Dir(alpha 1_C)    Hsu et al. 2019
``shards``     label mix: k label-sorted shards per client                McMahan et al. 2017
``quantity``   size only: sizes ~ LogNormal(0, sigma), rows IID           as LEAF / Li et al. 2020
=============  =========================================================  ===========================

References:
    McMahan, Moore, Ramage, Hampson, Agüera y Arcas. Communication-Efficient
    Learning of Deep Networks from Decentralized Data. AISTATS 2017.
    Hsu, Qi, Brown. Measuring the Effects of Non-Identical Data Distribution
    for Federated Visual Classification. arXiv:1909.06335, 2019.
    Wang, Yurochkin, Sun, Papailiopoulos, Khazaeni. Federated Learning with
    Matched Averaging (FedMA). ICLR 2020.
    Li, Diao, Chen, He. Federated Learning on Non-IID Data Silos: An
    Experimental Study. ICDE 2022 (arXiv:2102.02079).
    Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith. Federated Optimization in
    Heterogeneous Networks (FedProx). MLSys 2020.
    Caldas et al. LEAF: A Benchmark for Federated Settings. arXiv:1812.01097, 2018.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["iid", "dirichlet", "shards", "quantity", "by_name", "NAMES"]

#: The partitioners :func:`by_name` knows.
NAMES = ("iid", "dirichlet", "shards", "quantity")

#: How many Dirichlet draws :func:`dirichlet` tries before giving up.
DIRICHLET_MAX_TRIES = 1000


# --------------------------------------------------------------------------- partitioners


def iid(labels, num_clients: int, seed) -> list[np.ndarray]:
    """Uniform random split: a random permutation of the rows cut into ``num_clients`` parts.

    Client sizes are ``floor(N / C)`` or ``ceil(N / C)``, so they differ by at
    most one. Only ``len(labels)`` matters; labels may be any 1-D array
    (regression targets too).
    """
    n = _num_rows(labels)
    num_clients = _check_num_clients(num_clients, n)
    rng = np.random.default_rng(seed)
    return _sorted_parts(np.array_split(rng.permutation(n), num_clients))


def dirichlet(
    labels,
    num_clients: int,
    alpha: float,
    seed,
    num_classes: int | None = None,
    min_size: int = 1,
    *,
    max_tries: int = DIRICHLET_MAX_TRIES,
) -> list[np.ndarray]:
    """Label-skewed split with Dirichlet-distributed class proportions (Hsu et al. 2019).

    For every class ``c`` independently, draw the share of that class each of the
    ``C = num_clients`` clients receives,

        p_c ~ Dir(alpha * 1_C),

    shuffle the class's ``n_c`` rows and cut them at ``floor(n_c * cumsum(p_c))``,
    so client ``i`` receives about ``p_c[i] * n_c`` rows of class ``c``. Large
    ``alpha`` approaches an IID split (every p_c near uniform); small ``alpha``
    gives each class to few clients.

    Hsu et al. 2019 introduced Dirichlet label skew with a class mix drawn per
    client, ``q_i ~ Dir(alpha * prior)``; the per-class form above (each class
    split over the clients) is the one of Wang et al. 2020 (FedMA) and Li et al.
    2021 (NIID-Bench), and uses every row exactly once without sampling.

    If some client ends up with fewer than ``min_size`` rows, all class
    proportions are drawn again, up to ``max_tries`` times; then a ``ValueError``
    says which settings to relax. The accepted draw is therefore a draw from the
    Dirichlet model conditioned on every client holding ``>= min_size`` rows.

    Args:
        labels: ``[N]`` integer class labels in ``[0, num_classes)``.
        num_clients: number of clients ``C``, ``1 <= C <= N``.
        alpha: concentration, finite and ``> 0``.
        seed: seed of ``np.random.default_rng``.
        num_classes: number of classes; ``max(labels) + 1`` when ``None``.
        min_size: the fewest rows any client may hold, ``>= 1``.
        max_tries: how many full draws to try before raising.
    """
    labels = _integer_labels(labels, num_classes)
    n = labels.shape[0]
    num_clients = _check_num_clients(num_clients, n)
    alpha = _check_positive_finite("alpha", alpha)
    min_size = _check_int_at_least("min_size", min_size, 1)
    max_tries = _check_int_at_least("max_tries", max_tries, 1)
    if min_size * num_clients > n:
        raise ValueError(
            f"min_size={min_size} with num_clients={num_clients} needs {min_size * num_clients} rows, "
            f"but there are only {n}: lower min_size or num_clients"
        )
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)

    rng = np.random.default_rng(seed)
    # Rows of each class, in random order: the Dirichlet shares cut these lists.
    rows_by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    class_sizes = np.array([r.size for r in rows_by_class], dtype=np.int64)  # [K]

    # Draw in batches; only cut counts are computed until a draw is accepted.
    batch = 16
    tries = 0
    while tries < max_tries:
        b = min(batch, max_tries - tries)
        shares = rng.dirichlet(np.full(num_clients, alpha), size=(b, num_classes))  # [b, K, C]
        counts = _counts_from_shares(shares, class_sizes)  # [b, K, C]
        ok = np.flatnonzero(counts.sum(axis=1).min(axis=1) >= min_size)
        if ok.size:
            accepted = counts[ok[0]]  # [K, C]
            break
        tries += b
    else:
        raise ValueError(
            f"dirichlet(alpha={alpha}) gave some client fewer than min_size={min_size} rows in each of "
            f"{max_tries} draws ({num_clients} clients, {n} rows, {num_classes} classes): "
            "raise alpha, lower num_clients or min_size, or raise max_tries"
        )

    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c, rows in enumerate(rows_by_class):
        for i, piece in enumerate(np.split(rows, np.cumsum(accepted[c])[:-1])):
            parts[i].append(piece)
    return _sorted_parts([np.concatenate(p) for p in parts])


def shards(labels, num_clients: int, shards_per_client: int = 2, *, seed) -> list[np.ndarray]:
    """Pathological non-IID split of McMahan et al. 2017: ``k`` label-sorted shards per client.

    Rows are sorted by label (ties in random order) and cut into
    ``S = num_clients * k`` contiguous shards of equal size (sizes differ by at
    most one when ``S`` does not divide ``N``); each client receives ``k``
    shards. A shard's *label group* is its majority label (the smallest one on
    a tie).

    McMahan et al. deal the shards at random, so a client may receive two
    shards of the same label. Here the deal is random but constrained: every
    client receives ``k`` shards from ``k`` distinct label groups whenever that
    is possible, i.e. whenever no label group holds more than ``num_clients``
    shards (e.g. 100 clients, ``k = 2``, 10 balanced labels: 20 shards per
    label). Clients are filled one after another; a client must take every
    group that has as many shards left as there are clients left (otherwise
    some later client would receive two of them), and fills its remaining
    places with distinct groups drawn with probability proportional to their
    remaining shards. This always succeeds: ``m_g <= C'`` for all groups and
    ``sum_g m_g = k C'`` stay true after each client, and they imply at least
    ``k`` groups remain. When the condition fails from the start, distinct
    groups are impossible and the shards are dealt uniformly at random, as in
    the paper.

    Args:
        labels: ``[N]`` integer class labels (``>= 0``).
        num_clients: number of clients ``C``.
        shards_per_client: ``k >= 1``; ``C * k`` may not exceed ``N``.
        seed: seed of ``np.random.default_rng`` (keyword-only).
    """
    labels = _integer_labels(labels, None)
    n = labels.shape[0]
    num_clients = _check_num_clients(num_clients, n)
    k = _check_int_at_least("shards_per_client", shards_per_client, 1)
    num_shards = num_clients * k
    if num_shards > n:
        raise ValueError(
            f"shards_per_client={k} with num_clients={num_clients} makes {num_shards} shards, "
            f"more than the {n} rows: allowed is num_clients * shards_per_client <= {n}"
        )
    rng = np.random.default_rng(seed)
    # Sort by label, random order within a label: permute first, then stable sort.
    perm = rng.permutation(n)
    order = perm[np.argsort(labels[perm], kind="stable")]
    shard_rows = np.array_split(order, num_shards)
    groups = np.array([_majority_label(labels[rows]) for rows in shard_rows])  # [S]
    owner = _deal_shards(groups, num_clients, k, rng)  # [S] client of each shard
    parts = [np.concatenate([shard_rows[s] for s in np.flatnonzero(owner == i)]) for i in range(num_clients)]
    return _sorted_parts(parts)


def quantity(labels, num_clients: int, sigma: float, seed) -> list[np.ndarray]:
    """Quantity skew: log-normal client sizes, rows otherwise IID.

    Log-normal sizes are how LEAF and the Synthetic data of Li et al. 2020
    (FedProx) make clients unequal; here only the sizes are skewed.

    Client weights ``w_i ~ LogNormal(0, sigma)`` (i.e. ``w_i = exp(sigma z_i)``,
    ``z_i ~ N(0, 1)``) set the sizes

        n_i = 1 + round_lr((N - C) * w_i / sum_j w_j),

    where ``round_lr`` is largest-remainder rounding, so ``sum_i n_i = N`` exactly
    and every client holds at least one row. A random permutation of the rows is
    then cut into pieces of these sizes. ``sigma = 0`` gives sizes that differ
    by at most one; the spread grows with ``sigma``. Only ``len(labels)`` matters.
    """
    n = _num_rows(labels)
    num_clients = _check_num_clients(num_clients, n)
    if not _is_real(sigma) or not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    rng = np.random.default_rng(seed)
    z = float(sigma) * rng.standard_normal(num_clients)
    weights = np.exp(z - z.max())  # the common factor exp(max z) cancels; this cannot overflow
    sizes = 1 + _largest_remainder(weights, n - num_clients)
    return _sorted_parts(np.split(rng.permutation(n), np.cumsum(sizes)[:-1]))


def by_name(name: str, alpha: float = 0.5, shards_per_client: int = 2, sigma: float = 1.0, num_classes=None):
    """The partition function ``(labels, num_clients, seed) -> indices`` of ``name``, and its label.

    ``name`` is one of :data:`NAMES`; ``alpha``, ``shards_per_client`` and ``sigma``
    are the hyper-parameters of ``dirichlet``, ``shards`` and ``quantity``.
    """
    if name == "iid":
        return iid, "iid"
    if name == "dirichlet":
        return (lambda y, c, s: dirichlet(y, c, alpha, s, num_classes=num_classes)), f"dirichlet(alpha={alpha:g})"
    if name == "shards":
        return (lambda y, c, s: shards(y, c, shards_per_client, seed=s)), f"shards(k={shards_per_client})"
    if name == "quantity":
        return (lambda y, c, s: quantity(y, c, sigma, s)), f"quantity(sigma={sigma:g})"
    raise ValueError(f"unknown partition {name!r}; allowed partitions are {', '.join(NAMES)}")


# --------------------------------------------------------------------------- helpers


def _counts_from_shares(shares: np.ndarray, class_sizes: np.ndarray) -> np.ndarray:
    """Cut class ``c``'s ``n_c`` rows at ``floor(n_c * cumsum(p_c))``: ``[..., K, C]`` int counts."""
    cuts = np.floor(np.cumsum(shares, axis=-1) * class_sizes[:, None]).astype(np.int64)
    cuts = np.minimum(cuts, class_sizes[:, None])
    cuts[..., -1] = class_sizes  # the last cut is the class's end, whatever the rounding
    return np.diff(cuts, axis=-1, prepend=0)


def _majority_label(shard_labels: np.ndarray) -> int:
    values, freq = np.unique(shard_labels, return_counts=True)
    return int(values[np.argmax(freq)])  # argmax takes the first, i.e. smallest, label on a tie


def _deal_shards(groups: np.ndarray, num_clients: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Owner of each shard, ``k`` shards per client, distinct groups per client when feasible (see ``shards``)."""
    num_shards = groups.shape[0]
    owner = np.empty(num_shards, dtype=np.int64)
    group_ids, group_of_shard = np.unique(groups, return_inverse=True)
    remaining = np.bincount(group_of_shard, minlength=group_ids.size)  # m_g
    if remaining.max() > num_clients:
        # Some client must receive two shards of one group: deal at random, as McMahan et al.
        owner[rng.permutation(num_shards)] = np.repeat(np.arange(num_clients), k)
        return owner
    # Shards of each group, in random order; a client takes them from the back.
    pools = [list(rng.permutation(np.flatnonzero(group_of_shard == g))) for g in range(group_ids.size)]
    for position, client in enumerate(rng.permutation(num_clients)):
        clients_left = num_clients - position
        tight = np.flatnonzero(remaining == clients_left)
        free = np.flatnonzero((remaining > 0) & (remaining < clients_left))
        extra = k - tight.size
        chosen = tight
        if extra:
            p = remaining[free] / remaining[free].sum()
            chosen = np.concatenate([tight, rng.choice(free, size=extra, replace=False, p=p)])
        for g in chosen:
            owner[pools[g].pop()] = client
        remaining[chosen] -= 1
    return owner


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Non-negative integers proportional to ``weights`` summing to ``total`` (Hamilton's method)."""
    exact = weights / weights.sum() * total
    base = np.floor(exact).astype(np.int64)
    short = total - int(base.sum())
    base[np.argsort(-(exact - base), kind="stable")[:short]] += 1
    return base


def _sorted_parts(parts) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_int_at_least(name: str, value, lowest: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < lowest:
        raise ValueError(f"{name} must be an integer >= {lowest}, got {value!r}")
    return int(value)


def _check_positive_finite(name: str, value) -> float:
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_num_clients(num_clients, num_rows: int) -> int:
    num_clients = _check_int_at_least("num_clients", num_clients, 1)
    if num_clients > num_rows:
        raise ValueError(
            f"num_clients={num_clients} is more than the {num_rows} examples: every client needs "
            f"at least one, so allowed is 1 <= num_clients <= {num_rows}"
        )
    return num_clients


def _num_rows(labels) -> int:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {labels.shape}")
    if labels.shape[0] == 0:
        raise ValueError("labels is empty (shape (0,)): there is nothing to partition")
    return int(labels.shape[0])


def _integer_labels(labels, num_classes: int | None) -> np.ndarray:
    """``labels`` as a 1-D int64 array of class ids, checked against ``num_classes``."""
    _num_rows(labels)
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.floating) or not np.all(np.isfinite(labels)):
            raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
        fractional = np.flatnonzero(np.mod(labels, 1) != 0)
        if fractional.size:
            raise ValueError(
                f"labels must be integer class ids, got {labels[fractional[0]].item()!r} at index {int(fractional[0])}"
            )
    labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got {labels.min()}")
    if num_classes is not None:
        num_classes = _check_int_at_least("num_classes", num_classes, 1)
        if labels.max() >= num_classes:
            raise ValueError(f"labels must lie in [0, num_classes={num_classes}), got label {labels.max()}")
    return labels
