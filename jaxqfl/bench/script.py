"""What every benchmark script does first: split the host into XLA CPU devices, then measure the machine.

``force_cpu_devices(n)`` must run before JAX starts (XLA reads ``XLA_FLAGS`` once);
``measured_peaks(log)`` measures the matmul and copy peaks of this run
(``jaxqfl.bench.machine``), logs them and returns them with the load average.
"""
from __future__ import annotations

import os


def force_cpu_devices(n: int) -> None:
    """``n`` XLA CPU devices unless ``XLA_FLAGS`` already sets a count; the CPU backend unless told otherwise."""
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={n}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def measured_peaks(log):
    """``(peaks, load average at start)``: this machine's peaks, measured now, and the 1/5/15-minute load."""
    from jaxqfl.bench import machine

    load = [round(x, 2) for x in os.getloadavg()]
    peaks = machine.measure_peaks()
    log(f"peaks: matmul {peaks.flops / 1e9:.0f} GFLOP/s, copy {peaks.bandwidth / 1e9:.1f} GB/s")
    return peaks, load


def output_folder(out, name: str):
    """``out``, or a fresh ``runs/<name>-<time>`` (never the source tree), created."""
    import pathlib
    import time

    path = pathlib.Path(out or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def log(message: str) -> None:
    """A benchmark's progress line, flushed at once."""
    print(message, flush=True)
