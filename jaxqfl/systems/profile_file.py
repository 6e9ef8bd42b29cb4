"""Client systems profiles read from a CSV file (``--speeds FILE`` in issue 27).

Format: a header line ``client,seconds_per_step,bandwidth_bps`` and one row per
client, ids ``0 .. num_clients-1`` each exactly once (any order); both values
finite and > 0 (simulated seconds per local step; bits per simulated second).
"""
from __future__ import annotations

import csv
import math

import numpy as np
import jax.numpy as jnp

from jaxqfl.systems.clock import ClientSystems

HEADER = ["client", "seconds_per_step", "bandwidth_bps"]


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def read_client_table(path, num_clients: int, columns: dict) -> dict[str, np.ndarray]:
    """A CSV of one row per client: the header ``client,<columns>``, every id ``0..C-1`` exactly once (any order).

    ``columns`` maps each value column to ``(allowed(value) -> bool, what is allowed)``; returns
    ``{column: float64 [C]}``. A malformed file raises ValueError naming the file, the line and what is allowed.
    """
    header = ["client", *columns]
    values = np.full((len(columns), num_clients), np.nan)
    seen = np.zeros(num_clients, bool)
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or [c.strip() for c in rows[0]] != header:
        raise ValueError(f"{path}: the first line must be {','.join(header)!r}, got {','.join(rows[0]) if rows else ''!r}")
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(f"{path}, line {line}: expected {len(header)} comma-separated values, got {len(row)}")
        try:
            client, numbers = int(row[0]), [float(v) for v in row[1:]]
        except ValueError:
            numbers = "a number" if len(columns) == 1 else f"{len(columns)} numbers"
            raise ValueError(f"{path}, line {line}: expected an integer id and {numbers}, got {row!r}") from None
        if not 0 <= client < num_clients:
            raise ValueError(f"{path}, line {line}: client id {client} is outside 0..{num_clients - 1}")
        if seen[client]:
            raise ValueError(f"{path}, line {line}: client {client} appears twice")
        for (name, (allowed, what)), value, text in zip(columns.items(), numbers, row[1:]):
            if not allowed(value):
                raise ValueError(f"{path}, line {line}: {name} must be {what}, got {text.strip()!r}")
        seen[client], values[:, client] = True, numbers
    missing = np.flatnonzero(~seen)
    if missing.size:
        raise ValueError(f"{path}: no row for client(s) {missing[:10].tolist()} (every id 0..{num_clients - 1} needs one)")
    return dict(zip(columns, values))


def load_systems_csv(path, num_clients: int) -> ClientSystems:
    """Read a profile file; a malformed file raises ValueError naming the file, the row and what is allowed."""
    positive = (_positive, "a finite number > 0")
    table = read_client_table(path, num_clients, {"seconds_per_step": positive, "bandwidth_bps": positive})
    return ClientSystems(jnp.asarray(table["seconds_per_step"], jnp.float32),
                         jnp.asarray(table["bandwidth_bps"], jnp.float32))
