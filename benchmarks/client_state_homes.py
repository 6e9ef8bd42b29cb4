"""SCAFFOLD with 10,000 clients' controls on the host (issue 8): peak RSS and round time.

    python benchmarks/client_state_homes.py [--clients 10000] [--rounds 5] [--home host] [--out DIR]

The ``mlp`` bench workload's model (MLP 784-200-62, 169,462 parameters) and
data shape (64 examples per client, 1 epoch of batch 16, 100 clients per
round), with SCAFFOLD: every client keeps a control variate as large as the
model, 10,000 x 169,462 x 4 B = 6.8 GB of per-client state. With
``--home host`` the controls stay in host memory and only the cohort's rows
travel each round. Reports the state's size, the process's peak RSS, the
compile time and the median round time, as JSON and markdown (default OUT: a
fresh runs/homes-<time>).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--clients", type=int, default=10_000)
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--home", default="host", choices=("replicated", "sharded", "host"))
p.add_argument("--out", default=None)
args = p.parse_args()
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={len(os.sched_getaffinity(0))}")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxqfl import algorithms, engine, models  # noqa: E402
from jaxqfl.bench.memory import PeakRSS, current_rss  # noqa: E402
from jaxqfl.bench.workloads import random_population  # noqa: E402
from jaxqfl.engine.chunking import cpu_model  # noqa: E402

out = pathlib.Path(args.out or f"runs/homes-{time.strftime('%Y%m%d-%H%M%S')}")
if out.exists() and any(out.iterdir()):
    p.error(f"--out {out} exists and is not empty; give a new folder (results are never overwritten)")
out.mkdir(parents=True, exist_ok=True)
with PeakRSS() as mem:
    population = random_population(args.clients, 64, 784, 62)
    rss_population = current_rss()
    sim = engine.build(population, models.mlp(hidden=(200,), num_outputs=62), algorithms.scaffold(0.05),
                       engine.LocalSchedule(local_epochs=1, batch_size=16), cohort_size=100,
                       client_state=args.home, autotune=False)
    compile_s = sim.compile_block(1)
    state = sim.init(0)
    state_bytes = sum(np.asarray(a).nbytes for a in jax.tree.leaves(state.client_states))
    state, _ = sim.run_block(state, 1)  # warm-up
    seconds = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        state, metrics = sim.run_block(state, 1)
        jax.block_until_ready(state.params)
        seconds.append(time.perf_counter() - t0)
result = {
    "clients": args.clients, "home": sim.client_state_home, "num_params": sim.num_params,
    "client_state_bytes": int(state_bytes), "population_bytes": int(population.x.nbytes + population.y.nbytes),
    "rss_after_population_bytes": rss_population, "peak_rss_bytes": mem.peak, "compile_s": compile_s,
    "round_ms_median": 1e3 * float(np.median(seconds)), "round_ms_all": [1e3 * s for s in seconds],
    "num_devices": sim.num_devices, "chunk_size": sim.chunk_size,
    "cpu": cpu_model(),
}
(out / "client_state_homes.json").write_text(json.dumps(result, indent=2) + "\n")
md = ("| clients | home | client states | population | peak RSS | compile | round (median) |\n"
      "| --- | --- | --- | --- | --- | --- | --- |\n"
      f"| {args.clients:,} | {result['home']} | {state_bytes / 1e9:.2f} GB | {result['population_bytes'] / 1e9:.2f} GB | "
      f"{mem.peak / 1e9:.2f} GB | {compile_s:.1f} s | {result['round_ms_median']:.0f} ms |\n")
(out / "client_state_homes.md").write_text(md)
print(md)
