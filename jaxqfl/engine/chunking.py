"""How many clients one device trains at once (the width of the ``vmap``): a cost model.

A device trains its share of the cohort as a ``lax.scan`` over chunks of
``chunk`` clients, each chunk one ``vmap``. Every local step reads and writes
each client's parameters, gradients and optimizer state, so the chunk's
working set decides where those bytes live:

    w = 4 (2 P + O) + 8 B F        bytes per client: params + grads + optimizer
                                   state (float32), and the batch rows with one
                                   same-sized temporary (P params, O optimizer
                                   floats, B batch rows of F features)

CPU (caches, a few cores): the widest chunk whose working set stays in the
core's own L2, when that holds at least ``MIN_L2_CHUNK`` clients (tiny models:
per-op overhead amortised over many clients, every step in L2); otherwise the
widest chunk that fits a quarter of this device's share of the last-level cache
(``L3 / devices / 4``: the rest holds the update's temporaries -- each step
writes a gradient as large as the params and then reads both -- and the rows).
Measured on a 2-core EPYC (L2 1 MiB, L3 32 MiB, 2 devices), round times: the
MLP 784-200-62 (w = 1.4 MB) 41 ms at 2 or 3 clients per chunk, 52 ms at 5,
109 ms at 8 (the working set falls out of L3); logistic regression 60 -> 10
(w = 10 KB) 38 ms at 25-100 clients per chunk, 45 ms at 500.

CPU, models with convolutions: one client per chunk. XLA:CPU runs a vmapped
convolution (per-client kernels) as a grouped convolution, which was 2.5x
slower for the McMahan CNN than training the chunk's clients one at a time.

Accelerators (GPU/TPU): the whole per-device share, so thousands of clients fill
the chip, unless its working set exceeds half of the device's memory; then the
widest chunk that fits.

The chosen width is then balanced: with ``n = ceil(per_device / chunk)``
chunks, ``chunk = ceil(per_device / n)``, which pads the cohort least.

Reported cache sizes are clamped to plausible values before use, because a VM
can report its host's whole cache (a 2-core Xeon VM reported a 480 MiB L3 and
the model chose chunks 10x too wide): the L2 per core to [128 KiB, 2 MiB] (the
range of current x86 and Arm server cores), the last-level cache to [1 MiB,
max(32 MiB, 4 MiB per visible core)] (4 MiB per core is the largest share among
common server parts, e.g. AMD Zen 4's 32 MiB per 8-core CCD).

The model is only the seed of a measured search (``jaxqfl.engine.autotune``):
:func:`candidate_chunks` lists the seed's neighbours (powers of two and divisors
of the share around it) within :func:`max_chunk_for_memory`.
"""
from __future__ import annotations

import functools
import math
import os

MIN_L2_CHUNK = 16
DEFAULT_L2_BYTES = 1 * 2**20
DEFAULT_L3_BYTES = 32 * 2**20
DEFAULT_ACCELERATOR_BYTES = 16 * 2**30
L2_RANGE = (128 * 2**10, 2 * 2**20)  # plausible L2 bytes per core
LLC_MIN, LLC_MAX, LLC_PER_CORE_MAX = 1 * 2**20, 32 * 2**20, 4 * 2**20


def client_working_set(num_params: int, batch: int, features: int, optimizer_floats: int = 0) -> int:
    """``w = 4 (2 P + O) + 8 B F`` bytes (module docstring)."""
    return 4 * (2 * num_params + optimizer_floats) + 8 * batch * features


@functools.lru_cache(maxsize=1)
def cpu_caches() -> tuple[int, int]:
    """``(L2 bytes per core, last-level cache bytes)`` from sysfs, or defaults when unreadable."""
    sizes: dict[int, int] = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(base):
            if not entry.startswith("index"):
                continue
            with open(os.path.join(base, entry, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(base, entry, "level")) as f:
                level = int(f.read())
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip().upper()
            scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1], 1)
            sizes[level] = int(text.rstrip("KMG")) * scale
    except (OSError, ValueError):
        pass
    l2 = sizes.get(2, DEFAULT_L2_BYTES)
    return clamp_caches(l2, max(sizes.values()) if sizes else DEFAULT_L3_BYTES, _visible_cores())


