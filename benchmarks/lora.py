"""Federated fine-tuning of a pretrained transformer: full fine-tuning vs LoRA vs QLoRA (NF4 base).

The fortunes corpus (``../shared/data/fortunes``, 40 topic files) is split by
topic: the zoo transformer (width 64, 2 blocks, 4 heads, context 80) is
pretrained centrally on the first ``--pretrain-topics`` files
(``jaxqfl.models.pretrained.train_centrally``), then fine-tuned federated on
the others, one client per 5 fortunes (``--entries-per-client``), with FedAvg
(client SGD), ``--cohort`` clients a round, ``--local-steps`` steps of batch 16:

* ``full``: every parameter trained (the model started from the base);
* ``lora``: rank-``--rank`` adapters (alpha = 2 r) on every matmul kernel, float32 base;
* ``qlora``: the same adapters on an NF4 base with double quantization.

Measured, for each: test bits per character of the fine-tuning topics every
``--eval-every`` rounds, against rounds and against the cumulative uplink bits;
the round time against the per-client loop (``jaxqfl.bench.runner``: one client
at a time on one model copy, the way FlowerTune and pfl-research run it; FLOPs
and bytes counted from the jaxpr, the machine's matmul and copy peaks measured in
this run); peak RSS; and XLA's planned memory of a compiled round at chunks 1
and 4 (``jaxqfl.bench.round_memory``): the per-client share, the fixed part
and the largest chunk of clients trained at once that fits in 8 GB,
``floor((8 GB - fixed) / per_client)`` (the cohort itself can be larger: chunks
run one after another).

Three sides train in interleaved blocks (order rotated), so they see the same
machine load.

    python benchmarks/lora.py                              # a fresh runs/lora-<time>/
    python benchmarks/lora.py --out benchmarks/results     # update the stored result
"""
from __future__ import annotations

import argparse
import os
import sys

SIDES = ("full", "lora", "qlora")
BUDGET_BYTES = 8 * 2**30


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="output folder (default: a fresh runs/lora-<time>)")
    p.add_argument("--fortunes", default=None, metavar="DIR", help="the fortunes folder (default: ../shared/data)")
    p.add_argument("--pretrain-topics", type=int, default=20, help="topic files for central pretraining (20 of 40)")
    p.add_argument("--pretrain-steps", type=int, default=400, help="Adam steps of batch 32 (400)")
    p.add_argument("--entries-per-client", type=int, default=5)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--cohort", type=int, default=20, help="clients per round (20)")
    p.add_argument("--local-steps", type=int, default=5)
    p.add_argument("--client-lr", type=float, default=0.3)
    p.add_argument("--chunk-size", type=int, default=5, help="clients per vmap (5)")
    p.add_argument("--devices", type=int, default=2, help="XLA CPU devices (2)")
    p.add_argument("--loop-rounds", type=int, default=3, help="timed rounds against the per-client loop (3)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("pretrain_topics", "pretrain_steps", "entries_per_client", "rank", "rounds", "eval_every", "cohort",
                 "local_steps", "chunk_size", "devices", "loop_rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if not args.client_lr > 0:
        p.error(f"--client-lr must be positive, got {args.client_lr}")
    if args.rounds % args.eval_every:
        p.error(f"--rounds {args.rounds} must be a multiple of --eval-every {args.eval_every}")
    if args.cohort % (args.chunk_size * args.devices):
        p.error(f"--cohort {args.cohort} must be a multiple of --chunk-size x --devices "
                f"({args.chunk_size * args.devices})")
    if args.fortunes is None:
        args.fortunes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                                     "fortunes")
    if not os.path.isdir(args.fortunes):
        p.error(f"--fortunes {args.fortunes!r} is not a folder")
    if args.out and os.path.exists(os.path.join(args.out, "lora.json")) and "results" not in args.out:
        p.error(f"--out {args.out!r} already holds lora.json; choose a new folder")
    return args


