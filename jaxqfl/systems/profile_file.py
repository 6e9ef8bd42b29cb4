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


def load_systems_csv(path, num_clients: int) -> ClientSystems:
    """Read a profile file; a malformed file raises ValueError naming the file, the row and what is allowed."""
    spc = np.full(num_clients, np.nan)
    bw = np.full(num_clients, np.nan)
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or [c.strip() for c in rows[0]] != HEADER:
        raise ValueError(f"{path}: the first line must be {','.join(HEADER)!r}, got {','.join(rows[0]) if rows else ''!r}")
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 3:
            raise ValueError(f"{path}, line {line}: expected 3 comma-separated values, got {len(row)}")
        try:
            client, step, band = int(row[0]), float(row[1]), float(row[2])
        except ValueError:
            raise ValueError(f"{path}, line {line}: expected an integer id and two numbers, got {row!r}") from None
        if not 0 <= client < num_clients:
            raise ValueError(f"{path}, line {line}: client id {client} is outside 0..{num_clients - 1}")
        if not math.isnan(spc[client]):
            raise ValueError(f"{path}, line {line}: client {client} appears twice")
        for name, value in (("seconds_per_step", step), ("bandwidth_bps", band)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{path}, line {line}: {name} must be a finite number > 0, got {value!r}")
        spc[client], bw[client] = step, band
    missing = np.flatnonzero(np.isnan(spc))
    if missing.size:
        raise ValueError(f"{path}: no row for client(s) {missing[:10].tolist()} (every id 0..{num_clients - 1} needs one)")
    return ClientSystems(jnp.asarray(spc, jnp.float32), jnp.asarray(bw, jnp.float32))
