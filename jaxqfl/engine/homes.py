"""Where the per-client persistent states live (DESIGN.md, "Per-client persistent state").

A run keeps one state pytree per client (error-feedback residuals, SCAFFOLD
controls, FedDyn gradients, ...), ``C x size`` in all. Its home is a build
option; the round reads and writes only the cohort's rows whatever the home,
and results do not depend on it:

* ``"replicated"``: every device holds all C rows; the cohort's rows are
  gathered and scattered inside the block program. Memory: ``D x C x size``.
* ``"sharded"``: the rows are split over the devices (``P("clients")`` on the
  leading axis, padded to a multiple of D); XLA moves the cohort's rows to
  where they are used. Memory: ``C x size`` over all devices.
* ``"host"``: the rows stay in host memory (NumPy); every round the host
  gathers the cohort's ``M_pad`` rows, puts them on the devices with the
  round, and writes the returned rows back. The host must know each round's
  cohort first, so rounds run one program each (not a block of rounds in one
  program). Memory: ``C x size`` on the host, ``M_pad x size`` on the devices.
* ``"auto"``: replicated when all copies fit ``REPLICATED_BUDGET`` of the
  device memory (or 2 GiB of host RAM on a CPU backend), else sharded when one
  copy fits, else host.
"""
from __future__ import annotations

import math

import numpy as np

from jaxqfl.choices import CLIENT_STATE_HOMES as HOMES
CPU_BUDGET_BYTES = 2 * 2**30
REPLICATED_BUDGET = 0.25  # share of one device's memory the states may take


def check_home(home: str) -> str:
    if home not in HOMES:
        raise ValueError(f"client_state must be one of {HOMES}, got {home!r}")
    return home


def resolve_home(home: str, state_bytes: int, num_devices: int, device) -> str:
    """The concrete home for ``home`` given the total bytes of the C client states."""
    check_home(home)
    if home != "auto":
        return home
    if state_bytes == 0:
        return "replicated"
    if device.platform == "cpu":
        budget = CPU_BUDGET_BYTES  # CPU "devices" share the host's RAM
    else:
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        budget = int(REPLICATED_BUDGET * (stats or {}).get("bytes_limit", 16 * 2**30))
    if state_bytes * num_devices <= budget:
        return "replicated"
    if math.ceil(state_bytes / num_devices) * (1 if device.platform != "cpu" else num_devices) <= budget:
        return "sharded"
    return "host"


def state_rows(home: str, num_clients: int, num_devices: int) -> int:
    """Rows of the stacked client states: C, padded to a multiple of D for the sharded home."""
    return math.ceil(num_clients / num_devices) * num_devices if home == "sharded" else num_clients


def host_states(one_client_state, num_clients: int):
    """C NumPy copies of one client's state (the host home's storage)."""
    import jax

    return jax.tree.map(lambda a: np.repeat(np.asarray(a)[None], num_clients, axis=0), one_client_state)