def _visible_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def clamp_caches(l2: int, llc: int, cores: int) -> tuple[int, int]:
    """Reported ``(L2 per core, last-level)`` bytes clamped to plausible values (module docstring)."""
    l2 = min(max(l2, L2_RANGE[0]), L2_RANGE[1])
    llc = min(max(llc, LLC_MIN, l2), max(LLC_MAX, LLC_PER_CORE_MAX * max(1, cores)))
    return l2, llc


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` reports."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _balanced(per_device: int, chunk: int) -> int:
    chunk = max(1, min(chunk, per_device))
    return math.ceil(per_device / math.ceil(per_device / chunk))


def auto_chunk_size(
    clients_per_device: int,
    num_params: int,
    batch: int,
    features: int,
    platform: str,
    *,
    num_devices: int = 1,
    optimizer_floats: int = 0,
    device_memory: int | None = None,
    has_convolutions: bool = False,
) -> int:
    """Default chunk size for ``platform`` ("cpu", "gpu", "tpu"); see the module docstring."""
    if clients_per_device < 1:
        raise ValueError(f"clients_per_device must be >= 1, got {clients_per_device}")
    w = max(1, client_working_set(num_params, batch, features, optimizer_floats))
    if platform != "cpu":
        budget = (device_memory or DEFAULT_ACCELERATOR_BYTES) // 2
        return _balanced(clients_per_device, max(1, budget // w))
    if has_convolutions:
        return 1
    l2, l3 = cpu_caches()
    if l2 // w >= MIN_L2_CHUNK:
        chunk = l2 // w
    else:
        chunk = l3 // max(1, num_devices) // 4 // w
    return _balanced(clients_per_device, max(1, chunk))


def padded_layout(cohort_size: int, num_devices: int, chunk: int) -> tuple[int, int]:
    """``(clients_per_device, num_chunks)`` after padding the cohort to ``devices * chunks * chunk``."""
    per_device = math.ceil(cohort_size / num_devices)
    chunk = min(chunk, per_device)
    num_chunks = math.ceil(per_device / chunk)
    return num_chunks * chunk, num_chunks


def host_memory_bytes() -> int:
    """Physical memory of the host (``sysconf``), or 8 GiB when unknown."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return 8 * 2**30


def max_chunk_for_memory(
    working_set: int, platform: str, *, num_devices: int = 1, device_memory: int | None = None,
) -> int:
    """The widest chunk whose working set ``chunk * w`` stays under half of a device's memory.

    Accelerators: half of ``device_memory`` (``DEFAULT_ACCELERATOR_BYTES`` when
    unknown). CPU: half of the host's memory divided among its ``num_devices``
    XLA devices (they share it). At least 1.
    """
    if platform == "cpu":
        budget = host_memory_bytes() // max(1, num_devices) // 2
    else:
        budget = (device_memory or DEFAULT_ACCELERATOR_BYTES) // 2
    return max(1, budget // max(1, working_set))


def candidate_chunks(per_device: int, seed: int, max_chunk: int, *, limit: int = 6) -> list[int]:
    """Chunk sizes worth timing around the cost model's ``seed``, nearest first (seed first).

    The seed's neighbours by factors of 2 and 4, the divisors of ``per_device``
    between ``seed / 4`` and ``4 seed`` (no padding) and 1; each
    balanced (``_balanced``: the same number of chunks, least padding) and kept
    within ``[1, min(per_device, max_chunk)]``; at most ``limit``, ordered by
    ``|log(c / seed)|`` so that a search cut short by its budget has timed the
    closest ones.
    """
    if per_device < 1 or limit < 1:
        raise ValueError(f"per_device and limit must be >= 1, got {per_device} and {limit}")
    top = max(1, min(per_device, max_chunk))
    seed = _balanced(per_device, min(max(1, seed), top))
    raw = {seed, seed * 2, seed * 4, seed // 2, seed // 4, 1}
    raw |= {d for d in range(max(1, seed // 4), min(per_device, 4 * seed) + 1) if per_device % d == 0}
    chunks = {_balanced(per_device, min(max(1, c), top)) for c in raw}
    ordered = sorted(chunks, key=lambda c: (abs(math.log(c / seed)), c))
    return ordered[:limit]
