"""Sweep benchmark (issue 15): S seeds as one program against S separate runs.

    python benchmarks/sweep.py [--seeds 8] [--rounds-list 100,1000] [--out DIR]

(a) The user's view: wall time of ``jaxqfl run --seeds 0-(S-1)`` against S
    ``jaxqfl run --seed s`` processes one after another (the default Synthetic
    run, ``--rounds`` from the list), each a fresh process as a user would run it.
(b) The device's view, in one process: the ``tiny`` and ``mlp`` bench workloads,
    a single config's block program against the S-config sweep program, timed
    interleaved (median of 3 blocks each), as config-rounds per second; compile
    times, the sweep's peak RSS, and each program's time over its roofline floor
    (``jaxqfl.bench.cost.round_cost`` FLOPs and bytes, times S for the sweep,
    against the matmul FLOP/s and copy bandwidth measured in this process:
    ``over_floor = round time / max(FLOPs / peak FLOP/s, bytes / peak GB/s)``).

Writes OUT/sweep.json and OUT/sweep.md (default OUT: a fresh runs/sweep-bench-<time>).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--seeds", type=int, default=8)
p.add_argument("--rounds-list", default="100,1000")
p.add_argument("--block", type=int, default=5, help="rounds per timed block in (b)")
p.add_argument("--workloads", default="tiny,mlp")
p.add_argument("--skip-user-view", action="store_true")
p.add_argument("--out", default=None)
args = p.parse_args()
out = pathlib.Path(args.out or f"runs/sweep-bench-{time.strftime('%Y%m%d-%H%M%S')}")
if out.exists() and any(out.iterdir()):
    p.error(f"--out {out} exists and is not empty; give a new folder (results are never overwritten)")
out.mkdir(parents=True, exist_ok=True)
S = args.seeds
env = {**os.environ, "JAXQFL_AUTOTUNE": "off"}  # the same (modelled) chunk for every process
jaxqfl = [sys.executable, "-m", "jaxqfl.cli.main", "run", "--no-progress"]


def timed(cmd) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


user_view = []
if not args.skip_user_view:
    for rounds in [int(r) for r in args.rounds_list.split(",")]:
        tag = out / f"user-{rounds}"
        sweep_s = timed(jaxqfl + ["--rounds", str(rounds), "--seeds", f"0-{S - 1}", "--out", str(tag / "sweep")])
        separate_s = sum(timed(jaxqfl + ["--rounds", str(rounds), "--seed", str(s), "--out", str(tag / f"seed{s}")])
                         for s in range(S))
        user_view.append({"rounds": rounds, "sweep_s": sweep_s, "separate_s": separate_s,
                          "speedup": separate_s / sweep_s})
        print(f"(a) {rounds} rounds: sweep {sweep_s:.1f} s, {S} runs {separate_s:.1f} s -> "
              f"{separate_s / sweep_s:.2f}x", flush=True)

os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={len(os.sched_getaffinity(0))}"
os.environ["JAXQFL_AUTOTUNE"] = "off"
import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxqfl import engine  # noqa: E402
from jaxqfl.bench import workloads  # noqa: E402
from jaxqfl.bench.cost import round_cost  # noqa: E402
from jaxqfl.bench.machine import measure_peaks  # noqa: E402
from jaxqfl.bench.memory import PeakRSS  # noqa: E402
from jaxqfl.engine.chunking import cpu_model  # noqa: E402

peaks = measure_peaks()
print(f"peaks: {peaks.flops / 1e9:.0f} GFLOP/s matmul, {peaks.bandwidth / 1e9:.1f} GB/s copy", flush=True)
device_view = []
for name in args.workloads.split(","):
    w = getattr(workloads, name)()
    cost = round_cost(w.population, w.model, w.algorithm, w.schedule, w.cohort_size)
    floor_s = max(cost.flops / peaks.flops, cost.bytes / peaks.bandwidth)  # one config's round
    single = engine.build(w.population, w.model, w.algorithm, w.schedule, cohort_size=w.cohort_size, uplink=w.uplink)
    with PeakRSS() as mem:
        sweep = engine.build_sweep(w.population, w.model, lambda hp, a=w.algorithm: a, w.schedule,
                                   configs=engine.grid(range(S)), cohort_size=w.cohort_size, uplink=w.uplink)
        sweep_compile = sweep.compile_block(args.block)
        states = sweep.init()
        states, _ = sweep.run_block(states, args.block)
    single_compile = single.compile_block(args.block)
    state = single.init(0)
    state, _ = single.run_block(state, args.block)
    t_single, t_sweep = [], []
    for _ in range(3):  # interleaved
        t0 = time.perf_counter()
        state, m = single.run_block(state, args.block)
        jax.block_until_ready(m)
        t_single.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        states, m = sweep.run_block(states, args.block)
        jax.block_until_ready(m)
        t_sweep.append(time.perf_counter() - t0)
    single_rate = args.block / float(np.median(t_single))
    sweep_rate = S * args.block / float(np.median(t_sweep))
    row = {"workload": name, "configs": S, "single_chunk": single.chunk_size, "sweep_chunk": sweep.chunk_size,
           "single_compile_s": single_compile, "sweep_compile_s": sweep_compile,
           "single_round_ms": 1e3 / single_rate, "sweep_round_ms": 1e3 * S / sweep_rate,
           "single_config_rounds_per_s": single_rate, "sweep_config_rounds_per_s": sweep_rate,
           "ratio": sweep_rate / single_rate, "sweep_peak_rss_bytes": mem.peak,
           "flops_per_config_round": cost.flops, "bytes_per_config_round": cost.bytes, "floor_s": floor_s,
           "single_over_floor": 1 / single_rate / floor_s, "sweep_over_floor": S / sweep_rate / (S * floor_s)}
    device_view.append(row)
    print(f"(b) {name}: single {row['single_round_ms']:.1f} ms/round, sweep of {S} {row['sweep_round_ms']:.1f} ms/round "
          f"-> {row['ratio']:.2f}x config-rounds/s; compile {single_compile:.1f} s vs {sweep_compile:.1f} s", flush=True)

machine = {"cpu": cpu_model(),
           "cores": len(os.sched_getaffinity(0)), "backend": jax.default_backend(), "devices": jax.device_count()}
(out / "sweep.json").write_text(json.dumps({"machine": machine, "peaks": peaks._asdict(), "user_view": user_view,
                                            "device_view": device_view}, indent=2) + "\n")
md = [f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['backend']} x {machine['devices']}; "
      f"measured {peaks.flops / 1e9:.0f} GFLOP/s matmul, {peaks.bandwidth / 1e9:.1f} GB/s copy.", "",
      f"(a) wall time, `jaxqfl run --seeds 0-{S - 1}` vs {S} `jaxqfl run` processes", "",
      "| rounds | sweep (s) | separate runs (s) | speed-up |", "| --- | --- | --- | --- |"]
md += [f"| {r['rounds']} | {r['sweep_s']:.1f} | {r['separate_s']:.1f} | {r['speedup']:.2f}x |" for r in user_view]
md += ["", f"(b) one process, config-rounds per second, {S} configs vs one (interleaved, median of 3 blocks)", "",
       "| workload | chunk single / sweep | round single (ms) | round of the sweep (ms) | ratio | "
       "time / floor single / sweep | compile single / sweep (s) | sweep peak RSS (GB) |",
       "| --- | --- | --- | --- | --- | --- | --- | --- |"]
md += [f"| {r['workload']} | {r['single_chunk']} / {r['sweep_chunk']} | {r['single_round_ms']:.1f} | "
       f"{r['sweep_round_ms']:.1f} | {r['ratio']:.2f}x | {r['single_over_floor']:.1f} / {r['sweep_over_floor']:.1f} | "
       f"{r['single_compile_s']:.1f} / {r['sweep_compile_s']:.1f} | "
       f"{r['sweep_peak_rss_bytes'] / 1e9:.2f} |" for r in device_view]
(out / "sweep.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
