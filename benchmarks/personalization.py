"""Personalized and fair FL, judged client by client: who the federation serves, and what it costs to know.

Two non-IID federations, each client with its own test rows:

* ``mnist-shards``: real MNIST (``../shared/data/mnist/mnist.npz``), 100 clients of
  2 label shards each; the official test set split over the clients by their
  labels (``jaxqfl.data.split_test_by_labels``); an MLP with one hidden layer of 200;
* ``synthetic-1-1``: Synthetic(1, 1) (Li et al. 2020), 100 clients, each holding out
  the last 10% of its rows; an MLP with one hidden layer of 32.

Methods, each for ``--rounds`` rounds of 10 clients, 10 local SGD steps of batch
32 (lr 0.05): FedAvg (the global model on every client); FedAvg + fine-tuning
(``--personal-eval 5``: TFF's personalization evaluation); Ditto (lambda 0.1);
FedRep and FedPer (the last layer as the head); Per-FedAvg (FO; alpha = beta =
0.05, evaluated one inner step from the global model); q-FFL (q = 1). Reported:
the pooled accuracy of the global model; the mean, 10th percentile and worst
client of the accuracy of the model each client uses (``client_accuracy_*``) and
of the global model on the same rows (``global_client_*``); the uplink per
client and round; the median round time.

Cost of the per-client evaluation at ``--eval-clients`` (10,000) clients:
Synthetic(1, 1) clients with Ditto's personal models (a logistic regression per
client), evaluated by ``Simulation.evaluate_clients`` (one compiled program,
clients vmapped in chunks), without and with 5 fine-tuning steps, against a
Python loop that evaluates one client at a time with a jitted per-client
function (the way a simulator without vmapped clients does it; the same padded
rows, so it compiles once). FLOPs and bytes are counted (forward FLOPs per row
from the model's jaxpr; bytes: each client's model and gathered test rows
read once), the machine's matmul and copy peaks measured in this run.

    python benchmarks/personalization.py                            # a fresh runs/personalization-<time>/
    python benchmarks/personalization.py --out benchmarks/results   # update the stored result
"""
from __future__ import annotations

import argparse
import os
import sys

METHODS = ("fedavg", "fedavg+ft", "ditto", "fedrep", "fedper", "perfedavg", "qffl")
LR, STEPS, BATCH, COHORT = 0.05, 10, 32, 10


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="output folder (default: a fresh runs/personalization-<time>)")
    p.add_argument("--mnist-path", default=None, help="mnist.npz (default: ../shared/data/mnist/mnist.npz)")
    p.add_argument("--rounds", type=int, default=60, help="rounds per method (60)")
    p.add_argument("--eval-clients", type=int, default=10_000, help="clients of the evaluation-cost part (10,000)")
    p.add_argument("--loop-clients", type=int, default=2_000,
                   help="clients the one-at-a-time loop evaluates (timed, then scaled to --eval-clients; 2,000)")
    p.add_argument("--devices", type=int, default=2, help="XLA CPU devices (2)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("rounds", "eval_clients", "loop_clients", "devices"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.seed < 0:
        p.error(f"--seed must be a non-negative integer, got {args.seed}")
    if args.loop_clients > args.eval_clients:
        p.error(f"--loop-clients {args.loop_clients} exceeds --eval-clients {args.eval_clients}")
    if args.mnist_path is None:
        args.mnist_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                                       "mnist", "mnist.npz")
    if not os.path.isfile(args.mnist_path):
        p.error(f"--mnist-path {args.mnist_path!r} is not a file")
    if args.out and os.path.exists(os.path.join(args.out, "personalization.json")) and "results" not in args.out:
        p.error(f"--out {args.out!r} already holds personalization.json; choose a new folder")
    return args


