"""Measure one workload: the jaxqfl round against its roofline floor and the per-client loop.

For a workload (``jaxqfl.bench.workloads``) on the current devices:

1. count one round's FLOPs and bytes (``jaxqfl.bench.cost``);
2. build the simulation, compile the one-round block (timed apart: ``compile_s``)
   and run one warm-up round; peak RSS is sampled over this phase (``peak_rss``:
   population, its device copies, the compiled program and its temporaries);
3. build the per-client loop (``jaxqfl.bench.reference``) on the same data,
   compile it (``loop_compile_s``) and run one warm-up round;
4. time ``rounds`` rounds of each, *interleaved* (a jaxqfl round, then a loop
   round, ...), each up to ``block_until_ready``: both see the same machine
   load, so their ratio holds even when other processes share the cores.
   ``round_s`` and ``loop_round_s`` are the medians;
5. from the same seed, one round of each: ``max_abs_diff_vs_loop`` is the
   largest parameter difference (the two compute the same round).

Derived numbers: ``rounds_per_s = 1 / round_s``; ``client_steps_per_s = M S /
round_s``; ``gflops_per_s = FLOPs / round_s``; ``gbytes_per_s = bytes / round_s``;
``over_floor = round_s / floor_s``; ``speedup_over_loop = loop_round_s / round_s``.
"""
from __future__ import annotations

import gc
import statistics
import time

import jax
import numpy as np

from jaxqfl import engine
from jaxqfl.bench import cost as cost_lib
from jaxqfl.bench.machine import Peaks
from jaxqfl.bench.memory import PeakRSS
from jaxqfl.bench.reference import per_client_loop
from jaxqfl.bench.workloads import Workload


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _max_abs_diff(a, b) -> float:
    return max(
        float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


class _Contestant:
    """One side of the comparison: ``step()`` runs one round to completion."""

    def __init__(self, step, first_params):
        self.step = step
        self.first_params = first_params
        self.times: list[float] = []


def _jaxqfl(w: Workload, *, chunk_size, num_devices, seed, autotune=None) -> tuple[_Contestant, dict]:
    t0 = time.perf_counter()
    sim = engine.build(
        w.population, w.model, w.algorithm, w.schedule, cohort_size=w.cohort_size,
        chunk_size=chunk_size, num_devices=num_devices, uplink=w.uplink, autotune=autotune,
    )
    build_s = time.perf_counter() - t0
    compile_s = sim.compile_block(1)
    first, _ = sim.run_block(sim.init(seed), 1)  # warm-up, and the equality check's round
    first_params = jax.device_get(first.params)
    box = [first]

    def step():
        box[0], metrics = sim.run_block(box[0], 1)
        jax.block_until_ready((box[0], metrics))

    info = {"compile_s": compile_s, "chunk_size": sim.chunk_size, "num_devices": sim.num_devices,
            "clients_per_device": sim.clients_per_device, "build_s": build_s, "tuning": sim.tuning}
    return _Contestant(step, first_params), info


def _loop(w: Workload, *, seed) -> tuple[_Contestant, dict]:
    ref = per_client_loop(w.population, w.model, w.algorithm, w.schedule, cohort_size=w.cohort_size, uplink=w.uplink)
    state = ref.init(seed)
    compile_s = ref.warm_up(state)
    first, _ = ref.run_round(state)
    first_params = jax.device_get(first.params)
    box = [first]

    def step():
        box[0], loss = ref.run_round(box[0])
        jax.block_until_ready((box[0].params, loss))

    return _Contestant(step, first_params), {"loop_compile_s": compile_s}


def set_floor(result: dict, peaks: Peaks) -> dict:
    """(Re)compute the roofline floor of ``result`` for ``peaks``: floor_s, floor_term, over_floor."""
    t_flops = result["flops_per_round"] / peaks.flops
    t_bytes = result["bytes_per_round"] / peaks.bandwidth
    result["floor_s"], result["floor_term"] = (t_flops, "flops") if t_flops >= t_bytes else (t_bytes, "bytes")
    result["floor_flops_s"], result["floor_bytes_s"] = t_flops, t_bytes
    result["over_floor"] = result["round_s"] / result["floor_s"]
    return result


def bench_workload(
    w: Workload,
    peaks: Peaks,
    *,
    rounds: int = 5,
    chunk_size: int | None = None,
    num_devices: int | None = None,
    run_loop: bool = True,
    seed: int = 0,
    autotune: bool | None = None,
) -> dict:
    """All measurements of one workload as a flat JSON-ready dict (module docstring)."""
    c = cost_lib.round_cost(w.population, w.model, w.algorithm, w.schedule, w.cohort_size)
    with PeakRSS() as mem:
        ours, info = _jaxqfl(w, chunk_size=chunk_size, num_devices=num_devices, seed=seed, autotune=autotune)
    contestants = [ours]
    if run_loop:
        with PeakRSS() as loop_mem:
            loop, loop_info = _loop(w, seed=seed)
        contestants.append(loop)
    for _ in range(rounds):  # interleaved: both sides see the same load
        for side in contestants:
            side.times.append(_seconds(side.step))
    r = statistics.median(ours.times)
    result = {
        "workload": w.name,
        "description": w.description,
        "cohort_size": w.cohort_size,
        "num_clients": w.population.num_clients,
        "local_steps": w.schedule.num_steps(w.population.max_count),
        "batch_size": w.schedule.batch(w.population.max_count),
        "num_params": c.num_params,
        "population_bytes": int(w.population.x.nbytes + w.population.y.nbytes),
        "flops_per_round": c.flops,
        "bytes_per_round": c.bytes,
        "forward_flops_per_example": c.forward_flops_per_example,
        **info,
        "round_s": r,
        "round_times_s": ours.times,
        "peak_rss_bytes": mem.peak,
        "rounds_per_s": 1.0 / r,
        "client_steps_per_s": c.client_steps / r,
        "gflops_per_s": c.flops / r / 1e9,
        "gbytes_per_s": c.bytes / r / 1e9,
    }
    set_floor(result, peaks)
    if run_loop:
        result.update(loop_info)
        result["loop_round_s"] = statistics.median(loop.times)
        result["loop_round_times_s"] = loop.times
        result["loop_peak_rss_bytes"] = loop_mem.peak
        result["speedup_over_loop"] = result["loop_round_s"] / r
        result["max_abs_diff_vs_loop"] = _max_abs_diff(ours.first_params, loop.first_params)
    del contestants, ours
    gc.collect()
    return result
