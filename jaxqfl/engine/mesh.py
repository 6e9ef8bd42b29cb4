"""The device mesh: one axis, ``"clients"``, over which a cohort is split.

Under ``jax.distributed`` (several processes) ``jax.devices()`` lists the devices
of every process, so the same code builds a global mesh and ``psum`` over
``"clients"`` reduces across hosts.
"""
from __future__ import annotations

import jax
from jax.sharding import AxisType, Mesh

CLIENTS = "clients"


def client_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (all when None)."""
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if not isinstance(num_devices, int) or not 1 <= num_devices <= len(devices):
        raise ValueError(
            f"num_devices must be an integer in [1, {len(devices)}] (the devices JAX sees: "
            f"{devices[0].platform} x {len(devices)}), got {num_devices!r}"
        )
    return jax.make_mesh((num_devices,), (CLIENTS,), axis_types=(AxisType.Auto,), devices=devices[:num_devices])
