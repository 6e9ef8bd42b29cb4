"""jaxqfl against pfl-research and Flower on the same workloads, side by side (issue 25).

    python benchmarks/peers/compare.py --peer-python /work/peers-venv/bin/python   # a fresh runs/peers-<time>/
    python benchmarks/peers/compare.py --peer-python ... --out benchmarks/results  # update the stored result

First writes each workload's clients to a temporary ``<workload>.npz`` with jaxqfl's
own builders (``workloads.py`` says which), so every side reads the same rows.
Then, ``--repeats`` times, in an order that rotates each repeat, one process per
measurement:

* ``jaxqfl``: ``python -m jaxqfl.cli.main run`` on that file (``workloads.jaxqfl_flags``),
  its defaults otherwise (all cores, its own chunking). A *cold* 10-round run in an
  empty ``JAXQFL_CACHE_DIR``, then a *warm* one in the same folder: round times,
  first round (the round block's compilation or cache load + round 1) and test
  losses from its ``summary.json`` / ``metrics.jsonl``. CPU ms/round: the CPU time
  of a warm ``10 + 20``-round process minus the warm 10-round one's, over 20;
* ``pfl`` (``pfl_peer.py``) and ``flower`` (``flower_peer.py``, Ray with one actor per
  core), run by ``--peer-python`` (the interpreter of the venv holding the peers);
  a peer whose packages that interpreter cannot import is skipped with a line saying so.
  ``--once`` pairs (default: Flower's, minutes a run) run in the first repeat only.

``process_s`` is the whole process's wall time for a 10-round run, timed here around
the child. The report holds every run, the medians and min-max spread over the
repeats, the ratios peer / jaxqfl, the machine, the load average before and after,
the CPU count and the versions. Writes ``OUT/peers.json`` (strict JSON) and
``OUT/peers.md``; refuses an ``--out`` that already holds them unless it is the
stored-results folder ``benchmarks/results``.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
import workloads as wl  # noqa: E402

MNIST = ROOT.parent / "shared" / "data" / "mnist" / "mnist.npz"
PEERS = {"pfl": ("pfl_peer.py", "import pfl, torch"), "flower": ("flower_peer.py", "import flwr, ray, torch")}
SIDES = ("jaxqfl", *PEERS)
METRICS = ("round_ms", "cpu_round_ms", "first_round_s", "process_s")
CPU_EXTRA_ROUNDS = 20


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="output folder (default: a fresh runs/peers-<time>)")
    p.add_argument("--peer-python", default=sys.executable,
                   help="the Python of the environment with torch, pfl and flwr[simulation] (default: this one)")
    p.add_argument("--workloads", default=",".join(wl.WORKLOADS), help="comma-separated, of mlp, tiny (default: both)")
    p.add_argument("--peers", default=",".join(PEERS), help="comma-separated, of pfl, flower (default: both)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of every measurement (3)")
    p.add_argument("--rounds", type=int, default=wl.ROUNDS, help=f"rounds per run ({wl.ROUNDS})")
    p.add_argument("--data-path", default=str(MNIST), help="MNIST mnist.npz (Keras layout) for the mlp workload")
    p.add_argument("--once", default="flower:mlp,flower:tiny",
                   help="comma-separated PEER:WORKLOAD pairs measured in the first repeat only (default: Flower's, "
                        "1 and 8 minutes a run on 2 cores); 'none' for none")
    args = p.parse_args(argv)
    for name in ("repeats", "rounds"):
        if getattr(args, name) < (2 if name == "rounds" else 1):
            p.error(f"--{name} must be at least {2 if name == 'rounds' else 1}, got {getattr(args, name)}")
    args.workloads = _names(p, "workloads", args.workloads, wl.WORKLOADS)
    args.peers = _names(p, "peers", args.peers, PEERS)
    args.once = set() if args.once.strip() == "none" else {tuple(x.strip().split(":")) for x in args.once.split(",")}
    bad = [":".join(x) for x in args.once if len(x) != 2 or x[0] not in PEERS or x[1] not in wl.WORKLOADS]
    if bad:
        p.error(f"--once takes PEER:WORKLOAD pairs (peers {', '.join(PEERS)}; workloads {', '.join(wl.WORKLOADS)}) "
                f"or 'none', got {bad}")
    if "mlp" in args.workloads and not os.path.isfile(args.data_path):
        p.error(f"--data-path {args.data_path!r}: no such file (the mlp workload reads MNIST; "
                "leave it out with --workloads tiny)")
    if args.out is not None:
        error = refuse_existing(pathlib.Path(args.out))
        if error:
            p.error(error)
    return args


def _names(p, flag, text, allowed):
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        p.error(f"--{flag} takes names of {', '.join(allowed)}, got {bad or 'none'}")
    return names


def refuse_existing(out: pathlib.Path) -> str | None:
    """Why ``out`` must not be written (it holds an earlier comparison), or None."""
    stored = (ROOT / "benchmarks" / "results").resolve()
    held = [n for n in ("peers.json", "peers.md") if (out / n).exists()]
    if held and out.resolve() != stored:
        return f"--out {str(out)!r} already holds {', '.join(held)}; choose a new folder"
    return None


# ----------------------------------------------------------------------------------------------- data


def export(name: str, path: pathlib.Path, mnist: str) -> dict:
    """Write workload ``name``'s population to ``path`` (``workloads.py``'s layout); return its shape."""
    import numpy as np

    from jaxqfl.data import build

    w = wl.WORKLOADS[name]
    if w["data"] == "mnist":
        pop = build("mnist", num_clients=w["num_clients"], partition=w["partition"], data_path=mnist)
    else:
        from jaxqfl.bench.workloads import WORKLOADS as BENCH

        pop = BENCH[w["bench"]]().population  # the bench's own Synthetic(1, 1) population
    x = pop.x.reshape(len(pop.x), -1).astype(np.float32)
    rows = np.concatenate([np.arange(o, o + c) for o, c in zip(pop.offsets, pop.counts)])
    ids = np.repeat(np.arange(len(pop.counts), dtype=np.int32), pop.counts)
    np.savez(path, x=x[rows], y=pop.y[rows].astype(np.int32), client_id=ids,
             x_test=pop.x_test.reshape(len(pop.x_test), -1).astype(np.float32), y_test=pop.y_test.astype(np.int32))
    return {"clients": int(len(pop.counts)), "rows": int(len(rows)), "features": int(x.shape[1]),
            "classes": int(pop.num_classes), "test_rows": int(len(pop.x_test)),
            "client_rows_min": int(pop.counts.min()), "client_rows_max": int(pop.counts.max())}


# ----------------------------------------------------------------------------------------------- runs


def _timed(cmd, env) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall s, CPU s of the child and its descendants that it waited for, the finished process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return wall, cpu, done


def _jaxqfl_env(cache) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_COMPILATION_CACHE_DIR", "JAXQFL_AUTOTUNE", "JAXQFL_AUTOTUNE_BUDGET", "XLA_FLAGS")}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["JAXQFL_CACHE_DIR"] = str(cache)
    return env


def run_jaxqfl(name, data, rounds, tmp: pathlib.Path, tag: str) -> dict:
    """Cold and warm ``rounds``-round processes and a warm ``rounds + 20`` one (for the CPU time per round)."""
    cache = tmp / f"cache-{tag}"
    runs = {}
    for kind, n in (("cold", rounds), ("warm", rounds), ("cpu", rounds + CPU_EXTRA_ROUNDS)):
        out = tmp / f"jaxqfl-{tag}-{kind}"
        cmd = [sys.executable, "-m", "jaxqfl.cli.main", "run", *wl.jaxqfl_flags(name, data, n), "--out", str(out)]
        wall, cpu, _ = _timed(cmd, _jaxqfl_env(cache))
        s = json.loads((out / "summary.json").read_text())
        recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        per_round = [t for r in recs for t in r["round_seconds"]]
        runs[kind] = {"process_s": wall, "cpu_s": cpu, "round_s": per_round,
                      "first_round_s": s["compile_seconds"] + per_round[0], "losses": [r["test_loss"] for r in recs],
                      "compile_s": s["compile_seconds"], "cache_hits": s.get("compile_cache_hits"),
                      "num_devices": s.get("num_devices"), "chunk_size": s.get("chunk_size")}
    warm = runs["warm"]
    if (runs["cpu"]["chunk_size"], runs["cpu"]["num_devices"]) != (warm["chunk_size"], warm["num_devices"]):
        raise RuntimeError(f"jaxqfl {name}: the {rounds + CPU_EXTRA_ROUNDS}-round run chose another layout "
                           f"({runs['cpu']['chunk_size']}, {runs['cpu']['num_devices']} devices) than the {rounds}-round "
                           f"one ({warm['chunk_size']}, {warm['num_devices']}): its CPU time is not comparable")
    losses = warm["losses"]
    if not losses[-1] < losses[0]:
        raise RuntimeError(f"jaxqfl {name}: the test loss did not fall ({losses[0]} -> {losses[-1]})")
    return {"peer": "jaxqfl", "round_ms": 1e3 * statistics.median(warm["round_s"][1:]),
            "cpu_round_ms": 1e3 * (runs["cpu"]["cpu_s"] - warm["cpu_s"]) / CPU_EXTRA_ROUNDS,
            "first_round_s": warm["first_round_s"], "process_s": warm["process_s"],
            "cold_process_s": runs["cold"]["process_s"], "cold_first_round_s": runs["cold"]["first_round_s"],
            "losses": losses, "loss_fell": True, "runs": runs}


def peer_installed(python: str, peer: str) -> str | None:
    """None when ``python`` imports the peer's packages, else the reason."""
    done = subprocess.run([python, "-c", PEERS[peer][1]], capture_output=True, text=True)
    return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1]


