"""Whether a run is long enough to repay a chunk-size search: decided before anything compiles.

The search (``jaxqfl.engine.layout_search``, with ``device_split`` on a CPU host)
compiles and times two to four candidate layouts: 4 to 45 s on a 2-core CPU
for the bench workloads, on the first run of a shape. It saves a fraction of
the training time (its pick against the cost model's seed; e.g. 6% for the
default ``jaxqfl run``: 4.28 against 4.54 ms a round), so a run whose training
is shorter than the search only waits for it. The rule, from the cost model
and the rounds requested:

    T_floor = R x max(FLOPs_round / F, bytes_round / B)     (jaxqfl.bench.cost.round_cost)
    search  iff  T_floor >= MIN_TRAINING_SECONDS (30 s)

with nominal peaks per CPU core F = 100 GFLOP/s, B = 25 GB/s (this 2-core
machine measures 201 GFLOP/s and 52-91 GB/s in all), and per accelerator
F = 100 TFLOP/s, B = 2 TB/s. ``T_floor`` is a lower bound of the training
time (a round takes 1.1 to 11 times its floor on the bench workloads), so the
rule searches only where the training surely outlasts a search, and a short run
never waits for one: it takes the cost model's pick at once. ``--autotune on``
searches whatever the rule says; ``--autotune off`` never does.
"""
from __future__ import annotations

import os
from typing import NamedTuple

MIN_TRAINING_SECONDS = 30.0
CPU_FLOPS_PER_CORE, CPU_BYTES_PER_CORE = 100e9, 25e9
ACCELERATOR_FLOPS, ACCELERATOR_BYTES = 100e12, 2e12


class TuningDecision(NamedTuple):
    tune: bool
    floor_seconds: float | None  # T_floor, None when the cost could not be counted
    reason: str


def nominal_peaks(platform: str, num_devices: int) -> tuple[float, float]:
    """``(FLOP/s, bytes/s)`` the rule assumes for ``num_devices`` devices of ``platform``."""
    if platform == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return CPU_FLOPS_PER_CORE * cores, CPU_BYTES_PER_CORE * cores
    return ACCELERATOR_FLOPS * num_devices, ACCELERATOR_BYTES * num_devices


def decide(population, model, algorithm, schedule, *, cohort_size: int, rounds: int, platform: str,
           num_devices: int) -> TuningDecision:
    """The rule of the module docstring for a run of ``rounds`` rounds."""
    from jaxqfl.bench.cost import round_cost

    try:
        cost = round_cost(population, model, algorithm, schedule, cohort_size)
    except Exception as e:  # a model the counter cannot trace: search, as before the rule
        return TuningDecision(True, None, f"its work could not be counted ({type(e).__name__}): searched")
    flops, bandwidth = nominal_peaks(platform, num_devices)
    floor, _ = cost.floor_seconds(flops, bandwidth)
    total = rounds * floor
    if total >= MIN_TRAINING_SECONDS:
        return TuningDecision(True, total, f"{rounds} rounds of at least {floor * 1e3:.3g} ms: at least "
                                           f"{total:.3g} s of training, worth a search")
    return TuningDecision(False, total, f"{rounds} rounds of at least {floor * 1e3:.3g} ms: at least {total:.3g} s "
                                        f"of training, under the {MIN_TRAINING_SECONDS:g} s a search must repay")
