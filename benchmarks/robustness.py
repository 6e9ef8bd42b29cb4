"""Robust aggregation against Byzantine clients (issue 10): accuracy grid and round-time cost.

Accuracy: FedAvg on MNIST, Dirichlet(alpha = 0.5) over 100 clients, 20 per
round, 20% of the population malicious (a fixed set, ``aggregate.with_attack``),
multinomial logistic regression (784 -> 10), local SGD (batch 32, lr 0.05,
``--local-steps``), server SGD lr 1. Every aggregator x attack pair runs the
same seed (same cohorts, same data order, same malicious set); the table is the
final test accuracy. Round time: each rule's seconds per round against the mean
at cohorts of 100 and 1,000 (MNIST over 1,000 IID clients, one local step), in
the same process after compilation.

The defaults are scaled down (``--rounds``, a linear model) so the grid fits a
small CPU budget (72 compilations dominate: 35 minutes measured on a 2-core CPU
shared with other jobs, less when idle); timings on such a machine are noisy. Writes benchmarks/results/robustness.{json,md,png} (or ``--out``).

    python benchmarks/robustness.py --data-path ../shared/data/mnist/mnist.npz
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import jax
import numpy as np
import optax

from jaxqfl import aggregate, algorithms, data, engine, models
from jaxqfl.choices import AGGREGATORS, ATTACK_NAMES

WITHIN = 0.03  # "holds": within 3 accuracy points of the same rule without attackers


def build(population, rule, attack, args, cohort, local_steps):
    agg = aggregate.aggregator_by_name(rule, trim_fraction=args.trim_fraction, clip_radius=args.clip_radius)
    agg, labels = aggregate.attacked(agg, attack, args.byzantine_fraction, num_clients=population.num_clients,
                                     num_classes=population.num_classes, seed=args.seed)
    algorithm = algorithms.fedavg(optax.sgd(args.client_lr), optax.sgd(1.0))
    return engine.build(population, models.logistic_regression(num_outputs=population.num_classes), algorithm,
                        engine.LocalSchedule(local_steps=local_steps, batch_size=32), cohort_size=cohort,
                        aggregator=agg, label_transform=labels)


def accuracy_grid(args, out):
    population = data.build("mnist", num_clients=100, partition="dirichlet", alpha=0.5, data_path=args.data_path,
                            seed=args.seed)
    grid = {}
    for rule in AGGREGATORS:
        for attack in ATTACK_NAMES:
            t0 = time.perf_counter()
            sim = build(population, rule, attack, args, 20, args.local_steps)
            res = engine.run(sim, rounds=args.rounds, eval_every=args.rounds, seed=args.seed)
            acc = float(res.final["test_accuracy"])
            grid[f"{rule}/{attack}"] = {"accuracy": acc if np.isfinite(acc) else None,
                                        "malicious_in_last_cohort": res.final.get("server_malicious_in_cohort"),
                                        "seconds": time.perf_counter() - t0}
            print(f"{rule:14s} {attack:11s} acc {acc:.4f}  ({time.perf_counter() - t0:.1f} s)", flush=True)
            (out / "robustness.partial.json").write_text(json.dumps(grid, indent=1))
    return grid


def round_times(args):
    population = data.build("mnist", num_clients=1000, partition="iid", data_path=args.data_path, seed=args.seed)
    times = {}
    for cohort in (100, 1000):
        for rule in AGGREGATORS:
            sim = build(population, rule, "none", args, cohort, 1)
            state = sim.init(args.seed)
            sim.compile_block(args.timing_rounds)
            state, _ = sim.run_block(state, args.timing_rounds)  # warm
            jax.block_until_ready(state.params)
            t0 = time.perf_counter()
            state, _ = sim.run_block(state, args.timing_rounds)
            jax.block_until_ready(state.params)
            times[f"{rule}/{cohort}"] = (time.perf_counter() - t0) / args.timing_rounds
            print(f"cohort {cohort:5d} {rule:14s} {times[f'{rule}/{cohort}'] * 1e3:8.1f} ms/round", flush=True)
    return times


def holds(grid):
    """Per rule: the attacks under which it stays within 3 points of its own attack-free accuracy."""
    out = {}
    for rule in AGGREGATORS:
        base = grid[f"{rule}/none"]["accuracy"]
        out[rule] = [a for a in ATTACK_NAMES[1:]
                     if base is not None and grid[f"{rule}/{a}"]["accuracy"] is not None
                     and grid[f"{rule}/{a}"]["accuracy"] >= base - WITHIN]
    return out


def write(args, out, grid, times, elapsed):
    held = holds(grid)
    mean_free = grid["mean/none"]["accuracy"]
    collapses = [a for a in ATTACK_NAMES[1:]
                 if grid[f"mean/{a}"]["accuracy"] is None or grid[f"mean/{a}"]["accuracy"] < mean_free - WITHIN]
    result = {"config": {k: v for k, v in vars(args).items() if k != "out"}, "grid": grid, "round_seconds": times,
              "holds_within_3_points": held, "mean_loses_more_than_3_points_under": collapses,
              "machine": {"platform": jax.devices()[0].platform, "cpu": platform.processor() or platform.machine(),
                          "devices": jax.device_count()}}
    (out / "robustness.json").write_text(json.dumps(result, indent=2) + "\n")
    fmt = lambda v: "diverged" if v is None else f"{v:.3f}"
    lines = ["# Robust aggregation under attack (MNIST, Dirichlet 0.5, 100 clients, 20 per round, "
             f"{args.byzantine_fraction:.0%} malicious)", "",
             f"Logistic regression, {args.rounds} rounds of {args.local_steps} local SGD steps (batch 32, lr "
             f"{args.client_lr}); trim/assumed fraction {args.trim_fraction}, clip radius {args.clip_radius}, "
             "attack strengths at their defaults (jaxqfl.aggregate.attacks). Scaled down (a linear model, "
             f"{args.rounds} rounds) for a shared 2-core CPU; this run took {elapsed:.0f} s there, timings noisy. "
             "Final test accuracy:", "",
             "| aggregator | " + " | ".join(ATTACK_NAMES) + " |", "|---" * (len(ATTACK_NAMES) + 1) + "|"]
    for rule in AGGREGATORS:
        lines.append(f"| {rule} | " + " | ".join(fmt(grid[f"{rule}/{a}"]["accuracy"]) for a in ATTACK_NAMES) + " |")
    lines += ["", "Within 3 points of the rule's own attack-free accuracy:", ""]
    lines += [f"- {rule}: {', '.join(a) if a else 'none'}" for rule, a in held.items()]
    broken = [k for k, v in grid.items() if v["accuracy"] is None or v["accuracy"] < 0.5]
    lines += ["", f"The mean loses more than 3 points under: {', '.join(collapses) or 'none'}. "
              f"Below 0.5 accuracy (collapse): {', '.join(broken) or 'none'}.", ""]
    if times:
        lines += ["## Round time (MNIST, 1,000 IID clients, logistic regression, 1 local step; "
                  "noisy: shared 2-core machine)", "", "| aggregator | cohort 100 (ms) | x mean | cohort 1,000 (ms) "
                  "| x mean |", "|---|---|---|---|---|"]
        for rule in AGGREGATORS:
            row = [f"{times[f'{rule}/{c}'] * 1e3:.1f} | {times[f'{rule}/{c}'] / times[f'mean/{c}']:.2f}"
                   for c in (100, 1000)]
            lines.append(f"| {rule} | " + " | ".join(row) + " |")
    (out / "robustness.md").write_text("\n".join(lines) + "\n")
    plot(grid, out / "robustness.png")


def plot(grid, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = np.array([[np.nan if grid[f"{r}/{a}"]["accuracy"] is None else grid[f"{r}/{a}"]["accuracy"]
                     for a in ATTACK_NAMES] for r in AGGREGATORS])
    fig, ax = plt.subplots(figsize=(9, 5.5))
    im = ax.imshow(acc, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(ATTACK_NAMES)), ATTACK_NAMES, rotation=35, ha="right")
    ax.set_yticks(range(len(AGGREGATORS)), AGGREGATORS)
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            ax.text(j, i, "div" if np.isnan(acc[i, j]) else f"{acc[i, j]:.2f}", ha="center", va="center",
                    color="w" if np.isnan(acc[i, j]) or acc[i, j] < 0.6 else "k", fontsize=8)
    fig.colorbar(im, label="final test accuracy")
    ax.set_title("MNIST, Dirichlet(0.5), 20% malicious: aggregator x attack")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", required=True)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--local-steps", type=int, default=5)
    p.add_argument("--client-lr", type=float, default=0.05)
    p.add_argument("--byzantine-fraction", type=float, default=0.2)
    p.add_argument("--trim-fraction", type=float, default=0.2)
    p.add_argument("--clip-radius", type=float, default=0.5)
    p.add_argument("--timing-rounds", type=int, default=3)
    p.add_argument("--no-timing", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    grid = accuracy_grid(args, out)
    times = {} if args.no_timing else round_times(args)
    write(args, out, grid, times, time.perf_counter() - t0)
    (out / "robustness.partial.json").unlink(missing_ok=True)
    print(f"done in {time.perf_counter() - t0:.0f} s; wrote {out}/robustness.{{json,md,png}}")


if __name__ == "__main__":
    main()
