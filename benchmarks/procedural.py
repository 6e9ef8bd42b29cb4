"""A hundred million clients: procedural populations, rounds per second and peak memory (issue 25).

Each row is a fresh ``python -m jaxqfl.cli.main run`` process, the way a user
starts one:

    jaxqfl run --population procedural --num-clients N --cohort-size 1000 --rounds R

(Synthetic(1, 1) generated inside the round for the cohort only, logistic
regression 60 -> 10, 20 local SGD steps of batch 10, FedAvg; defaults
otherwise). The populations are 10^4, 10^6 and 10^8 clients: a procedural
population holds no rows, so memory and time per round should not depend on
``N``; the in-memory population of the same size is sized with
``jaxqfl.data.footprint`` (its rows alone), not built. One warm-up run fills the
compilation cache first, so every measured run loads its programs.

Counted per round (``jaxqfl.bench.cost``'s formula, the local training only;
generating the rows is not counted):

    FLOPs = 3 * f * B * S * M     f = forward FLOPs of one example (2 * 60 * 10)
    bytes = M * S * (4 * (2 P + 2 P + 2 O) + B * r)

and compared with this machine's matmul and copy peaks, measured in the same
run (``jaxqfl.bench.machine``). Peak memory is the child's peak resident set
(``os.wait4``'s ``ru_maxrss``), the whole process: Python, JAX, the programs.

    python benchmarks/procedural.py                            # a fresh runs/procedural-<time>/
    python benchmarks/procedural.py --out benchmarks/results   # update the stored result
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
POPULATIONS = (10**4, 10**6, 10**8)
TARGET_RSS_BYTES = 4 * 10**9  # issue 25: a hundred million clients in under 4 GB
FEATURES, CLASSES, LOCAL_STEPS, BATCH = 60, 10, 20, 10  # the default synthetic run (cli.data_flags.DEFAULTS)


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="output folder (default: a fresh runs/procedural-<time>)")
    p.add_argument("--rounds", type=int, default=20, help="rounds per run (20)")
    p.add_argument("--cohort-size", type=int, default=1000, help="clients a round (1000)")
    p.add_argument("--populations", default=",".join(str(n) for n in POPULATIONS),
                   help="comma-separated population sizes (default: 10000,1000000,100000000)")
    args = p.parse_args(argv)
    for name in ("rounds", "cohort_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    try:
        args.populations = [int(float(v)) for v in args.populations.split(",") if v.strip()]
    except ValueError:
        p.error(f"--populations takes comma-separated integers, got {args.populations!r}")
    bad = [n for n in args.populations if n < args.cohort_size]
    if bad or not args.populations:
        p.error(f"--populations must be at least the cohort size {args.cohort_size}, got {bad or 'none'}")
    if args.out and (pathlib.Path(args.out) / "procedural.json").exists() and "results" not in args.out:
        p.error(f"--out {args.out!r} already holds procedural.json; choose a new folder")
    return args


def _env(cache_dir) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "XLA_FLAGS")}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["JAXQFL_CACHE_DIR"] = str(cache_dir)
    return env


def run_once(num_clients: int, args, cache_dir: pathlib.Path, out: pathlib.Path) -> dict:
    """One `jaxqfl run` process: wall time, peak RSS (os.wait4) and its summary's fields."""
    cmd = [sys.executable, "-m", "jaxqfl.cli.main", "run", "--population", "procedural",
           "--num-clients", str(num_clients), "--cohort-size", str(args.cohort_size), "--rounds", str(args.rounds),
           "--eval-every", str(args.rounds), "--no-progress", "--out", str(out)]
    stderr_path = out.with_name(out.name + ".stderr.txt")  # beside the run's folder, which jaxqfl run creates
    with open(stderr_path, "w") as err:
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, env=_env(cache_dir), stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)  # the child's own peak resident set (kilobytes on Linux)
        wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {os.waitstatus_to_exitcode(status)}:\n"
                           f"{stderr_path.read_text()[-2000:]}")
    peak_rss = int(usage.ru_maxrss) * 1024
    s = json.loads((out / "summary.json").read_text())
    return {"num_clients": num_clients, "wall": wall, "peak_rss_bytes": peak_rss,
            "compile": s["compile_seconds"], "seconds_per_round": s["seconds_per_round"],
            "round_seconds_median": s.get("round_seconds_median"), "rounds_per_second": 1.0 / s["seconds_per_round"],
            "startup": s["startup_seconds"], "final_accuracy": s["final_accuracy"], "chunk_size": s["chunk_size"],
            "num_devices": s["num_devices"], "num_params": s["num_params"], "compile_cache_hits": s["compile_cache_hits"]}


def round_counts(cohort: int) -> dict:
    """FLOPs and bytes of one round, counted by ``jaxqfl.bench.cost.round_cost`` on the run's model, algorithm and
    schedule; the shapes come from a few clients of the same procedural population, materialised."""
    import optax

    from jaxqfl import algorithms, engine, models
    from jaxqfl.bench.cost import round_cost
    from jaxqfl.data.procedural import procedural_synthetic

    shapes = procedural_synthetic(1.0, 1.0, num_clients=2, seed=0, num_features=FEATURES, num_classes=CLASSES,
                                  test_clients=1).materialize()  # max_count and row shapes as the run's
    cost = round_cost(shapes, models.logistic_regression(CLASSES), algorithms.fedavg(optax.sgd(0.01)),
                      engine.LocalSchedule(local_steps=LOCAL_STEPS, batch_size=BATCH), cohort)
    return {"flops": cost.flops, "bytes": cost.bytes, "params": cost.num_params}


