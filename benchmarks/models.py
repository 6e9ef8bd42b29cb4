"""The model zoo quantized: float vs ``full`` vs ``w4a8`` vs ``nf4`` QAT on ResNet-20, the char LSTM and the transformer.

For each zoo model of issue 23 (``jaxqfl.bench.workloads``' ``resnet``, ``lstm``
and ``transformer`` workloads: their clients, cohort, algorithm and local
schedule) and each QAT preset of ``--policies`` (``jaxqfl.quant.policy``), the
script trains ``--rounds`` federated rounds through the generic interception
path (``jaxqfl.models.intercept``: any model, no ``layers`` field) and
evaluates the global model every ``--eval-every`` rounds:

- ResNet-20 (GroupNorm): test accuracy on CIFAR-shaped 32x32x3 images, 10
  classes. By default they are *generated* (below), so the run needs no
  download; ``--cifar10 DIR`` reads the real ``cifar-10-batches-py`` folder
  instead (100 clients, IID, ``jaxqfl.data.cifar10``).
- char LSTM and transformer: test bits per character (next byte) on the
  fortunes corpus (``../shared/data/fortunes``, one client per topic file);
  4.79 bits/char is the corpus' byte-unigram entropy, the bar of issue 23.

Generated images: class ``k`` has a smooth random template ``T_k`` (Gaussian
noise blurred by a 5x5 box filter, unit variance); an example is
``x = 0.5 + 0.25 (T_y + 2 eps)`` with ``eps`` i.i.d. N(0, 1) per pixel, so the
classes overlap (a per-pixel signal-to-noise ratio of 1/4) and a model must
pool over pixels to separate them. 100 clients x 50 images, IID; 1,000 test
images.

Timing: the four presets of one model are built together and their blocks run
interleaved (preset order rotated every block), so they see the same machine
load; ``round_s`` is the median over blocks of block time / rounds, and
``qat_overhead`` is a preset's ``round_s`` over float's. With ``--loop`` (on by
default) the float and ``full`` rounds of each model are also measured against
the per-client loop (``jaxqfl.bench.runner.bench_workload``: FLOPs and bytes
counted from the jaxpr, the machine's matmul and copy peaks measured in this
run, the roofline ratio).

    python benchmarks/models.py                              # a fresh runs/models-<time>/
    python benchmarks/models.py --out benchmarks/results     # update the stored result
    python benchmarks/models.py --models transformer --rounds 10 --policies none,full
"""
from __future__ import annotations

import argparse
import os
import sys

MODELS = ("resnet", "lstm", "transformer")
POLICIES = ("none", "full", "w4a8", "nf4")


