"""How many clients one device trains at once (the width of the ``vmap``).

A device trains its share of the cohort as a ``lax.scan`` over chunks of
``chunk`` clients, each chunk one ``vmap``. Wider chunks amortise per-step
overhead and fill wide hardware; narrower chunks keep each client's parameters,
gradients and optimizer state in cache, which on a CPU is worth more than
width (every local step reads and writes all of them). So the chunk size is a
tuned parameter: on accelerators the whole per-device cohort, on CPUs the
widest chunk whose working set fits a cache budget.
"""
from __future__ import annotations

import math

# Working-set budget of one chunk on a CPU: roughly an L2/L3 share per core.
CPU_CHUNK_BYTES = 4 * 2**20
# Bytes touched per parameter per client and step: params, grads, optimizer
# state, and the update, each float32.
BYTES_PER_PARAM_STEP = 16


def auto_chunk_size(clients_per_device: int, num_params: int, batch: int, features: int, platform: str) -> int:
    """Default chunk size for ``platform`` ("cpu", "gpu", "tpu")."""
    if clients_per_device < 1:
        raise ValueError(f"clients_per_device must be >= 1, got {clients_per_device}")
    if platform != "cpu":
        return clients_per_device
    per_client = BYTES_PER_PARAM_STEP * num_params + 4 * batch * features
    return max(1, min(clients_per_device, CPU_CHUNK_BYTES // max(per_client, 1)))


def padded_layout(cohort_size: int, num_devices: int, chunk: int) -> tuple[int, int]:
    """``(clients_per_device, num_chunks)`` after padding the cohort to ``devices * chunks * chunk``."""
    per_device = math.ceil(cohort_size / num_devices)
    chunk = min(chunk, per_device)
    num_chunks = math.ceil(per_device / chunk)
    return num_chunks * chunk, num_chunks
