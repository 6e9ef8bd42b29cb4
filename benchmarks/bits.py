"""Accuracy against uplink bits: codecs x QAT presets x seeds as ONE program, and mixed-precision tiers.

Part 1, the front. Real MNIST (``../shared/data/mnist/mnist.npz``), 100 clients of
2 label shards, an MLP with one hidden layer of 64, FedAvg, 10 clients a round,
10 local SGD steps of batch 32 (lr 0.05), ``--rounds`` rounds. 8 uplink codecs
(``none``, ``uniform:2/4/8``, ``qsgd:2/4/16``, ``natural``) x 3 QAT presets
(``none``, ``full``: int8 weights and inputs, ``w4a8``) x 3 seeds = 72 configs,
run as one ``jaxqfl run`` (one process, one compiled program: lists in
``--uplink`` and ``--quant``), then as 72 separate ``jaxqfl run`` processes with
the same settings (``--seed s --data-seed 0``). Reported: each config's final
accuracy and total uplink bits (mean and std over seeds), the whole-process
wall time of both ways, and the largest difference between a config in the
sweep and its separate run (they must agree: bits exactly, accuracy to float
tolerance).

Part 2, a mixed-precision federation (``--tiers``): a third of the clients
4-bit (``w4a8`` training, ``uniform:4`` uplink), a third 8-bit (``full``,
``uniform:8``), a third float, with the plain weighted mean and with
FedHQ-style precision weights; against all clients 4-bit and all float. Each
3 seeds; accuracy of the global model under each tier's preset and uplink bits.

FLOPs are counted from the model's jaxpr (3 x forward per trained example);
the machine's matmul peak is measured in this run, and the sweep's time per
round is set against the FLOP floor of its configs.

``--workload resnet20``: part 1 on ResNet-20 (GroupNorm; 269,722 parameters) on
MNIST at the scale a 2-core CPU affords: 100 IID clients, 4 codecs x 2 presets,
one seed, 4 clients a round of 5 steps of batch 16, 20 rounds (the MLP's scale
needs an accelerator); written to ``bits-resnet20.{md,json,png}``.

    python benchmarks/bits.py                            # a fresh runs/bits-<time>/
    python benchmarks/bits.py --out benchmarks/results   # update the stored result
    python benchmarks/bits.py --workload resnet20 --out benchmarks/results
"""
from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

CODECS = ("none", "uniform:2", "uniform:4", "uniform:8", "qsgd:2", "qsgd:4", "qsgd:16", "natural")
PRESETS = ("none", "full", "w4a8")
SEEDS = (0, 1, 2)


class Workload(NamedTuple):
    """One model's front: what is swept and at which scale."""

    title: str  # for the report
    model_flags: tuple  # jaxqfl run's model flags
    codecs: tuple
    presets: tuple
    seeds: tuple
    rounds: int  # default --rounds
    cohort: int
    steps: int
    batch: int
    lr: float
    tiers: bool  # part 2 too
    files: str  # output name: <files>.{md,json,png}
    partition: str = "shards"  # MNIST's split over the 100 clients


HIDDEN = 64
WORKLOADS = {
    "mlp": Workload(f"MLP 784-{HIDDEN}-10", ("--model", "mlp", "--hidden", str(HIDDEN)), CODECS, PRESETS, SEEDS,
                    30, 10, 10, 32, 0.05, True, "bits"),
    "resnet20": Workload("ResNet-20 (GroupNorm, 269,722 parameters)", ("--model", "resnet20"),
                         ("none", "uniform:2", "uniform:8", "qsgd:4"), ("none", "w4a8"), (0,), 20, 4, 5, 16, 0.05,
                         False, "bits-resnet20", "iid"),
}
TIERS = {
    "tiered (4/8/32-bit)": ["--tiers", "0.34/w4a8/uniform:4;0.33/full/uniform:8;0.33/none/none"],
    "tiered, precision weights": ["--tiers", "0.34/w4a8/uniform:4;0.33/full/uniform:8;0.33/none/none",
                                  "--tier-weights", "precision"],
    "all 4-bit": ["--quant", "w4a8", "--uplink", "uniform:4"],
    "all float": [],
}


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="output folder (default: a fresh runs/bits-<time>)")
    p.add_argument("--mnist-path", default=None, help="mnist.npz (default: ../shared/data/mnist/mnist.npz)")
    p.add_argument("--workload", choices=tuple(WORKLOADS), default="mlp", help="the model swept (mlp)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per config (mlp 30, resnet20 10)")
    p.add_argument("--devices", type=int, default=2, help="XLA CPU devices (2)")
    p.add_argument("--separate", type=int, default=None,
                   help="how many of the configs also run as separate processes (default all; fewer: the "
                        "separate wall time is scaled to all)")
    args = p.parse_args(argv)
    args.w = w = WORKLOADS[args.workload]
    configs = len(w.codecs) * len(w.presets) * len(w.seeds)
    args.rounds = w.rounds if args.rounds is None else args.rounds
    args.separate = configs if args.separate is None else args.separate
    for name in ("rounds", "devices", "separate"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.separate > configs:
        p.error(f"--separate {args.separate} exceeds the {configs} configs of --workload {args.workload}")
    if args.mnist_path is None:
        args.mnist_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                                       "mnist", "mnist.npz")
    if not os.path.isfile(args.mnist_path):
        p.error(f"--mnist-path {args.mnist_path!r} is not a file")
    if args.out and os.path.exists(os.path.join(args.out, f"{w.files}.json")) and "results" not in args.out:
        p.error(f"--out {args.out!r} already holds {w.files}.json; choose a new folder")
    return args