def _csv(choices, what):
    def parse(text):
        items = [s for s in text.split(",") if s]
        bad = [s for s in items if s not in choices]
        if not items or bad:
            raise argparse.ArgumentTypeError(f"{what} {text!r}: choose a comma-separated subset of {', '.join(choices)}")
        if len(set(items)) != len(items):
            raise argparse.ArgumentTypeError(f"{what} {text!r} repeats a value")
        return tuple(items)

    return parse


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="output folder (default: a fresh runs/models-<time>)")
    p.add_argument("--models", type=_csv(MODELS, "--models"), default=MODELS, help="default: all three")
    p.add_argument("--policies", type=_csv(POLICIES, "--policies"), default=POLICIES, help="default: all four")
    p.add_argument("--rounds", type=int, default=30, help="federated rounds per run (default: %(default)s)")
    p.add_argument("--eval-every", type=int, default=5, help="rounds between evaluations (default: %(default)s)")
    p.add_argument("--chunk-size", type=int, default=2, help="clients per vmap (default: %(default)s)")
    p.add_argument("--devices", type=int, default=2, help="XLA CPU devices (default: %(default)s)")
    p.add_argument("--loop-rounds", type=int, default=3, help="timed rounds against the per-client loop")
    p.add_argument("--no-loop", dest="loop", action="store_false", help="skip the per-client loop comparison")
    p.add_argument("--cifar10", default=None, metavar="DIR", help="real CIFAR-10 (cifar-10-batches-py) for ResNet-20")
    p.add_argument("--fortunes", default=None, metavar="DIR", help="the fortunes folder (default: ../shared/data)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("rounds", "eval_every", "chunk_size", "devices", "loop_rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.rounds % args.eval_every:
        p.error(f"--rounds {args.rounds} must be a multiple of --eval-every {args.eval_every}")
    for flag, path in (("--cifar10", args.cifar10), ("--fortunes", args.fortunes)):
        if path is not None and not os.path.isdir(path):
            p.error(f"{flag}: {path!r} is not a folder")
    if args.out and os.path.exists(os.path.join(args.out, "models.json")) and "results" not in args.out:
        p.error(f"--out {args.out!r} already holds models.json; choose a new folder")
    return args


def generated_cifar_like(seed: int, num_clients: int = 100, per_client: int = 50, num_test: int = 1000):
    """The CIFAR-shaped population of the module docstring: templates + noise, IID over clients."""
    import numpy as np

    from jaxqfl.data.population import Population

    rng = np.random.default_rng(seed)
    raw = rng.standard_normal((10, 36, 36, 3))
    box = sum(raw[:, i:i + 32, j:j + 32, :] for i in range(5) for j in range(5)) / 25.0
    templates = box / box.std(axis=(1, 2, 3), keepdims=True)

    def draw(n):
        y = rng.integers(0, 10, n).astype(np.int32)
        x = 0.5 + 0.25 * (templates[y] + 2.0 * rng.standard_normal((n, 32, 32, 3)))
        return x.astype(np.float32), y

    x, y = draw(num_clients * per_client)
    x_test, y_test = draw(num_test)
    return Population(x, y, np.arange(num_clients, dtype=np.int32) * per_client,
                      np.full(num_clients, per_client, np.int32), x_test, y_test, 10, name="generated-cifar-like")


def _workload(name, policy, args):
    """The bench workload ``name`` with its model built under ``policy`` (and the chosen data)."""
    from jaxqfl import models
    from jaxqfl.bench import workloads

    policy = None if policy == "none" else policy
    if name == "resnet":
        w = workloads.resnet()
        if args.cifar10:
            from jaxqfl.data.build import build

            pop = build("cifar10", num_clients=100, partition="iid", data_path=args.cifar10, seed=args.seed)
        else:
            pop = generated_cifar_like(args.seed)
        return w._replace(population=pop, model=models.resnet20(10, policy=policy))
    w = getattr(workloads, name)(fortunes_path=args.fortunes)
    model = (models.char_lstm(policy=policy) if name == "lstm"
             else models.transformer(width=64, depth=2, heads=4, context=80, policy=policy))
    return w._replace(model=model)


def _train(name, args, log):
    """Train every preset of ``args.policies`` on workload ``name``, blocks interleaved; per-preset rows."""
    import statistics
    import time

    import jax

    from jaxqfl import engine

    sides = {}
    for policy in args.policies:
        w = _workload(name, policy, args)
        sim = engine.build(w.population, w.model, w.algorithm, w.schedule, cohort_size=w.cohort_size,
                           chunk_size=args.chunk_size, num_devices=args.devices, uplink=w.uplink, autotune=False)
        compile_s = sim.compile_block(args.eval_every)
        ev = sim.evaluate(sim.init(args.seed).params)
        sides[policy] = {"sim": sim, "state": sim.init(args.seed), "compile_s": compile_s, "block_s": [],
                         "curve": [{"round": 0, **ev}], "workload": w}
        log(f"[{name}/{policy}] compiled a block of {args.eval_every} rounds in {compile_s:.1f} s")
    order = list(args.policies)
    for b in range(args.rounds // args.eval_every):
        for policy in order[b % len(order):] + order[:b % len(order)]:
            s = sides[policy]
            t0 = time.perf_counter()
            s["state"], metrics = s["sim"].run_block(s["state"], args.eval_every)
            jax.block_until_ready((s["state"], metrics))
            s["block_s"].append(time.perf_counter() - t0)
            ev = s["sim"].evaluate(s["state"].params)
            s["curve"].append({"round": (b + 1) * args.eval_every, **ev})
            key = "bits_per_char" if "bits_per_char" in ev else "accuracy"
            log(f"[{name}/{policy}] round {(b + 1) * args.eval_every}: {key} {ev[key]:.4f}")
    rows = {}
    for policy, s in sides.items():
        final = s["curve"][-1]
        rows[policy] = {
            "model": name, "policy": policy, "description": s["workload"].description,
            "data": s["workload"].population.name, "num_params": s["sim"].num_params,
            "compile_s": s["compile_s"], "block_times_s": s["block_s"],
            "round_s": statistics.median(s["block_s"]) / args.eval_every,
            "curve": s["curve"],
            "final_accuracy": final["accuracy"],
            "final_bits_per_char": final.get("bits_per_char"),
            "final_loss": final["loss"],
        }
    float_s = rows["none"]["round_s"] if "none" in rows else None
    for r in rows.values():
        r["qat_overhead"] = r["round_s"] / float_s if float_s else None
    return rows


def _loop_rows(name, args, peaks, log):
    """Float and ``full`` rounds of ``name`` against the per-client loop (bench's runner)."""
    from jaxqfl.bench.runner import bench_workload

    out = {}
    for policy in [p for p in ("none", "full") if p in args.policies]:
        r = bench_workload(_workload(name, policy, args), peaks, rounds=args.loop_rounds, chunk_size=args.chunk_size,
                           num_devices=args.devices, seed=args.seed, autotune=False)
        keep = ("round_s", "loop_round_s", "speedup_over_loop", "flops_per_round", "bytes_per_round",
                "gflops_per_s", "over_floor", "floor_term", "max_abs_diff_vs_loop")
        out[policy] = {k: r[k] for k in keep}
        log(f"[{name}/{policy}] engine {r['round_s']:.3f} s vs loop {r['loop_round_s']:.3f} s per round "
            f"({r['speedup_over_loop']:.2f}x), {r['gflops_per_s']:.1f} GFLOP/s, {r['over_floor']:.2f}x the floor")
    return out


def _markdown(result) -> str:
    rows = result["rows"]
    p = result["peaks"]
    lines = [
        "# The model zoo quantized: float vs QAT presets",
        "",
        f"`python benchmarks/models.py` ({result['rounds']} rounds, evaluation every {result['eval_every']}, "
        f"chunk {result['chunk_size']} x {result['devices']} devices, seed {result['seed']}). "
        f"{result['machine']['cpu']}, {result['cpu_count']} cores; measured peaks in this run: matmul "
        f"{p['flops'] / 1e9:.0f} GFLOP/s, copy {p['bandwidth'] / 1e9:.1f} GB/s. Load average (1, 5, 15 min) "
        f"at start {result['loadavg_start']} and end {result['loadavg_end']}: a shared machine, so absolute times "
        "are noisy; presets of one model ran interleaved, so their ratios (QAT overhead) hold.",
        "",
        "ResNet-20: test accuracy on " + ", ".join(sorted({r["data"] for r in rows if r["model"] == "resnet"}) or ["-"])
        + " (see the script's docstring); char LSTM / transformer: test bits per character on fortunes "
        "(byte unigram: 4.79).",
        "",
        "| model | preset | params | final accuracy | final bits/char | round (s) | QAT overhead | compile (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bpc = f"{r['final_bits_per_char']:.3f}" if r["final_bits_per_char"] is not None else "-"
        ovh = f"{r['qat_overhead']:.2f}x" if r["qat_overhead"] is not None else "-"
        lines.append(f"| {r['model']} | {r['policy']} | {r['num_params']:,} | {r['final_accuracy']:.4f} | {bpc} | "
                     f"{r['round_s']:.3f} | {ovh} | {r['compile_s']:.1f} |")
    if result["loop"]:
        lines += ["", "Against the per-client loop (`jaxqfl.bench.reference`, one jitted program per client):", "",
                  "| model | preset | jaxqfl round (s) | loop round (s) | speed-up | GFLOP/s | time / floor | floor term |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, by_policy in result["loop"].items():
            for policy, r in by_policy.items():
                lines.append(f"| {name} | {policy} | {r['round_s']:.3f} | {r['loop_round_s']:.3f} | "
                             f"{r['speedup_over_loop']:.2f}x | {r['gflops_per_s']:.1f} | {r['over_floor']:.2f} | "
                             f"{r['floor_term']} |")
    lines += ["", "![curves](models.png)", ""]
    return "\n".join(lines)


def _plot(result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["model"] for r in result["rows"]))
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        for r in (r for r in result["rows"] if r["model"] == name):
            key = "accuracy" if name == "resnet" else "bits_per_char"
            ax.plot([c["round"] for c in r["curve"]], [c[key] for c in r["curve"]], marker="o", ms=3,
                    label=r["policy"])
        if name != "resnet":
            ax.axhline(4.79, color="grey", ls=":", lw=1, label="byte unigram")
        ax.set_title(name)
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy" if name == "resnet" else "test bits per character")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    from jaxqfl.bench.script import force_cpu_devices, log, measured_peaks, output_folder

    force_cpu_devices(args.devices)

    import json

    import jax

    from jaxqfl.bench import machine

    out = output_folder(args.out, "models")
    peaks, load_start = measured_peaks(log)
    rows, loop = [], {}
    for name in args.models:
        rows += list(_train(name, args, log).values())
        if args.loop:
            loop[name] = _loop_rows(name, args, peaks, log)
    result = {
        "rounds": args.rounds, "eval_every": args.eval_every, "chunk_size": args.chunk_size,
        "devices": args.devices, "seed": args.seed, "rows": rows, "loop": loop,
        "peaks": {"flops": peaks.flops, "bandwidth": peaks.bandwidth},
        "loadavg_start": load_start, "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(), "machine": machine.describe(), "jax": jax.__version__,
    }
    (out / "models.json").write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    md = _markdown(result)
    (out / "models.md").write_text(md)
    _plot(result, out / "models.png")
    print(md)
    print(f"wrote {out / 'models.json'}, {out / 'models.md'} and {out / 'models.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