def _algorithm(name):
    import optax

    from jaxqfl import algorithms
    from jaxqfl.engine.client_evaluation import FineTune

    sgd = optax.sgd(LR)
    return {
        "fedavg": (algorithms.fedavg(sgd), None),
        "fedavg+ft": (algorithms.fedavg(sgd), FineTune(5, LR, BATCH)),
        "ditto": (algorithms.ditto(sgd, LR, 0.1), None),
        "fedrep": (algorithms.fedrep(sgd), None),
        "fedper": (algorithms.fedper(sgd), None),
        "perfedavg": (algorithms.perfedavg(LR, LR), FineTune(1, LR, BATCH)),
        "qffl": (algorithms.qffl(LR, 1.0), None),
    }[name]


def _federations(args):
    from jaxqfl import data, models

    mnist = data.split_test_by_labels(
        data.build("mnist", data_path=args.mnist_path, num_clients=100, partition="shards", seed=args.seed),
        seed=args.seed)
    synthetic = data.build("synthetic", num_clients=100, synthetic_alpha=1.0, synthetic_beta=1.0, seed=args.seed)
    return {"mnist-shards": (mnist, models.mlp((200,), 10)),
            "synthetic-1-1": (synthetic, models.mlp((32,), synthetic.num_classes))}


def _accuracy(args, log):
    import statistics

    from jaxqfl import engine
    from jaxqfl.engine.schedule import LocalSchedule

    out = {}
    for fed, (pop, model) in _federations(args).items():
        out[fed] = {"num_clients": pop.num_clients, "test_rows_per_client_mean": float(pop.test_counts.mean())}
        for name in METHODS:
            algorithm, fine_tune = _algorithm(name)
            sim = engine.build(pop, model, algorithm, LocalSchedule(local_steps=STEPS, batch_size=BATCH),
                               cohort_size=COHORT, num_devices=args.devices, autotune=False, personal_eval=fine_tune)
            res = engine.run(sim, rounds=args.rounds, eval_every=args.rounds, seed=args.seed)
            rec = res.records[-1]
            own = {k[len("test_client_accuracy_"):]: rec[k] for k in rec if k.startswith("test_client_accuracy_")}
            glob = {k[len("test_global_client_accuracy_"):]: rec[k] for k in rec
                    if k.startswith("test_global_client_accuracy_")} or own
            out[fed][name] = {
                "pooled_accuracy": rec["test_accuracy"], "client": own, "global_client": glob,
                "uplink_bits_per_client_round": rec["uplink_bits_total"] / (args.rounds * COHORT),
                "round_ms": 1e3 * statistics.median(res.round_seconds), "compile_s": res.compile_seconds,
            }
            log(f"[{fed}] {name:10s} pooled {rec['test_accuracy']:.4f}  clients: mean {own['mean']:.4f} "
                f"p10 {own['p10']:.4f} worst {own['min']:.4f}  (global model's mean {glob['mean']:.4f})")
    return out