def run_peer(peer, python, name, data, rounds, tmp: pathlib.Path, tag: str) -> dict:
    out = tmp / f"{peer}-{tag}.json"
    cmd = [python, str(HERE / PEERS[peer][0]), "--workload", name, "--data-path", str(data), "--rounds", str(rounds),
           "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "PYTHONPATH": str(HERE)}
    wall, cpu, _ = _timed(cmd, env)
    r = json.loads(out.read_text())
    r.update(process_s=wall, process_cpu_s=cpu)
    return r


def _spread(values) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(runs: dict) -> dict:
    """``runs[workload][side]`` (a list over the repeats) -> medians, spreads and ratios side / jaxqfl."""
    out = {}
    for name, sides in runs.items():
        out[name] = {}
        for side, reps in sides.items():
            if reps:
                out[name][side] = {m: _spread([r[m] for r in reps]) for m in METRICS}
        if "jaxqfl" in out[name]:
            base = out[name]["jaxqfl"]
            for side, s in out[name].items():
                if side != "jaxqfl":
                    s["ratio"] = {m: s[m]["median"] / base[m]["median"] for m in METRICS}
    return out


def _losses(runs) -> str:
    first = runs[0]["losses"]
    return f"{first[0]:.3f} -> {first[-1]:.3f}"


def _ratio(ratio, key, fmt) -> str:
    return "1" if ratio is None else f"{ratio[key]:{fmt}}x"


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# jaxqfl, pfl-research and Flower on the same workloads (`benchmarks/peers/compare.py`)",
        "",
        f"{m['cpu']}, {r['cpu_count']} cores, Python {m['python']}; load average {r['loadavg_start']} at the start, "
        f"{r['loadavg_end']} at the end (other processes shared the CPU); {r['rounds']} rounds a run, "
        f"{r['repeats']} repeat(s) in rotating order, medians (min-max). Measured {r['measured']}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + ".",
        "",
        f"| workload | side | ms/round | CPU ms/round | first round (s) | whole {r['rounds']}-round process (s) | "
        "ratio ms/round | ratio process | test loss, round 1 -> last |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, sides in r["summary"].items():
        for side, s in sides.items():
            cell = lambda k, f: f"{s[k]['median']:{f}} ({s[k]['min']:{f}}-{s[k]['max']:{f}})"  # noqa: E731
            ratio = s.get("ratio")
            lines.append(f"| {name} | {side} | {cell('round_ms', '.1f')} | {cell('cpu_round_ms', '.1f')} | "
                         f"{cell('first_round_s', '.2f')} | {cell('process_s', '.2f')} | "
                         f"{_ratio(ratio, 'round_ms', '.1f')} | {_ratio(ratio, 'process_s', '.2f')} | "
                         f"{_losses(r['runs'][name][side])} |")
    cold = []
    for n, sides in r["runs"].items():
        if sides.get("jaxqfl"):
            c = statistics.median(x["cold_process_s"] for x in sides["jaxqfl"])
            peers = ", ".join(f"{side} / cold {r['summary'][n][side]['process_s']['median'] / c:.2f}x"
                              for side in r["summary"][n] if side != "jaxqfl")
            cold.append(f"{c:.2f} s on {n}" + (f" ({peers})" if peers else ""))
    lines += ["", "Ratios: the peer's median over jaxqfl's (above 1: jaxqfl is faster). jaxqfl's row is a warm run "
              "(its compilation cache filled by a cold run just before); a cold run's whole process (an empty "
              "cache: tuning and compilation included) took " + "; ".join(cold) + "."]
    if r.get("once"):
        lines += ["", "Measured in the first repeat only (one run: no spread): " + ", ".join(r["once"]) + "."]
    if r["skipped"]:
        lines += [""] + [f"Skipped: {p} ({why})." for p, why in r["skipped"].items()]
    lines += [
        "",
        "- ms/round: the median wall time of rounds 2..N; CPU ms/round: CPU time of the process and its",
        f"  descendants (Ray's workers for Flower) per round, median (jaxqfl: a {r['rounds'] + CPU_EXTRA_ROUNDS}-round "
        f"process minus a {r['rounds']}-round",
        f"  one, over {CPU_EXTRA_ROUNDS}, so it also holds jaxqfl's test evaluation and metric writing after each",
        "  round, which the peers' figures leave out). jaxqfl uses all cores (XLA's thread pool); pfl one",
        "  thread; Flower one single-threaded Ray actor per core.",
        "- first round: from the start of training to the end of round 1 (jaxqfl: the round block's",
        "  compilation or cache load + round 1; pfl: it also evaluates each client of round 1 before and after",
        "  its local training, pfl's evaluation at iteration 0; Flower: from `run_simulation`, so Ray's start).",
        f"- whole process: a fresh interpreter running the {r['rounds']}-round script, timed around the child; every",
        "  side evaluates the test loss after each round (outside the timed rounds) and asserts it fell.",
        "- test loss: the first repeat's. The peers start from PyTorch's initialisation, jaxqfl from Flax's",
        "  (LeCun normal weights, zero biases), so the curves differ while the work per round is the same.",
        "",
        "Workloads (`benchmarks/peers/workloads.py`), each read by every side from one exported .npz:",
        "",
    ]
    for name, shape in r["data"].items():
        lines.append(f"- `{name}`: {json.dumps(wl.WORKLOADS[name])}; {shape['clients']} clients, "
                     f"{shape['rows']} rows ({shape['client_rows_min']}-{shape['client_rows_max']} a client), "
                     f"{shape['features']} features, {shape['classes']} classes, {shape['test_rows']} test rows.")
    return "\n".join(lines) + "\n"


def _versions(peer_python) -> dict:
    import jax

    import jaxqfl

    v = {"jaxqfl": jaxqfl.__version__, "jax": jax.__version__}
    code = ("import json, importlib.metadata as m\nout = {}\nfor p in ('torch', 'pfl', 'flwr', 'ray'):\n"
            "    try: out[p] = m.version(p)\n    except Exception: pass\nprint(json.dumps(out))")
    done = subprocess.run([peer_python, "-c", code], capture_output=True, text=True)
    if done.returncode == 0:
        v.update(json.loads(done.stdout))
    return v


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from jaxqfl.bench import machine
    from jaxqfl.bench.script import log, output_folder
    from jaxqfl.experiment.outputs import write_json

    out = output_folder(args.out, "peers")
    skipped = {}
    peers = []
    for peer in args.peers:
        why = peer_installed(args.peer_python, peer)
        if why is None:
            peers.append(peer)
        else:
            skipped[peer] = f"{args.peer_python} cannot import it: {why}"
            log(f"[skip] {peer}: not installed for {args.peer_python} ({why})")
    result = {"rounds": args.rounds, "repeats": args.repeats, "machine": machine.describe(),
              "cpu_count": os.cpu_count(), "platform": platform.platform(),
              "loadavg_start": [round(x, 2) for x in os.getloadavg()],
              "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "versions": _versions(args.peer_python), "skipped": skipped, "data": {},
              "once": sorted(":".join(x) for x in args.once)}
    runs = {name: {side: [] for side in ("jaxqfl", *peers)} for name in args.workloads}
    with tempfile.TemporaryDirectory(prefix="jaxqfl-peers-") as tmp:
        tmp = pathlib.Path(tmp)
        files = {}
        for name in args.workloads:
            files[name] = tmp / f"{name}.npz"
            result["data"][name] = export(name, files[name], args.data_path)
            log(f"[data] {name}: {result['data'][name]}")
        sides = ["jaxqfl", *peers]
        for i in range(args.repeats):
            order = sides[i % len(sides):] + sides[:i % len(sides)]  # rotate who goes first
            for name in args.workloads:
                for side in order:
                    if i > 0 and (side, name) in args.once:
                        continue
                    tag = f"{name}-{i}"
                    r = (run_jaxqfl(name, files[name], args.rounds, tmp, tag) if side == "jaxqfl"
                         else run_peer(side, args.peer_python, name, files[name], args.rounds, tmp, tag))
                    runs[name][side].append(r)
                    log(f"[{name} #{i}] {side}: {r['round_ms']:.1f} ms/round, CPU {r['cpu_round_ms']:.1f} ms/round, "
                        f"first round {r['first_round_s']:.2f} s, process {r['process_s']:.2f} s, "
                        f"loss {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}")
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["summary"] = summarize(runs)
    result["runs"] = runs
    for name, sides in result["summary"].items():
        for side, s in sides.items():
            if "ratio" in s:
                log(f"{name}: {side} / jaxqfl = {s['ratio']['round_ms']:.1f}x per round, "
                    f"{s['ratio']['cpu_round_ms']:.1f}x CPU per round, {s['ratio']['process_s']:.2f}x whole process")
    write_json(out / "peers.json", result)
    (out / "peers.md").write_text(markdown(result))
    log(f"wrote {out / 'peers.md'}, {out / 'peers.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
