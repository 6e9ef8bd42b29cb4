"""Clients that differ in speed: accuracy against simulated time, synchronous and buffered-asynchronous.

Two non-IID federations of 100 clients, every client's seconds per local step and
link bandwidth log-normal with spread ``--sigma`` (1: the slowest of 100 clients
is about 10x the median) around 1 s per step and 1 Mbit/s (``--speeds lognormal:SIGMA``):

* ``synthetic-1-1``: Synthetic(1, 1) (Li et al. 2020); multinomial logistic regression;
* ``mnist-shards``: real MNIST (``../shared/data/mnist/mnist.npz``), 2 label shards
  per client; an MLP with one hidden layer of 200.

Methods, each 10 local SGD steps of batch 32 per client, every one through the
``jaxqfl run`` command (the flags are in the JSON):

* ``fedavg-wait``: FedAvg, cohort 10, the server waits for its slowest client;
* ``fedavg-drop``: FedAvg, cohort 10, clients that miss the deadline are dropped;
* ``fedprox-partial``: FedProx (mu 0.01), stragglers do the steps that fit (partial work);
* ``fednova-partial``: FedNova, the same partial work, normalised by the steps done;
* ``fedbuff``: FedBuff (Nguyen et al. 2022), concurrency 10 (equal to the cohort of the
  synchronous methods), a server step every ``--buffer`` arrivals, staleness weight 1/sqrt(1+s).

The deadline is the ``--deadline-quantile`` (0.5) quantile over the population of a
client's full round time (10 steps x its seconds per step + its float32 model down
and up over its link), computed from the same draw as the runs (``jaxqfl.systems``).
Every method gets the same budget of simulated time, that of ``fedavg-wait``'s
``--rounds`` rounds: the deadline runs and FedBuff run enough rounds (server steps)
to pass it and are cut there. Reported per method: test accuracy against simulated
time (the plot), the simulated time to ``--target`` accuracy, the final accuracy,
the mean fraction of dropped clients and of the work done, FedBuff's mean staleness,
and FedBuff's speed-up to the target over ``fedavg-wait`` (its paper reports 3.3x on
its setting).

Second part, the cost of the systems model on the ``mlp`` round of ``jaxqfl bench``
(100 of 1,000 clients, MLP 784-200-62, 4 local steps): the same round program without
and with speeds, a deadline and partial work, timed interleaved (median of
``--timing-rounds``), with the round's counted FLOPs and bytes and this machine's
measured peaks.

    python benchmarks/heterogeneity.py                            # a fresh runs/heterogeneity-<time>/
    python benchmarks/heterogeneity.py --out benchmarks/results   # update the stored result
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
METHODS = ("fedavg-wait", "fedavg-drop", "fedprox-partial", "fednova-partial", "fedbuff")
COHORT, STEPS, BATCH, NUM_CLIENTS = 10, 10, 32, 100


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="output folder (default: a fresh runs/heterogeneity-<time>)")
    p.add_argument("--mnist-path", default=None, help="mnist.npz (default: ../shared/data/mnist/mnist.npz)")
    p.add_argument("--rounds", type=int, default=60, help="synchronous rounds per method (60)")
    p.add_argument("--sigma", type=float, default=1.0, help="log-normal spread of speeds and bandwidths (1)")
    p.add_argument("--deadline-quantile", type=float, default=0.5,
                   help="the deadline, as a quantile of the clients' full round times (0.5)")
    p.add_argument("--buffer", type=int, default=3, help="FedBuff's buffer K (3; concurrency is the cohort, 10)")
    p.add_argument("--target", default="synthetic-1-1=0.6,mnist-shards=0.8",
                   help="target test accuracy per workload (synthetic-1-1=0.6,mnist-shards=0.8)")
    p.add_argument("--timing-rounds", type=int, default=30, help="timed rounds of the overhead part (30)")
    p.add_argument("--workloads", default="synthetic-1-1,mnist-shards", help="which federations (both)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("rounds", "buffer", "timing_rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if not (args.sigma >= 0 and args.sigma < 10):
        p.error(f"--sigma must lie in [0, 10), got {args.sigma}")
    if not (0 < args.deadline_quantile <= 1):
        p.error(f"--deadline-quantile must lie in (0, 1], got {args.deadline_quantile}")
    if args.buffer > COHORT:
        p.error(f"--buffer {args.buffer} exceeds the concurrency {COHORT}")
    if args.seed < 0:
        p.error(f"--seed must be a non-negative integer, got {args.seed}")
    names = [w for w in args.workloads.split(",") if w]
    bad = [w for w in names if w not in ("synthetic-1-1", "mnist-shards")]
    if bad or not names:
        p.error(f"--workloads: {bad or args.workloads!r} not among synthetic-1-1, mnist-shards")
    args.workloads = names
    try:
        args.target = {k: float(v) for k, v in (item.split("=") for item in args.target.split(","))}
    except ValueError:
        p.error(f"--target {args.target!r}: expected NAME=ACCURACY,...")
    missing = [w for w in names if w not in args.target or not 0 < args.target[w] <= 1]
    if missing:
        p.error(f"--target gives no accuracy in (0, 1] for {missing}")
    if args.mnist_path is None:
        args.mnist_path = os.path.join(HERE, "..", "..", "shared", "data", "mnist", "mnist.npz")
    if "mnist-shards" in names and not os.path.isfile(args.mnist_path):
        p.error(f"--mnist-path {args.mnist_path!r} is not a file")
    if args.out and os.path.exists(os.path.join(args.out, "heterogeneity.json")) and "results" not in args.out:
        p.error(f"--out {args.out!r} already holds heterogeneity.json; choose a new folder")
    return args


def _data_flags(workload: str, mnist_path: str) -> list[str]:
    if workload == "synthetic-1-1":
        return ["--dataset", "synthetic", "--synthetic-alpha", "1", "--synthetic-beta", "1", "--model", "logreg"]
    return ["--dataset", "mnist", "--data-path", mnist_path, "--partition", "shards", "--shards-per-client", "2",
            "--model", "mlp", "--hidden", "200"]


def _method_flags(method: str, deadline: float, buffer: int) -> list[str]:
    return {
        "fedavg-wait": ["--algorithm", "fedavg"],
        "fedavg-drop": ["--algorithm", "fedavg", "--deadline", repr(deadline), "--stragglers", "drop"],
        "fedprox-partial": ["--algorithm", "fedprox", "--mu", "0.01", "--deadline", repr(deadline),
                            "--stragglers", "partial"],
        "fednova-partial": ["--algorithm", "fednova", "--deadline", repr(deadline), "--stragglers", "partial"],
        "fedbuff": ["--algorithm", "fedavg", "--async", "fedbuff", "--concurrency", str(COHORT),
                    "--buffer", str(buffer), "--staleness", "sqrt"],
    }[method]


def _run(flags: list[str], out: str) -> tuple[dict, list[dict], float]:
    """``(summary.json, metrics.jsonl rows, whole-process seconds)`` of one ``jaxqfl run``."""
    cmd = [sys.executable, "-m", "jaxqfl.cli.main", "run", "--no-progress", "--out", out, *flags]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"jaxqfl run failed ({' '.join(flags)}):\n{done.stderr[-3000:]}")
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return summary, rows, seconds


def _deadline(workload: str, args, num_params: int) -> float:
    """The ``--deadline-quantile`` of the clients' full round times (float32 model down and up)."""
    import jax
    import numpy as np

    from jaxqfl import systems

    s = systems.draw_lognormal_systems(jax.random.key(args.seed), NUM_CLIENTS, args.sigma)
    full = STEPS * np.asarray(s.seconds_per_step, np.float64) + 2 * 32 * num_params / np.asarray(s.bandwidth,
                                                                                                 np.float64)
    return float(np.quantile(full, args.deadline_quantile))