def _eval_cost(args, peaks, log):
    """Seconds of ``evaluate_clients`` at ``--eval-clients`` clients vs a one-client-at-a-time loop."""
    import statistics
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from jaxqfl import algorithms, data, engine, models
    from jaxqfl.bench.cost import forward_flops_per_example
    from jaxqfl.engine.client_evaluation import FineTune
    from jaxqfl.engine.schedule import LocalSchedule
    from jaxqfl.tasks import default_for

    C = args.eval_clients
    pop = data.build("synthetic", num_clients=C, synthetic_alpha=1.0, synthetic_beta=1.0, seed=args.seed,
                     max_size=100)
    model = models.logistic_regression(pop.num_classes)
    f = forward_flops_per_example(model, pop.feature_shape)
    T = int(pop.test_counts.max())
    rows = int(pop.test_counts.sum())
    param_bytes = 4 * sum(int(np.prod(a.shape)) for a in jax.tree.leaves(
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1,) + pop.feature_shape))))
    row_bytes = 4 * int(np.prod(pop.feature_shape)) + 4
    result = {"num_clients": C, "test_rows": rows, "max_test_rows_per_client": T, "forward_flops_per_row": f}
    for label, fine_tune in (("personal", None), ("personal+5 fine-tuning steps", FineTune(5, LR, 8))):
        sim = engine.build(pop, model, algorithms.ditto(optax.sgd(LR), LR, 0.1),
                           LocalSchedule(local_steps=2, batch_size=8), cohort_size=100, num_devices=args.devices,
                           autotune=False, personal_eval=fine_tune)
        state, _ = sim.run_block(sim.init(args.seed), 1)
        t0 = time.perf_counter()
        jax.block_until_ready(sim.evaluate_clients(state))
        first = time.perf_counter() - t0
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            sim.evaluate_clients(state)
            times.append(time.perf_counter() - t0)
        seconds = statistics.median(times)
        steps = fine_tune.steps if fine_tune else 0
        flops = C * T * f + C * steps * 8 * 3 * f  # padded rows evaluated; a step: forward + backward on 8 rows
        moved = C * (param_bytes + T * row_bytes) * (1 + 2 * steps)
        floor = max(flops / peaks.flops, moved / peaks.bandwidth)
        result[label] = {"first_call_s": first, "seconds": seconds, "clients_per_s": C / seconds, "flops": flops,
                         "bytes": moved, "floor_s": floor, "over_floor": seconds / floor}
        log(f"[eval {C:,} clients, {label}] first call {first:.2f} s, then {seconds:.3f} s "
            f"({C / seconds:,.0f} clients/s; {seconds / floor:.0f}x the FLOP/byte floor)")
        if fine_tune is None:
            personal = jax.device_get(state.client_states["algorithm"])
            task = default_for(pop)
            starts = np.concatenate([[0], np.cumsum(pop.test_counts)[:-1]])

            @jax.jit
            def one(params, x, y, mask):
                return jnp.sum(task.metrics(model.apply(params, x, key=None), y)["accuracy"] * mask)

            def loop(n):
                total = 0.0
                for c in range(n):
                    idx = starts[c] + np.minimum(np.arange(T), max(pop.test_counts[c] - 1, 0))
                    mask = (np.arange(T) < pop.test_counts[c]).astype(np.float32)
                    total += float(one(jax.tree.map(lambda a: a[c], personal), pop.x_test[idx], pop.y_test[idx],
                                       mask))
                return total

            loop(2)  # compile
            n = args.loop_clients
            t0 = time.perf_counter()
            loop(n)
            loop_s = (time.perf_counter() - t0) * C / n
            result["loop"] = {"clients_timed": n, "seconds_scaled": loop_s, "speedup": loop_s / seconds}
            log(f"[eval loop] one client at a time: {loop_s:.2f} s for {C:,} clients (timed on {n:,}); "
                f"jaxqfl {loop_s / seconds:.0f}x faster")
    return result


