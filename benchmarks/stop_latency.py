"""How long a run takes to stop after Ctrl-C while k-means++ seeds many clusters (issue 20, defect 1).

Starts ``jaxqfl run --dataset gaussian-mixture --clusters K`` as a subprocess, sends SIGINT ``--after``
seconds later (during the server's k-means++), and measures the seconds from the signal to the process's
exit, and its exit status. Before the seeding ran in pieces, the signal was only read once the whole
seeding (10 restarts x K draws, then 20 Lloyd iterations) had finished; now it is read between pieces
(``jaxqfl.algorithms.kmeans_seeding.PIECE_WORK`` multiply-adds of k-means++, or one Lloyd iteration).

    PYTHONPATH=. python benchmarks/stop_latency.py --clusters 1000 --seed-points 200 --after 12 \\
        --out benchmarks/results/stop_latency.json

Also runs the same command to its end without a signal (``--rounds 1``) to report the whole seeding time.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import signal
import subprocess
import sys
import tempfile
import time


def command(args, out: pathlib.Path, rounds: int) -> list[str]:
    return [sys.executable, "-m", "jaxqfl.cli.main", "run", "--dataset", "gaussian-mixture", "--num-clients",
            str(args.num_clients), "--cohort-size", str(args.cohort_size), "--clusters", str(args.clusters),
            "--seed-points", str(args.seed_points), "--rounds", str(rounds), "--devices", "2", "--no-progress",
            "--out", str(out)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--seed-points", type=int, default=200)
    p.add_argument("--num-clients", type=int, default=20)
    p.add_argument("--cohort-size", type=int, default=10)
    p.add_argument("--after", type=float, default=12.0, help="seconds from the start to the SIGINT")
    p.add_argument("--out", default=None, help="a JSON file for the result")
    args = p.parse_args()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        whole = subprocess.run(command(args, pathlib.Path(tmp) / "whole", 1), env=env, capture_output=True, text=True)
        whole_seconds = time.perf_counter() - t0
        proc = subprocess.Popen(command(args, pathlib.Path(tmp) / "cut", 100000), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(args.after)
        sent = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate()
        latency = time.perf_counter() - sent
        summary = pathlib.Path(tmp) / "cut" / "summary.json"
        result = {
            "command": " ".join(command(args, pathlib.Path("OUT"), 100000)),
            "machine": f"{platform.node()} ({os.cpu_count()} CPUs, {platform.machine()})",
            "whole_run_rounds_1_seconds": round(whole_seconds, 2), "whole_run_exit": whole.returncode,
            "signal_after_seconds": args.after, "seconds_from_signal_to_exit": round(latency, 2),
            "exit_status": proc.returncode,
            "summary": json.loads(summary.read_text()) if summary.is_file() else None,
            "stderr_tail": err[-400:],
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
