"""QAT overhead: the ``qfl`` round (int8 QAT, policy ``full``) over the same round in float.

Builds, in ONE process, the ``qfl`` bench workload (``jaxqfl.bench.workloads``:
MLP 784-200-62, 1,000 clients x 64 random examples, 100 per round, one local
epoch of batch 16, FedAvg, ``qsgd:127`` uplink) twice: with ``policy="full"``
(int8 per-channel weights, int8 per-example inputs, fake-quantized in every
local step) and with ``policy="none"`` (float), everything else equal,
including the uplink codec and an explicit chunk size (no autotuning noise).
The ratio therefore isolates what quantization-aware training costs.

Timing: after compiling both and one warm-up round each, ``--blocks`` blocks
alternate between the two (float then QAT in even blocks, QAT then float in
odd ones); a block is ``--rounds-per-block`` rounds of one workload, each
timed to ``block_until_ready``. Both see the same machine load, so the ratio
of the medians (``ratio``) holds on a shared machine; the median of per-block
ratios (``ratio_paired``) is reported beside it. The 1-, 5- and 15-minute
load averages at start and end are recorded with the numbers.

    python benchmarks/qat_overhead.py                            # a fresh runs/qat_overhead-<time>/
    python benchmarks/qat_overhead.py --out benchmarks/results   # update the stored result

``--compare OLD.json [...]`` adds the rows of earlier results (e.g. this script run
against an older checkout, ``PYTHONPATH=<old tree> python benchmarks/qat_overhead.py
--label before``) to the markdown table, so a before/after pair measured in one
sitting reads side by side; each row keeps its own load averages.
"""
from __future__ import annotations

import argparse
import os
import sys


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="output folder (default: a fresh runs/qat_overhead-<time>)")
    p.add_argument("--name", default="qat_overhead", help="file stem of the JSON and markdown (default: %(default)s)")
    p.add_argument("--blocks", type=int, default=20, help="alternating blocks per workload (default: %(default)s)")
    p.add_argument("--rounds-per-block", type=int, default=3, help="timed rounds per block (default: %(default)s)")
    p.add_argument("--chunk-size", type=int, default=2, help="clients per vmap, both workloads (default: %(default)s)")
    p.add_argument("--devices", type=int, default=2, help="XLA CPU devices in the mesh (default: %(default)s)")
    p.add_argument("--label", default="", help="free text stored with the result (e.g. the commit measured)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", nargs="*", default=[], metavar="JSON",
                   help="earlier results of this script to show as extra rows of the table")
    args = p.parse_args(argv)
    for path in args.compare:
        if not os.path.isfile(path):
            p.error(f"--compare: {path!r} is not a file")
    for name in ("blocks", "rounds_per_block", "chunk_size", "devices"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    return args


def main(argv=None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
        ).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import json
    import pathlib
    import platform
    import statistics
    import time

    import jax

    from jaxqfl import engine
    from jaxqfl.bench import workloads

    out = pathlib.Path(args.out or f"runs/qat_overhead-{time.strftime('%Y%m%d-%H%M%S')}")
    load_start = os.getloadavg()

    qfl = workloads.qfl()
    mlp_like = workloads._mlp_like  # the same builder qfl uses, with the policy left float
    float_w = mlp_like("qfl-float", "qfl with policy 'none'", qfl.population.num_clients, qfl.cohort_size,
                       policy=None, uplink=qfl.uplink)
    float_w = float_w._replace(population=qfl.population)  # the very same arrays

    def make(w):
        sim = engine.build(w.population, w.model, w.algorithm, w.schedule, cohort_size=w.cohort_size,
                           chunk_size=args.chunk_size, num_devices=args.devices, uplink=w.uplink, autotune=False)
        compile_s = sim.compile_block(1)
        state, _ = sim.run_block(sim.init(args.seed), 1)  # warm-up
        jax.block_until_ready(state)
        box = [state]

        def one_round() -> float:
            t0 = time.perf_counter()
            box[0], metrics = sim.run_block(box[0], 1)
            jax.block_until_ready((box[0], metrics))
            return time.perf_counter() - t0

        return sim, compile_s, one_round

    sides = {}
    for key, w in (("float", float_w), ("qat", qfl)):
        sim, compile_s, fn = make(w)
        sides[key] = {"compile_s": compile_s, "run": fn, "times": [], "chunk_size": sim.chunk_size,
                      "num_devices": sim.num_devices}
        print(f"[{key}] compiled in {compile_s:.1f} s (chunk {sim.chunk_size} x {sim.num_devices} devices)",
              flush=True)

    block_ratios = []
    for b in range(args.blocks):
        order = ("float", "qat") if b % 2 == 0 else ("qat", "float")
        med = {}
        for key in order:
            ts = [sides[key]["run"]() for _ in range(args.rounds_per_block)]
            sides[key]["times"].extend(ts)
            med[key] = statistics.median(ts)
        block_ratios.append(med["qat"] / med["float"])
    load_end = os.getloadavg()

    t_float = statistics.median(sides["float"]["times"])
    t_qat = statistics.median(sides["qat"]["times"])
    result = {
        "workload": "qfl (mlp + policy 'full' + qsgd:127) vs the same with policy 'none'",
        "label": args.label,
        "float_round_s": t_float,
        "qat_round_s": t_qat,
        "ratio": t_qat / t_float,
        "ratio_paired": statistics.median(block_ratios),
        "block_ratios": block_ratios,
        "float_times_s": sides["float"]["times"],
        "qat_times_s": sides["qat"]["times"],
        "float_compile_s": sides["float"]["compile_s"],
        "qat_compile_s": sides["qat"]["compile_s"],
        "chunk_size": sides["qat"]["chunk_size"],
        "num_devices": sides["qat"]["num_devices"],
        "blocks": args.blocks,
        "rounds_per_block": args.rounds_per_block,
        "loadavg_start": list(load_start),
        "loadavg_end": list(load_end),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "jax": jax.__version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    la = lambda v: ", ".join(f"{x:.2f}" for x in v)  # noqa: E731
    earlier = [json.loads(pathlib.Path(path).read_text()) for path in args.compare]
    result["compared_with"] = earlier

    def row(r):
        return (f"| {r['label'] or '-'} | {r['float_round_s'] * 1e3:.2f} | {r['qat_round_s'] * 1e3:.2f} | "
                f"{r['ratio']:.3f} | {r['ratio_paired']:.3f} | {r['blocks']} x {r['rounds_per_block']} | "
                f"{la(r['loadavg_start'])} / {la(r['loadavg_end'])} |")

    md = "\n".join([
        "# QAT overhead on the `qfl` workload",
        "",
        "`python benchmarks/qat_overhead.py`: the `qfl` bench round (int8 QAT, policy `full`, qsgd:127 uplink) "
        "against the same round with policy `none`, one process per row, interleaved blocks "
        f"(float then QAT, QAT then float, ...), chunk {result['chunk_size']} x "
        f"{result['num_devices']} devices, medians. Shared {os.cpu_count()}-core CPU with other jobs running "
        "(absolute times are noisy; the ratio is the measurement); load average (1, 5, 15 min) at start / end.",
        "",
        "| code | float round (ms) | QAT round (ms) | QAT / float | median of block ratios | blocks x rounds | load average |",
        "|---|---|---|---|---|---|---|",
        *[row(r) for r in earlier],
        row(result),
        "",
    ])
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    (out / f"{args.name}.md").write_text(md)
    print(md)
    print(f"wrote {out / (args.name + '.json')} and {out / (args.name + '.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
