"""Accuracy against uplink bits for the update codecs (issue: quantized communication).

FedAvg on MNIST, Dirichlet(alpha = 0.5) non-IID over 100 clients, 10 per round,
MLP 784-200-200-10, one local epoch of SGD (batch 32, lr 0.05), server SGD lr 1.
The same seed, so the same cohorts and data order, for every codec; only the
uplink changes:

    float (32-bit) | QSGD 8/4/2-bit (s = 2^(b-1) - 1 levels, bucket 512: one sign bit and
    b-1 level bits per coordinate plus a float32 norm per bucket) | TernGrad |
    scaled sign with error feedback and majority vote | top-1% with error feedback

It reports final test accuracy, total uplink bits and the compression ratio
against float, and the codec's share of round time,
``(t_codec - t_float) / t_codec``, with round times measured after compilation
in the same process. Writes benchmarks/results/compress_accuracy.{json,md,png}.

    python benchmarks/compress_accuracy.py --data-path ../shared/data/mnist/mnist.npz
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import jax
import optax

from jaxqfl import algorithms, compress, data, engine, models

CODECS = [
    ("float", "none"),
    ("QSGD 8-bit", "qsgd:127"),
    ("QSGD 4-bit", "qsgd:7"),
    ("QSGD 2-bit", "qsgd:1"),
    ("TernGrad", "terngrad"),
    ("EF-sign", "sign+ef"),
    ("top-1% + EF", "topk:0.01+ef"),
]


def run_one(population, spec: str, args) -> dict:
    uplink = None if spec == "none" else compress.from_spec(spec)
    sim = engine.build(
        population,
        models.mlp(hidden=(200, 200), num_outputs=10),
        algorithms.fedavg(optax.sgd(args.client_lr)),
        engine.LocalSchedule(local_epochs=1, batch_size=32),
        cohort_size=args.cohort_size,
        uplink=uplink,
    )
    result = engine.run(sim, rounds=args.rounds, eval_every=args.eval_every, seed=args.seed)
    return sim, result.state, {
        "spec": spec,
        "final_accuracy": result.final["test_accuracy"],
        "best_accuracy": max(r["test_accuracy"] for r in result.records),
        "uplink_bits_total": result.uplink_bits_total,
        "compile_seconds": result.compile_seconds,
        "curve": [(r["round"], r["test_accuracy"], r["uplink_bits_total"]) for r in result.records],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", default="../shared/data/mnist/mnist.npz")
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--cohort-size", type=int, default=10)
    p.add_argument("--client-lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timing-repeats", type=int, default=7)
    p.add_argument("--only", default=None, help="comma-separated subset of specs")
    p.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    args = p.parse_args()

    population = data.build("mnist", data_path=args.data_path, num_clients=100, partition="dirichlet",
                            alpha=0.5, seed=args.seed)
    codecs = CODECS if args.only is None else [c for c in CODECS if c[1] in args.only.split(",")]
    rows, sims = [], []
    for name, spec in codecs:
        sim, state, row = run_one(population, spec, args)
        rows.append({"name": name, **row})
        sims.append([sim, state])
        print(f"{name:14s} acc {row['final_accuracy']:.4f}  uplink {row['uplink_bits_total'] / 8e6:9.2f} MB", flush=True)
    # Round time after compilation, evaluation excluded, timed round-robin over the codecs so that
    # a change of load on the machine hits every codec alike; the median of the repeats.
    times = [[] for _ in sims]
    for _ in range(args.timing_repeats):
        for i, entry in enumerate(sims):
            t0 = time.perf_counter()
            entry[1], m = entry[0].run_block(entry[1], args.eval_every)
            jax.block_until_ready(m)
            times[i].append((time.perf_counter() - t0) / args.eval_every)
    for row, t in zip(rows, times):
        row["seconds_per_round"] = sorted(t)[len(t) // 2]
        print(f"{row['name']:14s} {row['seconds_per_round'] * 1e3:7.1f} ms/round", flush=True)
    base = next((r for r in rows if r["spec"] == "none"), None)
    for r in rows:
        if base is not None:
            r["accuracy_drop_pp"] = 100 * (base["final_accuracy"] - r["final_accuracy"])
            r["compression_ratio"] = base["uplink_bits_total"] / r["uplink_bits_total"]
            r["codec_time_share"] = max(0.0, (r["seconds_per_round"] - base["seconds_per_round"]) / r["seconds_per_round"])

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "benchmark": "compress_accuracy",
        "setup": "MNIST, Dirichlet(0.5), 100 clients, 10 per round, MLP 784-200-200-10, 1 local epoch, batch 32, "
                 f"client lr {args.client_lr}, server SGD lr 1, {args.rounds} rounds, seed {args.seed}",
        "machine": {"platform": jax.devices()[0].platform, "device": str(jax.devices()[0].device_kind),
                    "num_devices": jax.device_count(), "cpu": platform.processor() or platform.machine()},
        "jax": jax.__version__,
        "command": "python benchmarks/compress_accuracy.py --data-path ../shared/data/mnist/mnist.npz",
    }
    (out / "compress_accuracy.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")

    lines = [f"# Update codecs: accuracy vs uplink bits\n", f"{meta['setup']}.", "",
             f"Machine: {meta['machine']}, jax {meta['jax']}. Command: `{meta['command']}`", "",
             "| codec | spec | final acc | drop (pp) | uplink total (MB) | compression | ms/round | codec share |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(
            f"| {r['name']} | `{r['spec']}` | {r['final_accuracy']:.4f} | {r.get('accuracy_drop_pp', 0):+.2f} | "
            f"{r['uplink_bits_total'] / 8e6:,.2f} | {r.get('compression_ratio', 1):.1f}x | "
            f"{r['seconds_per_round'] * 1e3:.1f} | {100 * r.get('codec_time_share', 0):.0f}% |"
        )
    (out / "compress_accuracy.md").write_text("\n".join(lines) + "\n")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install '.[bench]'): no plot written")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        _, acc, bits = zip(*r["curve"])
        ax.plot([b / 8e6 for b in bits], acc, marker="o", markersize=2, label=r["name"])
    ax.set_xscale("log")
    ax.set_xlabel("cumulative uplink (MB, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("FedAvg on MNIST, Dirichlet(0.5): accuracy vs uplink")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "compress_accuracy.png", dpi=120)
    print(f"wrote {out / 'compress_accuracy.json'}, .md, .png")


if __name__ == "__main__":
    main()
