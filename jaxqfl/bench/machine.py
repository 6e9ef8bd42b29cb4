"""What this machine can do: measured matmul FLOP/s and copy bandwidth, and what it is.

Both peaks are measured with ``jax.numpy`` on the devices the benchmark uses,
after a warm-up call, as the median of several timed calls:

* ``matmul_flops``: ``2 n^3 / t`` for an ``n x n`` float32 product on every
  device at once (the devices' products run concurrently; ``t`` is the wall
  time of all of them), the higher of that and one product on one device.
* ``copy_bandwidth``: ``2 * 4 * N / t``: an in-place ``x <- x * c`` over ``N``
  float32 (read once, written once) whose buffer is donated, so the timing
  measures DRAM traffic and not the page faults of a fresh output buffer.
  The array (256 MiB by default) is far larger than any cache.

These are the ``peak_flops`` and ``peak_bw`` of the roofline floor
``max(FLOPs / peak_flops, bytes / peak_bw)`` (DESIGN.md, "Speed: the two numbers").
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxqfl.engine.chunking import cpu_model as _cpu_model


class Peaks(NamedTuple):
    flops: float  # FLOP/s, large float32 matmul
    bandwidth: float  # bytes/s, large in-place scale (read + write)


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (compilation, first touch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_flops(n: int = 2048, repeats: int = 7, devices=None) -> float:
    """FLOP/s of an ``n x n`` float32 matmul: ``2 n^3`` per product, median of ``repeats``."""
    devices = list(devices or jax.local_devices())
    flops = []
    a = jnp.ones((n, n), jnp.float32)
    one = jax.jit(lambda a, b: a @ b)
    flops.append(2 * n**3 / _median_seconds(lambda: one(a, a).block_until_ready(), repeats))
    if len(devices) > 1:
        mesh = jax.sharding.Mesh(np.array(devices), ("d",))
        stacked = jax.device_put(jnp.ones((len(devices), n, n), jnp.float32), NamedSharding(mesh, P("d")))
        many = jax.jit(jax.vmap(lambda a: a @ a))
        t = _median_seconds(lambda: many(stacked).block_until_ready(), repeats)
        flops.append(len(devices) * 2 * n**3 / t)
    return max(flops)


def copy_bandwidth(mebibytes: int = 256, repeats: int = 9) -> float:
    """Bytes/s of an in-place ``x <- x * c`` over ``mebibytes`` MiB (read + write), median of ``repeats``."""
    n = mebibytes * 2**20 // 4
    scale = jax.jit(lambda x: x * jnp.float32(1.0000001), donate_argnums=0)
    box = [jnp.ones((n,), jnp.float32)]

    def step():
        box[0] = scale(box[0])
        box[0].block_until_ready()

    return 2 * 4 * n / _median_seconds(step, repeats)


def measure_peaks(repeats: int = 7) -> Peaks:
    """Both peaks of this machine, measured now (a few seconds)."""
    return Peaks(flops=matmul_flops(repeats=repeats), bandwidth=copy_bandwidth(repeats=repeats + 2))


def _memory_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:  # pragma: no cover - psutil is in the bench extra
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None


def describe() -> dict:
    """What the benchmark ran on: CPU, cores, memory, JAX version, backend and devices."""
    import jaxlib

    devices = jax.devices()
    return {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "num_devices": len(devices),
        "num_processes": jax.process_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