def _populations(args, tmp):
    """(pretraining population, fine-tuning population): the topic files split by name order."""
    import glob

    from jaxqfl.data.text import load_text

    topics = sorted(glob.glob(os.path.join(args.fortunes, "*.txt")))
    if not 0 < args.pretrain_topics < len(topics):
        raise SystemExit(f"error: --pretrain-topics must lie in [1, {len(topics) - 1}], got {args.pretrain_topics}")
    dirs = []
    for name, part in (("pretrain", topics[:args.pretrain_topics]), ("finetune", topics[args.pretrain_topics:])):
        d = os.path.join(tmp, name)
        os.mkdir(d)
        for f in part:
            os.symlink(os.path.abspath(f), os.path.join(d, os.path.basename(f)))
        dirs.append(d)
    return (load_text(dirs[0], 80),
            load_text(dirs[1], 80, entries_per_client=args.entries_per_client))


def _sides(args, base, model):
    from jaxqfl import lora
    from jaxqfl.models import pretrained

    return {"full": pretrained.starting_from(model, base),
            "lora": lora.adapt(model, base, rank=args.rank, alpha=2.0 * args.rank),
            "qlora": lora.adapt(model, base, rank=args.rank, alpha=2.0 * args.rank, base_quant_format="nf4")}


def _train(args, population, models_by_side, algorithm, schedule, log):
    import statistics
    import time

    import jax
    import numpy as np

    from jaxqfl import engine

    sides = {}
    for name, model in models_by_side.items():
        sim = engine.build(population, model, algorithm, schedule, cohort_size=args.cohort,
                           chunk_size=args.chunk_size, num_devices=args.devices, autotune=False)
        compile_s = sim.compile_block(args.eval_every)
        state = sim.init(args.seed)
        ev = sim.evaluate(state.params)
        sides[name] = {"sim": sim, "state": state, "compile_s": compile_s, "block_s": [], "uplink_bits": 0,
                       "curve": [{"round": 0, "uplink_bits": 0, **ev}]}
        log(f"[{name}] {sim.num_params:,} trained parameters; compiled in {compile_s:.1f} s; "
            f"bits/char {ev['bits_per_char']:.3f} at round 0")
    order = list(models_by_side)
    for b in range(args.rounds // args.eval_every):
        for name in order[b % len(order):] + order[:b % len(order)]:
            s = sides[name]
            t0 = time.perf_counter()
            s["state"], metrics = s["sim"].run_block(s["state"], args.eval_every)
            jax.block_until_ready((s["state"], metrics))
            s["block_s"].append(time.perf_counter() - t0)
            s["uplink_bits"] += int(np.sum(np.asarray(metrics.uplink_bits, np.int64)))
            ev = s["sim"].evaluate(s["state"].params)
            s["curve"].append({"round": (b + 1) * args.eval_every, "uplink_bits": s["uplink_bits"], **ev})
            log(f"[{name}] round {(b + 1) * args.eval_every}: bits/char {ev['bits_per_char']:.3f}")
    return {name: {"trained_params": s["sim"].num_params, "compile_s": s["compile_s"],
                   "round_s": statistics.median(s["block_s"]) / args.eval_every, "block_times_s": s["block_s"],
                   "curve": s["curve"], "final_bits_per_char": s["curve"][-1]["bits_per_char"]}
            for name, s in sides.items()}


def _memory(population, model, algorithm, schedule):
    from jaxqfl.bench.round_memory import round_memory

    one, four = (round_memory(population, model, algorithm, schedule, c) for c in (1, 4))
    per_client = max((four["peak"] - one["peak"]) / 3, 1.0)
    fixed = one["peak"] - per_client
    return {"peak_chunk1_bytes": one["peak"], "peak_chunk4_bytes": four["peak"], "per_client_bytes": per_client,
            "fixed_bytes": fixed, "max_chunk_in_8gb": int((BUDGET_BYTES - fixed) // per_client)}


def _markdown(r) -> str:
    p = r["peaks"]
    lines = [
        "# Federated fine-tuning: full vs LoRA vs QLoRA (NF4 base)",
        "",
        f"`python benchmarks/lora.py`: the zoo transformer pretrained centrally on {r['pretrain_topics']} fortune "
        f"topics ({r['pretrain_steps']} Adam steps; bits/char on their held-out windows {r['pretrain_bpc']:.3f}), "
        f"then fine-tuned federated on the other {r['finetune_topics']} topics: {r['num_clients']:,} clients "
        f"(5 fortunes each), {r['cohort']} a round, {r['local_steps']} local SGD steps of batch 16 (lr "
        f"{r['client_lr']}), {r['rounds']} rounds; LoRA rank {r['rank']}, alpha {2 * r['rank']}, on every matmul "
        f"kernel. Chunk {r['chunk_size']} x {r['devices']} devices. {r['machine']['cpu']}, {r['cpu_count']} cores; "
        f"peaks measured in this run: matmul {p['flops'] / 1e9:.0f} GFLOP/s, copy {p['bandwidth'] / 1e9:.1f} GB/s; "
        f"load average {r['loadavg_start']} at start, {r['loadavg_end']} at end (a shared machine: the three sides "
        "ran interleaved, so their ratios hold better than their absolute times).",
        "",
        "| side | trained params | base stored | uplink / client / round | test bits/char, round 0 -> "
        f"{r['rounds']} | round in training (s) | clients/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in SIDES:
        s = r["sides"][name]
        stored = f"{s['base_bytes'] / 1e6:.3f} MB" if name != "full" else "- (all trained)"
        lines.append(
            f"| {name} | {s['trained_params']:,} | {stored} | {s['uplink_bits_per_client_round'] / 8e3:.1f} kB | "
            f"{s['curve'][0]['bits_per_char']:.3f} -> {s['final_bits_per_char']:.3f} | {s['round_s']:.3f} | "
            f"{r['cohort'] / s['round_s']:.1f} |")
    lines += [
        "",
        f"Against the per-client loop ({r['loop_rounds']} rounds each, interleaved; one client at a time on one "
        "model copy, the base a constant of its program) and memory (XLA's plan of one compiled round, one "
        "device: the fixed part holds the base, the population and the global state; the per-client part the "
        "adapters or the model copy, their gradients and the activations of a batch of 16 x 80 tokens):",
        "",
        "| side | jaxqfl round (s) | loop round (s) | speed-up | GFLOP/s | time / floor | peak RSS | "
        "XLA fixed + per client | clients at once in 8 GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in SIDES:
        b, m = r["loop"][name], r["memory"][name]
        lines.append(
            f"| {name} | {b['round_s']:.3f} | {b['loop_round_s']:.3f} | {b['speedup_over_loop']:.2f}x | "
            f"{b['gflops_per_s']:.1f} | {b['over_floor']:.2f} | {b['peak_rss_bytes'] / 2**20:.0f} MiB | "
            f"{m['fixed_bytes'] / 2**20:.1f} + {m['per_client_bytes'] / 2**20:.2f} MiB | {m['max_chunk_in_8gb']:,} |")
    lines += ["", "The per-client loop's round and jaxqfl's compute the same round from the same seed: largest "
              "parameter difference after one round " + ", ".join(
                  f"{n} {r['loop'][n]['max_abs_diff_vs_loop']:.1e}" for n in SIDES) + ".", "",
              "![curves](lora.png)", ""]
    return "\n".join(lines)


def _plot(r, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in SIDES:
        c = r["sides"][name]["curve"]
        axes[0].plot([x["round"] for x in c], [x["bits_per_char"] for x in c], marker="o", ms=3, label=name)
        axes[1].plot([x["uplink_bits"] / 8e6 for x in c], [x["bits_per_char"] for x in c], marker="o", ms=3,
                     label=name)
    axes[0].set_xlabel("round")
    axes[1].set_xlabel("cumulative uplink (MB)")
    axes[1].set_xscale("symlog", linthresh=0.1)
    for ax in axes:
        ax.set_ylabel("test bits per character")
        ax.legend(fontsize=8)
    fig.suptitle("fortunes transformer, federated fine-tuning of a centrally pretrained base")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    from jaxqfl.bench.script import force_cpu_devices, log, measured_peaks, output_folder

    force_cpu_devices(args.devices)

    import json
    import tempfile

    import jax
    import numpy as np
    import optax

    from jaxqfl import algorithms, models, tasks
    from jaxqfl.bench import machine
    from jaxqfl.bench.runner import bench_workload
    from jaxqfl.bench.workloads import Workload
    from jaxqfl.engine.schedule import LocalSchedule
    from jaxqfl.lora import base_quant
    from jaxqfl.models import pretrained

    out = output_folder(args.out, "lora")
    peaks, load_start = measured_peaks(log)
    with tempfile.TemporaryDirectory() as tmp:
        pre, fine = _populations(args, tmp)
    model = models.transformer(vocab=fine.num_classes, width=64, depth=2, heads=4, context=80)
    pre_task = tasks.for_population(pre)
    base = pretrained.train_centrally(model, pre, pre_task, steps=args.pretrain_steps, batch=32, seed=args.seed,
                                      log=log)
    held_out = jax.device_get(jax.jit(lambda p, x, y: pre_task.metrics(model.apply(p, x), y))(
        base, pre.x_test[:2048], pre.y_test[:2048]))
    pre_bpc = pre_task.finish(pre.y_test[:2048])({k: float(np.mean(v)) for k, v in held_out.items()})["bits_per_char"]
    log(f"pretrained: bits/char {pre_bpc:.3f} on the pretraining topics' held-out windows; fine-tuning "
        f"{fine.num_clients:,} clients")
    by_side = _sides(args, base, model)
    algorithm = algorithms.fedavg(optax.sgd(args.client_lr))
    schedule = LocalSchedule(local_steps=args.local_steps, batch_size=16)
    sides = _train(args, fine, by_side, algorithm, schedule, log)
    loop, memory = {}, {}
    for name, m in by_side.items():
        sides[name]["base_bytes"] = base_quant.base_bytes(m.frozen)
        sides[name]["uplink_bits_per_client_round"] = sides[name]["curve"][-1]["uplink_bits"] / (
            args.rounds * args.cohort)
        w = Workload(name, f"fortunes transformer fine-tuning, {name}", fine, m, algorithm, schedule, args.cohort)
        b = bench_workload(w, peaks, rounds=args.loop_rounds, chunk_size=args.chunk_size, num_devices=args.devices,
                           seed=args.seed, autotune=False)
        loop[name] = {k: b[k] for k in ("round_s", "loop_round_s", "speedup_over_loop", "flops_per_round",
                                         "bytes_per_round", "gflops_per_s", "over_floor", "floor_term",
                                         "peak_rss_bytes", "loop_peak_rss_bytes", "max_abs_diff_vs_loop")}
        memory[name] = _memory(fine, m, algorithm, schedule)
        log(f"[{name}] engine {b['round_s']:.3f} s vs loop {b['loop_round_s']:.3f} s per round "
            f"({b['speedup_over_loop']:.2f}x); XLA per client {memory[name]['per_client_bytes'] / 2**20:.2f} MiB, "
            f"fixed {memory[name]['fixed_bytes'] / 2**20:.1f} MiB")
    result = {
        "pretrain_topics": args.pretrain_topics, "finetune_topics": 40 - args.pretrain_topics,
        "pretrain_steps": args.pretrain_steps, "pretrain_bpc": pre_bpc, "num_clients": fine.num_clients,
        "rank": args.rank, "rounds": args.rounds, "eval_every": args.eval_every, "cohort": args.cohort,
        "local_steps": args.local_steps, "client_lr": args.client_lr, "chunk_size": args.chunk_size,
        "devices": args.devices, "loop_rounds": args.loop_rounds, "seed": args.seed, "sides": sides, "loop": loop, "memory": memory,
        "peaks": {"flops": peaks.flops, "bandwidth": peaks.bandwidth}, "budget_bytes": BUDGET_BYTES,
        "loadavg_start": load_start, "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(), "machine": machine.describe(), "jax": jax.__version__,
    }
    (out / "lora.json").write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    md = _markdown(result)
    (out / "lora.md").write_text(md)
    _plot(result, out / "lora.png")
    print(md)
    print(f"wrote {out / 'lora.json'}, {out / 'lora.md'} and {out / 'lora.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