def _markdown(r) -> str:
    m = r["machine"]
    lines = [
        "# A hundred million clients: procedural populations (`benchmarks/procedural.py`)",
        "",
        f"{m['cpu']}, {r['cpu_count']} cores, JAX {m['jax']} ({m['backend']}); load average {r['loadavg_start']} "
        f"at the start, {r['loadavg_end']} at the end. Measured {r['measured']}. Peaks measured in this run: matmul "
        f"{r['peaks']['flops'] / 1e9:.1f} GFLOP/s, copy {r['peaks']['bandwidth'] / 1e9:.1f} GB/s.",
        "",
        f"`jaxqfl run --population procedural --num-clients N --cohort-size {r['cohort_size']} --rounds "
        f"{r['rounds']}` (Synthetic(1, 1) generated in the round, logistic regression, 20 local steps of batch 10, "
        "FedAvg), one fresh process each, programs loaded from a warm compilation cache. Per round: "
        f"{r['counts']['flops'] / 1e6:.0f} MFLOP and {r['counts']['bytes'] / 1e6:.0f} MB counted "
        "(local training only; generating the rows is not counted).",
        "",
        "| clients N | in-memory rows would need | peak RSS | wall | rounds/s | ms/round (median) | "
        "GFLOP/s | of matmul peak | GB/s | of copy peak | test accuracy |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["runs"]:
        lines.append(
            f"| {row['num_clients']:,} | {row['in_memory_bytes'] / 2**30:,.1f} GiB | "
            f"{row['peak_rss_bytes'] / 2**20:,.0f} MiB | {row['wall']:.2f} s | {row['rounds_per_second']:.1f} | "
            f"{1e3 * (row['round_seconds_median'] or row['seconds_per_round']):.1f} | "
            f"{row['achieved_flops'] / 1e9:.2f} | {row['flops_ratio']:.3f} | {row['achieved_bandwidth'] / 1e9:.2f} | "
            f"{row['bandwidth_ratio']:.3f} | {row['final_accuracy']:.4f} |")
    big = max(r["runs"], key=lambda row: row["num_clients"])
    lines += ["", f"Issue 25's target: {big['num_clients']:,} clients under {TARGET_RSS_BYTES / 1e9:g} GB peak: "
                  f"{big['peak_rss_bytes'] / 1e9:.2f} GB, {'met' if big['peak_rss_bytes'] < TARGET_RSS_BYTES else 'not met'}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    from jaxqfl.bench.script import force_cpu_devices, log, measured_peaks, output_folder

    force_cpu_devices(1)  # this process only measures the peaks; the children split the host as jaxqfl run does
    from jaxqfl.bench import machine
    from jaxqfl.experiment.outputs import write_json
    from jaxqfl.data.footprint import generated_footprint

    out = output_folder(args.out, "procedural")
    peaks, load = measured_peaks(log)
    counts = round_counts(args.cohort_size)
    result = {"rounds": args.rounds, "cohort_size": args.cohort_size, "machine": machine.describe(),
              "cpu_count": os.cpu_count(), "loadavg_start": load, "counts": counts,
              "peaks": {"flops": peaks.flops, "bandwidth": peaks.bandwidth},
              "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": []}
    with tempfile.TemporaryDirectory(prefix="jaxqfl-procedural-") as tmp:
        tmp = pathlib.Path(tmp)
        cache = tmp / "cache"
        warm = run_once(min(args.populations), args, cache, tmp / "warm-up")
        log(f"[warm-up] {warm['wall']:.2f} s (compile {warm['compile']:.2f} s)")
        for n in args.populations:
            row = run_once(n, args, cache, tmp / f"run-{n}")
            per_round = row["round_seconds_median"] or row["seconds_per_round"]
            row["in_memory_bytes"] = generated_footprint("synthetic", num_clients=n).bytes
            row["achieved_flops"] = counts["flops"] / per_round
            row["achieved_bandwidth"] = counts["bytes"] / per_round
            row["flops_ratio"] = row["achieved_flops"] / peaks.flops
            row["bandwidth_ratio"] = row["achieved_bandwidth"] / peaks.bandwidth
            result["runs"].append(row)
            log(f"[N={n:,}] peak RSS {row['peak_rss_bytes'] / 2**20:,.0f} MiB, {row['rounds_per_second']:.1f} "
                f"rounds/s ({row['flops_ratio']:.3f} of matmul peak), wall {row['wall']:.2f} s, accuracy "
                f"{row['final_accuracy']:.4f}")
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json(out / "procedural.json", result)
    (out / "procedural.md").write_text(_markdown(result))
    log(f"wrote {out / 'procedural.md'}, {out / 'procedural.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
