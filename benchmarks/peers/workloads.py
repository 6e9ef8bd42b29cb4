"""The peer comparison's workloads and the measurements every side reports (no JAX, no torch: NumPy only).

Each side (``jaxqfl run``, ``pfl_peer.py``, ``flower_peer.py``) trains the same
model with the same FedAvg schedule on the same clients, read from one ``.npz``
file that ``compare.py`` writes with jaxqfl's own data builders:

=====  ============================================================================
name   workload
=====  ============================================================================
mlp    the bench ``mlp`` model and schedule on real MNIST: the 24,345-image training
       split IID over 1,000 clients (24-25 images each, ``jaxqfl.data.build``), 100 a
       round; MLP 784-200-10; one local epoch of SGD (lr 0.05), batch 16
tiny   the bench ``tiny`` workload: Synthetic(1, 1) (Li et al. 2020,
       ``jaxqfl.data.synthetic(1, 1, 1000, 0)``), all 1,000 clients a round;
       logistic regression 60 -> 10; 20 local SGD steps (lr 0.01) of batch 10
=====  ============================================================================

Both: FedAvg weighted by the clients' example counts, server step 1 (the new model
is the weighted mean of the clients' models). ``tests/test_peers_compare.py``
checks these settings against ``jaxqfl.bench.workloads``.

The file's layout (``jaxqfl run --dataset npz``): ``x [N, F]`` float32, ``y [N]``
int32, ``client_id [N]`` (client-major), ``x_test``, ``y_test``.

Every side reports (``report``): ``round_ms`` (the median of the rounds after the
first), ``cpu_round_ms`` (CPU time of the process and all its descendants over the
same rounds, median), ``first_round_s``, ``losses`` (the global model's test loss
after each round, evaluated outside the timed rounds) and ``loss_fell`` (last < first).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

WORKLOADS = {
    "mlp": {
        "bench": "mlp", "data": "mnist", "num_clients": 1000, "partition": "iid", "model": "mlp", "hidden": [200],
        "cohort_size": 100, "local_epochs": 1, "local_steps": None, "batch_size": 16, "client_lr": 0.05,
    },
    "tiny": {
        "bench": "tiny", "data": "synthetic", "num_clients": 1000, "partition": "natural", "model": "logreg",
        "hidden": [], "cohort_size": 1000, "local_epochs": None, "local_steps": 20, "batch_size": 10,
        "client_lr": 0.01,
    },
}
ROUNDS = 10


def jaxqfl_flags(name: str, data_path: str, rounds: int) -> list[str]:
    """``jaxqfl run`` flags for workload ``name`` on the exported file (its test loss each round)."""
    w = WORKLOADS[name]
    flags = ["--dataset", "npz", "--data-path", str(data_path), "--partition", "natural", "--model", w["model"],
             "--cohort-size", str(w["cohort_size"]), "--batch-size", str(w["batch_size"]),
             "--client-lr", repr(w["client_lr"]), "--rounds", str(rounds), "--eval-every", "1", "--no-progress"]
    if w["hidden"]:
        flags += ["--hidden", ",".join(map(str, w["hidden"]))]
    if w["local_epochs"] is not None:
        flags += ["--local-epochs", str(w["local_epochs"])]
    else:
        flags += ["--local-steps", str(w["local_steps"])]
    return flags


def peer_args(description: str, argv=None) -> argparse.Namespace:
    """The flags every peer script takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    p.add_argument("--data-path", required=True, help="the .npz that compare.py wrote for this workload")
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSON file to write the report to")
    args = p.parse_args(argv)
    if args.rounds < 2:
        p.error(f"--rounds must be at least 2 (the first round is reported apart), got {args.rounds}")
    if not os.path.isfile(args.data_path):
        p.error(f"--data-path {args.data_path!r}: no such file")
    return args


def load(path: str) -> dict:
    """The exported workload file as NumPy arrays, with ``clients``: each client's row slice."""
    import numpy as np

    with np.load(path) as f:
        d = {k: f[k] for k in ("x", "y", "client_id", "x_test", "y_test")}
    ids = d["client_id"]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    d["clients"] = [slice(int(a), int(b)) for a, b in zip(starts, ends)]
    d["num_classes"] = int(max(d["y"].max(), d["y_test"].max())) + 1
    return d


def tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and every live descendant (Ray's workers included)."""
    try:
        import psutil
    except ImportError:  # descendants that have not exited are missed
        import resource

        return sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                   for f in ("ru_utime", "ru_stime"))
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:  # exited meanwhile
            pass
    return total


class RoundClock:
    """Wall and CPU marks at the start of training and at the end of each round (pauses excluded)."""

    def __init__(self):
        self.wall, self.cpu = [time.perf_counter()], [tree_cpu_seconds()]
        self.paused_wall = self.paused_cpu = 0.0

    def round_done(self):
        self.wall.append(time.perf_counter() - self.paused_wall)
        self.cpu.append(tree_cpu_seconds() - self.paused_cpu)

    def pause(self):
        """Start of untimed work (evaluation) after ``round_done``."""
        self._pause = (time.perf_counter(), tree_cpu_seconds())

    def resume(self):
        self.paused_wall += time.perf_counter() - self._pause[0]
        self.paused_cpu += tree_cpu_seconds() - self._pause[1]


def report(args, clock: RoundClock, losses: list[float], peer: str, versions: dict, **extra) -> dict:
    """Write the peer's JSON report to ``args.out``; raise if the loss did not fall."""
    walls = [b - a for a, b in zip(clock.wall, clock.wall[1:])]
    cpus = [b - a for a, b in zip(clock.cpu, clock.cpu[1:])]
    if len(walls) != args.rounds or len(losses) != args.rounds:
        raise RuntimeError(f"{peer}: {len(walls)} rounds timed and {len(losses)} losses for {args.rounds} rounds")
    out = {
        "peer": peer, "workload": args.workload, "settings": WORKLOADS[args.workload], "rounds": args.rounds,
        "round_ms": 1e3 * statistics.median(walls[1:]), "cpu_round_ms": 1e3 * statistics.median(cpus[1:]),
        "first_round_s": walls[0], "round_s": walls, "cpu_round_s": cpus, "losses": losses,
        "loss_fell": losses[-1] < losses[0], "versions": versions, **extra,
    }
    with open(args.out, "w") as f:
        json.dump(out, f, allow_nan=False)
    if not out["loss_fell"]:
        raise SystemExit(f"{peer} {args.workload}: the test loss did not fall ({losses[0]:.4f} -> {losses[-1]:.4f})")
    return out


_CACHE: dict = {}


def load_cached(path: str, convert=None):
    """``convert(load(path))`` once per process (Flower's Ray actors serve many clients each)."""
    key = (path, convert)
    if key not in _CACHE:
        data = load(path)
        _CACHE[key] = (data, convert(data) if convert else None)
    return _CACHE[key]
