"""``jaxqfl bench --chunk-sweep``: the round time at every candidate chunk size, and the tuner's pick.

For one workload:

1. build it with ``chunk_size=None`` and tuning on: the tuner's candidates (the
   cost model's seed and its neighbours), its predicted times, its pick, and
   whether the pick came from the on-disk cache (``tuning_seconds`` is the
   search's wall time; a cache hit costs only the key). On a CPU host split
   into several devices with no ``--devices``, the tuner also picks the device
   count (``jaxqfl.engine.device_split``): every device count's candidate
   chunks are swept, labelled ``chunk x devices``;
2. build one simulation per candidate (the tuned one serves its own layout),
   compile the one-round block and run a warm-up round;
3. time ``rounds`` rounds of every candidate and of the per-client loop,
   *interleaved* (one round of each in turn), so all see the same machine load;
   medians reported.

Derived: ``best_chunk`` (fastest swept), ``tuned_over_best = round_s[picked] /
round_s[best]`` (1.0 when the tuner found the best), ``speedup_over_loop =
loop_round_s / round_s[picked]``.
"""
from __future__ import annotations

import gc
import json
import pathlib
import statistics
import time

import jax

from jaxqfl import engine
from jaxqfl.bench.workloads import Workload


def _timer(sim, seed):
    first, _ = sim.run_block(sim.init(seed), 1)  # warm-up
    box = [first]

    def step() -> float:
        t0 = time.perf_counter()
        box[0], metrics = sim.run_block(box[0], 1)
        jax.block_until_ready((box[0], metrics))
        return time.perf_counter() - t0

    return step


def sweep_workload(w: Workload, *, rounds: int = 5, num_devices=None, run_loop: bool = True, seed: int = 0) -> dict:
    """Round time of every candidate chunk of ``w`` and of the tuner's pick (module docstring)."""
    kwargs = dict(cohort_size=w.cohort_size, num_devices=num_devices, uplink=w.uplink)
    t0 = time.perf_counter()
    tuned = engine.build(w.population, w.model, w.algorithm, w.schedule, autotune=True, **kwargs)
    build_s = time.perf_counter() - t0
    record = tuned.tuning
    split = record.get("device_split")
    layouts = [(c, tuned.num_devices) for c in record["candidates"]]  # (chunk, devices)
    if split is not None:  # every other device count's candidates too (its search is cached by now)
        for D in split["candidates"]:
            if D != tuned.num_devices:
                other = engine.build(w.population, w.model, w.algorithm, w.schedule, autotune=True,
                                     **{**kwargs, "num_devices": D})
                layouts += [(c, D) for c in other.tuning["candidates"]]
                del other
    label = (lambda c, D: f"{c}x{D}") if split is not None else (lambda c, D: c)
    candidates = [label(c, D) for c, D in layouts]
    picked = label(tuned.chunk_size, tuned.num_devices)
    steps, compile_s = {}, {}
    for (c, D), name in zip(layouts, candidates):
        sim = tuned if name == picked else engine.build(w.population, w.model, w.algorithm, w.schedule,
                                                        chunk_size=c, **{**kwargs, "num_devices": D})
        compile_s[name] = sim.compile_block(1)
        steps[name] = _timer(sim, seed)
    if run_loop:
        from jaxqfl.bench.reference import per_client_loop

        ref = per_client_loop(w.population, w.model, w.algorithm, w.schedule, cohort_size=w.cohort_size,
                              uplink=w.uplink)
        state = ref.init(seed)
        ref.warm_up(state)
        box = [ref.run_round(state)[0]]

        def loop_step() -> float:
            t = time.perf_counter()
            box[0], loss = ref.run_round(box[0])
            jax.block_until_ready((box[0].params, loss))
            return time.perf_counter() - t

        steps["loop"] = loop_step
    times = {c: [] for c in steps}
    for _ in range(rounds):
        for c, step in steps.items():
            times[c].append(step())
    median = {c: statistics.median(t) for c, t in times.items()}
    swept = {c: median[c] for c in candidates}
    best = min(swept, key=swept.get)
    predicted = dict(zip(record["candidates"], record["seconds"]))
    result = {
        "workload": w.name,
        "description": w.description,
        "cohort_size": w.cohort_size,
        "num_devices": tuned.num_devices,
        "clients_per_device": tuned.clients_per_device,
        "candidates": candidates,
        "round_s": {str(c): swept[c] for c in candidates},
        "round_times_s": {str(c): times[c] for c in candidates},
        "compile_s": {str(c): compile_s[c] for c in candidates},
        "predicted_s": {str(label(c, tuned.num_devices)): predicted[c] for c in record["candidates"]},
        "device_split": split,
        "skipped": record["skipped"],
        "seed_chunk": label(record["seed"], tuned.num_devices),
        "tuned_chunk": picked,
        "tuned_round_s": swept[picked],
        "best_chunk": best,
        "best_round_s": swept[best],
        "tuned_over_best": swept[picked] / swept[best],
        "cache_hit": record["cache_hit"],
        "tuning_s": record["tuning_seconds"],
        "build_s": build_s,
    }
    if run_loop:
        result["loop_round_s"] = median["loop"]
        result["loop_round_times_s"] = times["loop"]
        result["speedup_over_loop"] = median["loop"] / swept[picked]
        result["best_speedup_over_loop"] = median["loop"] / swept[best]
    del steps, tuned
    gc.collect()
    return result


def _chunk_cells(r: dict) -> str:
    cells = []
    for c in r["candidates"]:
        text = f"{c}: {r['round_s'][str(c)] * 1e3:.1f}"
        if c == r["tuned_chunk"]:
            text = f"**{text}**"
        cells.append(text)
    return ", ".join(cells)


def markdown_table(results: list[dict]) -> str:
    """One row per workload: every candidate's round (ms; the tuner's pick in bold), pick, best, loop."""
    head = ("| workload | round (ms) by chunk (x devices), tuner's pick in bold | model's seed | tuned | best | "
            "tuned / best | loop (ms) | tuned vs loop | tuning (s) |")
    rule = "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"
    rows = []
    for r in results:
        loop = r.get("loop_round_s")
        tuning = "cache hit" if r["cache_hit"] else f"{r['tuning_s']:.1f}"
        loop_ms = "-" if loop is None else f"{loop * 1e3:.1f}"
        vs_loop = "-" if loop is None else f"{r['speedup_over_loop']:.1f}x"
        rows.append(
            f"| {r['workload']} | {_chunk_cells(r)} | {r['seed_chunk']} | {r['tuned_chunk']} | {r['best_chunk']} | "
            f"{r['tuned_over_best']:.2f} | {loop_ms} | {vs_loop} | {tuning} |"
        )
    return "\n".join([head, rule, *rows])


def write(out_dir, name: str, payload: dict) -> tuple[pathlib.Path, pathlib.Path]:
    """``OUT/NAME.json`` (every timed round) and ``OUT/NAME.md`` (the table)."""
    from jaxqfl.bench.report import machine_lines

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    md = [f"# jaxqfl bench --chunk-sweep: {name}", "", machine_lines(payload["machine"], payload["peaks"]), "",
          markdown_table(payload["results"]), ""]
    md_path.write_text("\n".join(md) + "\n")
    return json_path, md_path
