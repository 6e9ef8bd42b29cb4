"""Streaming at scale: a million host-resident clients, a cohort of 1,000 streamed in each round.

The population (``workloads.synthetic_like``: Synthetic(1, 1), about 21 examples
per client, 60 features, 10 classes) stays in host memory; every round the host
samples the cohort with the engine's keys, gathers its rows into a
``[M_pad, max_count, 60]`` block and puts it on the devices while the previous
round runs (``jaxqfl.engine.streaming``). The model is the ``tiny`` workload's:
logistic regression, 20 local SGD steps of batch 10.

Reported: population size and bytes, peak RSS over the run, compile time,
rounds/s and client-steps/s with prefetch (double buffering) and without, the
host time per round spent sampling + gathering + putting, and the block size.
"""
from __future__ import annotations

import gc
import time

import jax
import optax

from jaxqfl import algorithms, models
from jaxqfl.bench.memory import PeakRSS, current_rss
from jaxqfl.bench.workloads import synthetic_like
from jaxqfl.engine.schedule import LocalSchedule
from jaxqfl.engine.streaming import build_streaming


def bench_streaming(
    num_clients: int = 1_000_000,
    cohort_size: int = 1000,
    rounds: int = 10,
    *,
    chunk_size: int | None = None,
    num_devices: int | None = None,
    seed: int = 0,
) -> dict:
    """Build the population, then time ``rounds`` streamed rounds with and without prefetch."""
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        pop = synthetic_like(num_clients, seed=seed)
        generate_s = time.perf_counter() - t0
        rss_population = current_rss()
        schedule = LocalSchedule(local_steps=20, batch_size=10)
        results = {}
        for prefetch in (True, False):
            sim = build_streaming(
                pop, models.logistic_regression(10), algorithms.fedavg(optax.sgd(0.01)), schedule,
                cohort_size=cohort_size, chunk_size=chunk_size, num_devices=num_devices, prefetch=prefetch,
            )
            compile_s = sim.compile_block(1)
            state = sim.init(seed)
            state, _ = sim.run_block(state, 1)  # warm-up (the cohort program compiles here)
            before = sim.stream_stats()
            state, metrics = sim.run_block(state, rounds)
            jax.block_until_ready(state)
            stats = sim.stream_stats()
            seconds = stats.seconds - before.seconds
            results["prefetch" if prefetch else "no_prefetch"] = {
                "compile_s": compile_s,
                "seconds": seconds,
                "rounds_per_s": rounds / seconds,
                "client_steps_per_s": rounds * cohort_size * schedule.local_steps / seconds,
                "host_s_per_round": (stats.host_seconds - before.host_seconds) / rounds,
                "final_train_loss": float(metrics.train_loss[-1]),
            }
            del state, metrics
            gc.collect()
    return {
        "num_clients": pop.num_clients,
        "num_examples": pop.num_examples,
        "population_bytes": int(pop.x.nbytes + pop.y.nbytes + pop.offsets.nbytes + pop.counts.nbytes),
        "max_count": pop.max_count,
        "cohort_size": cohort_size,
        "rounds": rounds,
        "generate_s": generate_s,
        "rss_after_population_bytes": rss_population,
        "peak_rss_bytes": mem.peak,
        "block_bytes": stats.block_bytes,
        "chunk_size": sim.chunk_size,
        "num_devices": sim.num_devices,
        **results,
    }


def markdown(result: dict) -> str:
    on, off = result["prefetch"], result["no_prefetch"]
    return "\n".join(
        [
            "| clients | examples | population (GB) | cohort | block (MB) | peak RSS (GB) | rounds/s (prefetch) "
            "| rounds/s (no prefetch) | client-steps/s | host s/round | compile (s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {result['num_clients']:,} | {result['num_examples']:,} | {result['population_bytes'] / 1e9:.2f} "
            f"| {result['cohort_size']} | {result['block_bytes'] / 1e6:.1f} | {result['peak_rss_bytes'] / 1e9:.2f} "
            f"| {on['rounds_per_s']:.2f} | {off['rounds_per_s']:.2f} | {on['client_steps_per_s']:,.0f} "
            f"| {on['host_s_per_round']:.3f} | {on['compile_s']:.1f} |",
        ]
    )