def _common(args) -> list[str]:
    w = args.w
    return ["--dataset", "mnist", "--data-path", args.mnist_path, "--partition", w.partition, "--num-clients", "100",
            "--cohort-size", str(w.cohort), "--rounds", str(args.rounds), "--eval-every", str(args.rounds),
            *w.model_flags, "--local-steps", str(w.steps), "--batch-size", str(w.batch),
            "--client-lr", str(w.lr), "--devices", str(args.devices), "--no-progress", "--client-test", "none"]


def _jaxqfl(argv, log) -> float:
    """Whole-process wall seconds of ``jaxqfl run argv`` (its output kept only on failure)."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "jaxqfl.cli.main", "run", *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        log(done.stdout[-2000:] + done.stderr[-4000:])
        raise SystemExit(f"jaxqfl run {' '.join(argv)} failed with exit status {done.returncode}")
    return seconds


def _front(args, out, log):
    import json

    import numpy as np

    w = args.w
    sweep_dir = out / "runs" / "sweep"
    argv = [*_common(args), "--uplink", ",".join(w.codecs), "--quant", ",".join(w.presets),
            "--seeds", f"{w.seeds[0]}-{w.seeds[-1]}", "--out", str(sweep_dir), "--overwrite"]
    sweep_s = _jaxqfl(argv, log)
    report = json.loads((sweep_dir / "sweep.json").read_text())
    log(f"[sweep] {report['num_configs']} configs in one process: {sweep_s:.1f} s (compile "
        f"{report['compile_seconds']:.1f} s, {report['seconds_per_round'] * 1e3:.0f} ms a round of all configs)")
    configs = report["configs"]
    chosen = configs[:: max(1, len(configs) // args.separate)][: args.separate]
    separate_s, worst_acc, bits_equal = [], 0.0, True
    for c in chosen:
        folder = out / "runs" / "separate" / c["folder"]
        separate_s.append(_jaxqfl([*_common(args), "--uplink", c["uplink"], "--quant", c["quant"], "--seed",
                                   str(c["seed"]), "--data-seed", str(w.seeds[0]), "--out", str(folder), "--overwrite"],
                                  log))
        single = json.loads((folder / "summary.json").read_text())
        worst_acc = max(worst_acc, abs(single["final_accuracy"] - c["final_accuracy"]))
        bits_equal &= single["uplink_bits_total"] == c["uplink_bits_total"]
        log(f"[separate] {c['folder']}: {separate_s[-1]:.1f} s, accuracy {single['final_accuracy']:.4f} "
            f"(sweep {c['final_accuracy']:.4f})")
    scaled = float(np.sum(separate_s)) * len(configs) / len(chosen)
    rows = []
    for preset in w.presets:
        for codec in w.codecs:
            members = [c for c in configs if c["quant"] == preset and c["uplink"] == codec]
            acc = [c["final_accuracy"] for c in members]
            rows.append({"quant": preset, "uplink": codec, "seeds": len(members),
                         "accuracy_mean": float(np.mean(acc)),
                         "accuracy_std": float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0,
                         "uplink_bits_mean": float(np.mean([c["uplink_bits_total"] for c in members])),
                         "bops": json.loads((sweep_dir / members[0]["folder"] / "summary.json").read_text())
                         .get("bops")})
    return {"rows": rows, "num_configs": len(configs), "sweep_seconds": sweep_s,
            "sweep_compile_seconds": report["compile_seconds"], "sweep_seconds_per_round": report["seconds_per_round"],
            "separate_runs_timed": len(chosen), "separate_seconds_timed": float(np.sum(separate_s)),
            "separate_seconds_for_all": scaled, "separate_seconds_median": float(np.median(separate_s)),
            "speedup": scaled / sweep_s, "max_accuracy_difference": worst_acc, "bits_equal": bool(bits_equal)}


def _tiers(args, out, log):
    import json

    import numpy as np

    result = {}
    for name, flags in TIERS.items():
        runs = []
        for seed in SEEDS:
            folder = out / "runs" / "tiers" / f"{name.replace(' ', '_').replace('/', '-').replace(',', '')}-{seed}"
            _jaxqfl([*_common(args), *flags, "--seed", str(seed), "--out", str(folder), "--overwrite"], log)
            runs.append(json.loads((folder / "summary.json").read_text()))
        row = {"accuracy_mean": float(np.mean([r["final_accuracy"] for r in runs])),
               "accuracy_std": float(np.std([r["final_accuracy"] for r in runs], ddof=1)),
               "uplink_bits_mean": float(np.mean([r["uplink_bits_total"] for r in runs]))}
        if "tiers" in runs[0]:
            row["tiers"] = [{"quant": t["quant"], "uplink": t["uplink"],
                             "accuracy_mean": float(np.mean([r["tiers"][i]["final_accuracy"] for r in runs])),
                             "uplink_bits_mean": float(np.mean([r["tiers"][i]["uplink_bits_total"] for r in runs]))}
                            for i, t in enumerate(runs[0]["tiers"])]
        result[name] = row
        log(f"[tiers] {name}: accuracy {row['accuracy_mean']:.4f} ± {row['accuracy_std']:.4f}, "
            f"uplink {row['uplink_bits_mean'] / 8e6:.1f} MB")
    return result


def _flops(args, peaks, front):
    from jaxqfl import models
    from jaxqfl.bench.cost import forward_flops_per_example

    w = args.w
    model = models.mlp((HIDDEN,), 10) if args.workload == "mlp" else models.resnet20(10)
    f = forward_flops_per_example(model, (28, 28, 1))
    per_round = 3 * f * w.batch * w.steps * w.cohort * front["num_configs"]
    floor = per_round / peaks.flops
    return {"forward_flops_per_example": f, "train_flops_per_round_all_configs": per_round, "floor_seconds": floor,
            "sweep_round_over_floor": front["sweep_seconds_per_round"] / floor}


def _markdown(r) -> str:
    f, p, fl = r["front"], r["peaks"], r["flops"]
    w = WORKLOADS[r.get("workload", "mlp")]
    flag = "" if w.files == "bits" else f" --workload {r['workload']}"
    lines = [
        f"# Accuracy against uplink bits: {f['num_configs']} configs in one program"
        + (", and mixed-precision tiers" if w.tiers else f" ({w.title})"),
        "",
        f"`python benchmarks/bits.py{flag}`: MNIST, 100 clients "
        + ("of 2 label shards" if w.partition == "shards" else f"({w.partition})") + f", {w.title}, FedAvg, "
        f"{w.cohort} clients a round, {w.steps} local SGD steps of batch {w.batch} (lr {w.lr}), {r['rounds']} rounds. "
        f"{r['machine']['cpu']}, {r['cpu_count']} cores, {r['devices']} XLA CPU devices; matmul peak measured in "
        f"this run {p['flops'] / 1e9:.0f} GFLOP/s; load average {r['loadavg_start']} at start, {r['loadavg_end']} "
        "at end.",
        "",
        f"## One program against {f['num_configs']} processes",
        "",
        "| | whole-process wall time (s) |",
        "|---|---|",
        f"| `jaxqfl run --uplink {','.join(w.codecs)} --quant {','.join(w.presets)} --seeds "
        f"{w.seeds[0]}-{w.seeds[-1]}` (one process) | "
        f"{f['sweep_seconds']:.1f} (compile {f['sweep_compile_seconds']:.1f}) |",
        f"| the same {f['num_configs']} configs as separate `jaxqfl run` processes | {f['separate_seconds_for_all']:.1f} "
        f"({f['separate_runs_timed']} timed, median {f['separate_seconds_median']:.1f} s each"
        + (", scaled" if f["separate_runs_timed"] < f["num_configs"] else "") + ") |",
        "",
        f"Speed-up {f['speedup']:.1f}x. Uplink bits of every timed separate run equal its config's in the sweep "
        f"{'exactly' if f['bits_equal'] else '(NOT: a defect)'}; final accuracies differ by at most "
        f"{f['max_accuracy_difference']:.1e}: the vmapped sweep and a single run agree to float precision in the "
        f"parameters each round (`tests/test_sweep_variants.py`), and {r['rounds']} rounds of stochastic rounding "
        "and QAT rounding flips in a non-convex model amplify that. "
        f"FLOPs: {fl['forward_flops_per_example']:,.0f} forward FLOPs an example, "
        f"{fl['train_flops_per_round_all_configs'] / 1e9:.2f} GFLOP of training a round for all configs: the "
        f"floor at the measured peak is {fl['floor_seconds'] * 1e3:.1f} ms, the sweep's round "
        f"{f['sweep_seconds_per_round'] * 1e3:.0f} ms ({fl['sweep_round_over_floor']:.0f}x the floor).",
        "",
        f"## The front (mean ± std over {len(w.seeds)} seeds)" if len(w.seeds) > 1 else "## The front (one seed)",
        "",
        "| QAT preset | uplink | BOPs / example | final accuracy | uplink (MB, all clients) |",
        "|---|---|---|---|---|",
    ]
    for row in f["rows"]:
        bops = f"{row['bops']:,}" if row["bops"] else "float"
        lines.append(f"| {row['quant']} | {row['uplink']} | {bops} | {row['accuracy_mean']:.4f} ± "
                     f"{row['accuracy_std']:.4f} | {row['uplink_bits_mean'] / 8e6:.2f} |")
    if not w.tiers:
        return "\n".join(lines + ["", f"![accuracy against uplink bits]({w.files}.png)", ""])
    lines += ["", "## A mixed-precision federation (mean ± std over 3 seeds)", "",
              "Tiers: 34% of the clients train `w4a8` and send `uniform:4`, 33% `full` + `uniform:8`, 33% float. "
              "`accuracy`: the global model in float; per tier: the global model under the tier's preset.", "",
              "| federation | accuracy | uplink (MB) | per tier: preset / uplink, accuracy, uplink (MB) |",
              "|---|---|---|---|"]
    for name, row in r["tiers"].items():
        per = "; ".join(f"{t['quant']}/{t['uplink']}: {t['accuracy_mean']:.4f}, {t['uplink_bits_mean'] / 8e6:.2f}"
                        for t in row.get("tiers", []))
        lines.append(f"| {name} | {row['accuracy_mean']:.4f} ± {row['accuracy_std']:.4f} | "
                     f"{row['uplink_bits_mean'] / 8e6:.2f} | {per} |")
    lines += ["", "![accuracy against uplink bits](bits.png)", ""]
    return "\n".join(lines)


def _plot(r, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = WORKLOADS[r.get("workload", "mlp")]
    fig, ax = plt.subplots(figsize=(8, 5))
    for preset, color in zip(w.presets, ("C0", "C1", "C2")):
        rows = [row for row in r["front"]["rows"] if row["quant"] == preset]
        ax.errorbar([row["uplink_bits_mean"] for row in rows], [row["accuracy_mean"] for row in rows],
                    yerr=[row["accuracy_std"] for row in rows], fmt="o", color=color, capsize=3,
                    label=f"QAT {preset}")
        for row in rows:
            ax.annotate(row["uplink"], (row["uplink_bits_mean"], row["accuracy_mean"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    for (name, row), marker in zip(r.get("tiers", {}).items(), ("s", "D", "v", "^")):
        ax.errorbar([row["uplink_bits_mean"]], [row["accuracy_mean"]], yerr=[row["accuracy_std"]], fmt=marker,
                    color="k", mfc="none", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("total uplink bits (all clients, all rounds)")
    ax.set_ylabel("final test accuracy")
    ax.set_title(f"MNIST {w.partition}, {w.title}, {r['rounds']} rounds: accuracy against uplink bits "
                 f"({len(w.seeds)} seed{'s' if len(w.seeds) > 1 else ''})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    from jaxqfl.bench.script import force_cpu_devices, log, measured_peaks, output_folder

    force_cpu_devices(args.devices)
    from jaxqfl.bench import machine
    from jaxqfl.bench.memory import current_rss
    from jaxqfl.experiment.outputs import write_json

    peaks, load = measured_peaks(log)
    out = output_folder(args.out, args.w.files)
    result = {"workload": args.workload, "rounds": args.rounds, "devices": args.devices, "machine": machine.describe(),
              "cpu_count": os.cpu_count(), "peaks": peaks._asdict(), "loadavg_start": load}
    with tempfile.TemporaryDirectory(prefix="jaxqfl-bits-") as work:  # the 100-odd run folders: not kept
        result["front"] = _front(args, pathlib.Path(work), log)
        if args.w.tiers:
            result["tiers"] = _tiers(args, pathlib.Path(work), log)
    result["flops"] = _flops(args, peaks, result["front"])
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["peak_rss_bytes"] = current_rss()
    name = args.w.files
    write_json(out / f"{name}.json", result)
    (out / f"{name}.md").write_text(_markdown(result))
    _plot(result, out / f"{name}.png")
    log(f"wrote {out / name}.md, .json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
