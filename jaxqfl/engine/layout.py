"""How a cohort of M clients is laid out: D devices x num_chunks chunks x chunk clients."""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxqfl.data.population import Population
from jaxqfl import keys
from jaxqfl.engine.chunking import auto_chunk_size, padded_layout
from jaxqfl.engine.conv_layout import contains_convolution
from jaxqfl.engine.schedule import LocalSchedule
from jaxqfl.engine.state import client_start
from jaxqfl.engine.state import num_params as _num_params
from jaxqfl.models.core import bound


class ClientLayout(NamedTuple):
    """``M_pad = D * per_device`` and ``per_device = num_chunks * chunk >= ceil(M / D)``;
    the ``M_pad - M`` padding slots train on a real client's data with weight 0.
    """

    cohort_size: int  # M
    num_devices: int  # D
    chunk: int  # clients per vmap
    num_chunks: int  # chunks per device
    per_device: int  # num_chunks * chunk
    num_params: int

    @property
    def padded_cohort(self) -> int:
        return self.per_device * self.num_devices


def check_cohort_and_chunk(population: Population, cohort_size, chunk_size) -> None:
    """Refuse a cohort outside [1, num_clients] or a chunk size that is not a positive integer."""
    if not isinstance(cohort_size, int) or not 1 <= cohort_size <= population.num_clients:
        raise ValueError(
            f"cohort_size must be an integer in [1, num_clients={population.num_clients}], got {cohort_size!r}"
        )
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None (automatic), got {chunk_size!r}")


def layout_for_chunk(cohort_size: int, num_devices: int, chunk_size: int, num_params: int) -> ClientLayout:
    per_device, num_chunks = padded_layout(cohort_size, num_devices, chunk_size)
    return ClientLayout(cohort_size, num_devices, per_device // num_chunks, num_chunks, per_device, num_params)


def client_layout(
    population: Population, model, algorithm, schedule: LocalSchedule, cohort_size: int,
    num_devices: int, chunk_size: int | None, device,
) -> ClientLayout:
    """The padded layout of a cohort; the chunk size from ``jaxqfl.engine.chunking`` when None."""
    sample_x = jax.ShapeDtypeStruct((1,) + population.feature_shape, jnp.float32)
    params = jax.eval_shape(model.init, keys.abstract_key(), sample_x)
    num_params = _num_params(params)
    per_device0 = math.ceil(cohort_size / num_devices)
    if chunk_size is None:
        chunk_size = auto_chunk_size(
            per_device0, num_params, schedule.batch(population.max_count),
            int(np.prod(population.feature_shape)), device.platform, num_devices=num_devices,
            optimizer_floats=local_state_floats(algorithm, params) - num_params,
            device_memory=_device_memory(device),
            has_convolutions=contains_convolution(jax.make_jaxpr(bound(model).apply)(params, sample_x).jaxpr),
        )
    return layout_for_chunk(cohort_size, num_devices, chunk_size, num_params)


def _device_memory(device):
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return (stats or {}).get("bytes_limit")


def local_state_floats(algorithm, params) -> int:
    """Floats of one client's local state (params plus optimizer and algorithm extras), traced abstractly."""
    return _num_params(jax.eval_shape(lambda p: client_start(algorithm, p)[3], params))