def _markdown(r) -> str:
    p = r["peaks"]
    lines = [
        "# Personalization and fairness: per-client accuracy of the model each client uses",
        "",
        f"`python benchmarks/personalization.py`: {r['rounds']} rounds, {COHORT} clients a round, {STEPS} local "
        f"SGD steps of batch {BATCH} (lr {LR}), seed {r['seed']}, one run per cell. {r['machine']['cpu']}, "
        f"{r['cpu_count']} cores, {r['devices']} XLA CPU devices; peaks measured in this run: matmul "
        f"{p['flops'] / 1e9:.0f} GFLOP/s, copy {p['bandwidth'] / 1e9:.1f} GB/s; load average {r['loadavg_start']} "
        f"at start, {r['loadavg_end']} at end.",
        "",
        "`own`: the model each client uses on its own test rows (Ditto's personal model, FedRep's and FedPer's "
        "body with the client's head, the global model fine-tuned for FedAvg + FT and Per-FedAvg, the global "
        "model otherwise); `global`: the global model on the same rows; `pooled`: the global model on all test "
        "rows.",
    ]
    for fed in ("mnist-shards", "synthetic-1-1"):
        a = r["accuracy"][fed]
        lines += ["", f"## {fed} ({a['num_clients']} clients, {a['test_rows_per_client_mean']:.0f} test rows per "
                      "client on average)", "",
                  "| method | own: mean | own: p10 | own: worst | global: mean | global: p10 | pooled | "
                  "uplink / client / round | round (ms) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name in METHODS:
            m = a[name]
            lines.append(
                f"| {name} | {m['client']['mean']:.4f} | {m['client']['p10']:.4f} | {m['client']['min']:.4f} | "
                f"{m['global_client']['mean']:.4f} | {m['global_client']['p10']:.4f} | {m['pooled_accuracy']:.4f} | "
                f"{m['uplink_bits_per_client_round'] / 8e3:.1f} kB | {m['round_ms']:.1f} |")
    e = r["eval_cost"]
    lines += ["", f"## Cost of the per-client evaluation: {e['num_clients']:,} clients", "",
              f"Synthetic(1, 1), {e['num_clients']:,} clients with {e['test_rows']:,} test rows (at most "
              f"{e['max_test_rows_per_client']} per client, the padded width), a personal logistic regression per "
              f"client (Ditto's state), {e['forward_flops_per_row']:.0f} forward FLOPs per row.", "",
              "| evaluation | first call (s) | steady (s) | clients/s | GFLOP | MB moved | time / floor |",
              "|---|---|---|---|---|---|---|"]
    for label in ("personal", "personal+5 fine-tuning steps"):
        c = e[label]
        lines.append(f"| {label} | {c['first_call_s']:.2f} | {c['seconds']:.3f} | {c['clients_per_s']:,.0f} | "
                     f"{c['flops'] / 1e9:.3f} | {c['bytes'] / 1e6:.1f} | {c['over_floor']:.0f} |")
    lp = e["loop"]
    lines += ["", f"One client at a time (a jitted per-client evaluation called in a Python loop, timed on "
                  f"{lp['clients_timed']:,} clients and scaled): {lp['seconds_scaled']:.2f} s for "
                  f"{e['num_clients']:,} clients, {lp['speedup']:.0f}x the vmapped program's steady time. Both are "
                  "far above the FLOP/byte floor: at a few test rows per client the work is tiny and the time is "
                  "the gather of rows and models and the program's fixed overhead.", "",
              "![per-client accuracy](personalization.png)", ""]
    return "\n".join(lines)


def _plot(r, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, fed in zip(axes, ("mnist-shards", "synthetic-1-1")):
        a = r["accuracy"][fed]
        x = np.arange(len(METHODS))
        for off, (key, label) in zip((-0.27, 0, 0.27), (("mean", "mean"), ("p10", "10th percentile"),
                                                        ("min", "worst client"))):
            ax.bar(x + off, [a[m]["client"][key] for m in METHODS], 0.27, label=label)
        ax.plot(x, [a[m]["global_client"]["mean"] for m in METHODS], "k_", ms=18, mew=2,
                label="global model: mean over clients")
        ax.set_xticks(x, METHODS, rotation=30)
        ax.set_ylim(0, 1)
        ax.set_title(f"{fed}: accuracy on each client's own rows")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    from jaxqfl.bench.script import force_cpu_devices, log, measured_peaks, output_folder

    force_cpu_devices(args.devices)
    import json

    from jaxqfl.bench import machine
    from jaxqfl.bench.memory import current_rss
    from jaxqfl.experiment.outputs import write_json

    peaks, load = measured_peaks(log)
    out = output_folder(args.out, "personalization")
    result = {"rounds": args.rounds, "seed": args.seed, "devices": args.devices, "machine": machine.describe(),
              "cpu_count": os.cpu_count(), "peaks": peaks._asdict(), "loadavg_start": load}
    result["accuracy"] = _accuracy(args, log)
    result["eval_cost"] = _eval_cost(args, peaks, log)
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["peak_rss_bytes"] = current_rss()
    write_json(out / "personalization.json", result)
    (out / "personalization.md").write_text(_markdown(result))
    _plot(result, out / "personalization.png")
    log(f"wrote {out / 'personalization.md'}, {out / 'personalization.json'}, {out / 'personalization.png'}")
    json.dumps(result, allow_nan=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