def _num_params(run_dir: str) -> int:
    import jax
    import numpy as np

    from jaxqfl.engine.checkpoint import load_final_model

    return int(sum(np.size(a) for a in jax.tree.leaves(load_final_model(run_dir))))


def _mean_per_round(rows: list[dict], name: str):
    values = [v for r in rows for v in r.get(f"server_{name}_per_round", [])]
    return sum(values) / len(values) if values else None


def accuracy_part(args, runs: str, log) -> dict:
    """Every method on every workload; the runs' folders go under ``runs`` (a temporary folder)."""
    results = {}
    for workload in args.workloads:
        common = [*_data_flags(workload, args.mnist_path), "--num-clients", str(NUM_CLIENTS),
                  "--local-steps", str(STEPS), "--batch-size", str(BATCH), "--client-lr", "0.05",
                  "--seed", str(args.seed), "--eval-every", "2", "--speeds", f"lognormal:{args.sigma}",
                  "--target-accuracy", str(args.target[workload])]
        sync = [*common, "--cohort-size", str(COHORT), "--rounds", str(args.rounds)]
        rows_by, deadline, budget = {}, None, None
        for method in METHODS:
            folder = os.path.join(runs, f"{workload}-{method}")
            if method == "fedbuff":  # enough server steps to pass the budget (cut there below)
                flushes = max(1, int(args.rounds * COHORT / args.buffer * 4))
                flags = [*common, "--rounds", str(flushes), "--eval-every", str(max(2, 2 * COHORT // (2 * args.buffer))),
                         *_method_flags(method, 0.0, args.buffer)]
            elif method == "fedavg-wait":
                flags = [*sync, *_method_flags(method, 0.0, args.buffer)]
            else:  # a deadline round takes at most the deadline: enough rounds to pass the budget
                rounds = int(math.ceil(budget / deadline)) + 2
                flags = [*common, "--cohort-size", str(COHORT), "--rounds", str(rounds),
                         *_method_flags(method, deadline, args.buffer)]
            summary, rows, seconds = _run(flags, folder)
            if method == "fedavg-wait":
                deadline = _deadline(workload, args, _num_params(folder))
                budget = rows[-1]["sim_time"]
            if method != "fedavg-wait":  # keep the evaluations within fedavg-wait's budget of simulated time
                rows = [r for r in rows if r["sim_time"] <= budget * 1.0001] or rows[:1]
            hit = next((r for r in rows if r.get("test_accuracy", 0.0) >= args.target[workload]), None)
            rows_by[method] = {
                "flags": flags,
                "curve": [[r["sim_time"], r["round"], r.get("test_accuracy")] for r in rows],
                "final_accuracy": rows[-1].get("test_accuracy"),
                "sim_time_total": rows[-1]["sim_time"],
                "rounds": rows[-1]["round"],
                "time_to_target": None if hit is None else hit["sim_time"],
                "rounds_to_target": None if hit is None else hit["round"],
                "dropped_fraction": _mean_per_round(rows, "stragglers_dropped"),
                "work_fraction": _mean_per_round(rows, "partial_work"),
                "mean_staleness": summary.get("staleness_mean"),
                "staleness_histogram": summary.get("staleness_histogram"),
                "process_seconds": seconds,
            }
            r = rows_by[method]
            log(f"{workload:14s} {method:16s} acc {r['final_accuracy']:.3f}  sim {r['sim_time_total']:9.1f} s  "
                f"to target {r['time_to_target']}  ({seconds:.1f} s wall)")
        wait, buff = rows_by["fedavg-wait"]["time_to_target"], rows_by["fedbuff"]["time_to_target"]
        results[workload] = {"deadline": deadline, "target": args.target[workload], "methods": rows_by,
                             "fedbuff_speedup": None if not (wait and buff) else wait / buff}
    return results


def overhead_part(args, peaks, log) -> dict:
    """The ``mlp`` bench round without and with the systems model (speeds, a deadline, partial work)."""
    import statistics

    import jax
    import numpy as np

    from jaxqfl import engine, systems
    from jaxqfl.bench import cost as cost_lib
    from jaxqfl.bench import workloads

    w = workloads.WORKLOADS["mlp"]()
    c = cost_lib.round_cost(w.population, w.model, w.algorithm, w.schedule, w.cohort_size)
    client_systems = systems.draw_lognormal_systems(jax.random.key(args.seed), w.population.num_clients, args.sigma)
    spc = np.asarray(client_systems.seconds_per_step, np.float64)
    deadline = float(np.median(w.schedule.num_steps(w.population.max_count) * spc))  # the median compute time
    variants = {"plain": {}, "drop": dict(systems=client_systems, deadline=deadline, stragglers="drop"),
                "partial": dict(systems=client_systems, deadline=deadline, stragglers="partial")}
    runners = {}
    for name, extra in variants.items():
        sim = engine.build(w.population, w.model, w.algorithm, w.schedule, cohort_size=w.cohort_size,
                           uplink=w.uplink, chunk_size=None, **extra)
        sim.compile_block(1)
        box = [sim.init(args.seed)]

        def step(sim=sim, box=box):
            t0 = time.perf_counter()
            box[0], metrics = sim.run_block(box[0], 1)
            jax.block_until_ready((box[0], metrics))
            return time.perf_counter() - t0

        step()
        runners[name] = (sim, step, [])
    for _ in range(args.timing_rounds):  # interleaved: both see the same load
        for _, step, times in runners.values():
            times.append(step())
    out = {"workload": "mlp", "flops_per_round": c.flops, "bytes_per_round": c.bytes,
           "deadline": deadline, "peaks": {"flops": peaks.flops, "bandwidth": peaks.bandwidth}}
    for name, (sim, _, times) in runners.items():
        ms = 1e3 * statistics.median(times)
        out[name] = {"round_ms": ms, "chunk_size": sim.chunk_size, "num_devices": sim.num_devices,
                     "flops_fraction_of_peak": c.flops / (ms / 1e3) / peaks.flops}
    out["overhead"] = {m: out[m]["round_ms"] / out["plain"]["round_ms"] - 1 for m in ("drop", "partial")}
    log(f"mlp round: plain {out['plain']['round_ms']:.1f} ms; with speeds and a deadline, dropping "
        f"{out['drop']['round_ms']:.1f} ms ({100 * out['overhead']['drop']:+.1f}%), partial work "
        f"{out['partial']['round_ms']:.1f} ms ({100 * out['overhead']['partial']:+.1f}%); {c.flops / 1e9:.2f} GFLOP "
        f"and {c.bytes / 1e9:.3f} GB counted per round")
    return out


def _plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, (workload, r) in zip(axes[0], results.items()):
        for method, m in r["methods"].items():
            t = [p[0] for p in m["curve"]]
            a = [p[2] for p in m["curve"]]
            ax.plot(t, a, label=method, marker="." if method == "fedbuff" else None)
        ax.axhline(r["target"], color="grey", lw=0.8, ls=":")
        ax.set_title(f"{workload} (deadline {r['deadline']:.1f} s)")
        ax.set_xlabel("simulated seconds")
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _markdown(result: dict) -> str:
    lines = ["# Clients that differ in speed: accuracy against simulated time", "",
             f"`python benchmarks/heterogeneity.py` on {result['machine'].get('cpu', 'this machine')}; "
             f"{result['machine']['num_devices']} XLA {result['machine']['backend']} devices. Speeds and bandwidths log-normal with spread "
             f"{result['sigma']} around 1 s per step and 1 Mbit/s; 100 clients, 10 local steps of batch 32; "
             f"cohort (or concurrency) 10; FedBuff buffer {result['buffer']}, weight 1/sqrt(1+staleness).", ""]
    for workload, r in result["accuracy"].items():
        lines += [f"## {workload}: target accuracy {r['target']}, deadline {r['deadline']:.2f} simulated s", "",
                  "| method | rounds (server steps) | simulated s | final accuracy | time to target (s) | rounds to target "
                  "| dropped | work done | mean staleness |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for method, m in r["methods"].items():
            f = lambda v, spec: "-" if v is None else format(v, spec)
            lines.append(f"| {method} | {m['rounds']} | {m['sim_time_total']:,.0f} | {f(m['final_accuracy'], '.3f')} "
                         f"| {f(m['time_to_target'], ',.0f')} | {f(m['rounds_to_target'], 'd')} "
                         f"| {f(m['dropped_fraction'], '.2f')} | {f(m['work_fraction'], '.2f')} "
                         f"| {f(m['mean_staleness'], '.2f')} |")
        sp = r["fedbuff_speedup"]
        lines += ["", f"FedBuff's speed-up to the target over fedavg-wait: "
                      f"{'not measurable (a method missed the target)' if sp is None else f'{sp:.2f}x'}.", ""]
    o = result.get("overhead")
    if o:
        lines += ["## Cost of the systems model on the `mlp` bench round", "",
                  f"{o['flops_per_round'] / 1e9:.2f} GFLOP and {o['bytes_per_round'] / 1e9:.3f} GB counted per round; "
                  f"peaks measured in this run: matmul {o['peaks']['flops'] / 1e9:.0f} GFLOP/s, copy "
                  f"{o['peaks']['bandwidth'] / 1e9:.1f} GB/s.", "",
                  "| round program | ms / round (median) | share of matmul peak |", "|---|---:|---:|",
                  f"| plain | {o['plain']['round_ms']:.1f} | {o['plain']['flops_fraction_of_peak']:.3f} |",
                  *[f"| speeds + deadline {o['deadline']:.1f} s, {m} | {o[m]['round_ms']:.1f} | "
                    f"{o[m]['flops_fraction_of_peak']:.3f} |" for m in ("drop", "partial")], "",
                  f"Change against the plain round: drop {100 * o['overhead']['drop']:+.1f}%, partial work "
                  f"{100 * o['overhead']['partial']:+.1f}% (target: under +10%). Masked-out work still runs (static "
                  f"shapes), so neither saves FLOPs; the deadline's plan is a dry run of the bit counts that XLA "
                  f"reduces to constants.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = _parse(argv)
    from jaxqfl.bench.script import force_cpu_devices, log, measured_peaks, output_folder

    force_cpu_devices(2)
    out = output_folder(args.out, "heterogeneity")
    from jaxqfl.bench import machine

    peaks, load = measured_peaks(log)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="heterogeneity-runs-") as runs:
        accuracy = accuracy_part(args, runs, log)
    result = {"sigma": args.sigma, "buffer": args.buffer, "rounds": args.rounds, "seed": args.seed,
              "deadline_quantile": args.deadline_quantile, "machine": machine.describe(), "load_at_start": load,
              "accuracy": accuracy, "overhead": overhead_part(args, peaks, log)}
    with open(out / "heterogeneity.json", "w") as f:
        json.dump(result, f, indent=1, allow_nan=False)
    (out / "heterogeneity.md").write_text(_markdown(result))
    _plot(result["accuracy"], str(out / "heterogeneity.png"))
    log(f"wrote {out / 'heterogeneity.md'}, .json and .png")


if __name__ == "__main__":
    main()
