"""jaxqfl bench: time jaxqfl rounds against the roofline floor and a per-client Python loop.

For each workload (mlp, tiny, cnn, big, qfl by default; resnet, lstm, transformer when
named; see jaxqfl.bench.workloads) it
measures, in one process: this machine's matmul FLOP/s and copy GB/s, the
round's analytic FLOPs and bytes, the compile time and median round time of
jaxqfl, and the median round time of a FedJAX-style loop over the cohort that
calls a jitted per-client lax.scan. It writes OUT/NAME.json and OUT/NAME.md
(the markdown table) and prints the table. OUT is a fresh runs/bench-<time>
unless --out is given (pass --out benchmarks/results to update the stored results).

On a CPU the host is split into one XLA device per core (--devices, default:
all cores), so the cohort's shares train in parallel; the loop runs on one
device with XLA's intra-op threads, as it would on its own.

Examples:
    jaxqfl bench                                   # mlp, tiny, cnn, big, qfl
    jaxqfl bench --workloads resnet,lstm,transformer --rounds 2   # the model zoo
    jaxqfl bench --workloads mlp,tiny --out /tmp/b
    jaxqfl bench --workloads mlp --chunk-size 4 --devices 1
    jaxqfl bench --workloads mlp,tiny,qfl --chunk-sweep   # every candidate chunk vs the tuner's pick
"""
from __future__ import annotations

import argparse
import pathlib

from jaxqfl.cli.argtypes import chunk_size as _chunk_size
from jaxqfl.cli.argtypes import on_off as _on_off
from jaxqfl.cli.argtypes import positive_int as _positive_int
from jaxqfl.cli.argtypes import seed as _seed

DEFAULT_OUT_PREFIX = pathlib.Path("runs") / "bench-"  # + time: a fresh folder, never inside the source tree
KNOWN = ("mlp", "tiny", "cnn", "big", "qfl", "resnet", "lstm", "transformer")
#: What a bare ``jaxqfl bench`` runs (the zoo workloads resnet, lstm, transformer run when named).
DEFAULT = ("mlp", "tiny", "cnn", "big", "qfl")


def _workloads(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in KNOWN]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"--workloads takes a comma-separated subset of {','.join(KNOWN)}, got {text!r}"
        )
    return list(dict.fromkeys(names))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workloads", type=_workloads, default=list(DEFAULT),
                   help=f"comma-separated subset of {','.join(KNOWN)} (default: {','.join(DEFAULT)})")
    p.add_argument("--out", default=None,
                   help="folder for NAME.json and NAME.md (default: a fresh runs/bench-<time>)")
    p.add_argument("--name", default="bench", help="file name stem of the results (default: %(default)s)")
    p.add_argument("--chunk-size", type=_chunk_size, default=None,
                   help="clients per vmap: 'auto' (default: tuned by measurement, see --autotune) or an integer")
    p.add_argument("--autotune", type=_on_off, default=None, metavar="{on,off}",
                   help="with --chunk-size auto, measure candidate chunk sizes (default: on); off: the cost model")
    p.add_argument("--chunk-sweep", action="store_true",
                   help="time every candidate chunk size of each workload and the tuner's pick (NAME-sweep.json/md)")
    p.add_argument("--devices", type=_positive_int, default=None,
                   help="devices in the mesh; on a CPU also the number of XLA host devices (default: CPU cores)")
    p.add_argument("--rounds", type=_positive_int, default=5,
                   help="timed rounds of each (jaxqfl and loop, interleaved); medians reported (default: 5)")
    p.add_argument("--no-loop", action="store_true", help="skip the per-client loop reference")
    p.add_argument("--mnist-path", default=None, help="mnist.npz for the cnn workload (default: shared/data/mnist)")
    p.add_argument("--fortunes-path", default=None,
                   help="folder of *.txt files for the lstm and transformer workloads (default: shared/data/fortunes)")
    p.add_argument("--seed", type=_seed, default=0)


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad flag combinations before any work."""
    if args.chunk_sweep and args.chunk_size is not None:
        parser.error(f"--chunk-sweep times the tuner's candidates; it takes no --chunk-size (got {args.chunk_size})")
    if args.autotune is not None and args.chunk_size is not None:
        parser.error(f"--autotune chooses the chunk size of --chunk-size auto; --chunk-size {args.chunk_size} leaves "
                     f"none to choose: drop one of them")
    args.autotune = True if args.autotune is None else args.autotune
    name = args.name
    if not name or name != pathlib.Path(name).name or name.startswith("."):
        parser.error(f"--name {name!r}: a file name stem (no folder, not empty, not hidden); the results are "
                     f"OUT/NAME.json and OUT/NAME.md")
    if args.out is None:
        import time

        args.out = f"{DEFAULT_OUT_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}"
    from jaxqfl.experiment.outputs import OutputError, check_output_file

    if pathlib.Path(args.out).exists() and not pathlib.Path(args.out).is_dir():
        parser.error(f"--out {args.out!r} is a file; the results go into a folder")
    stems = [name] + ([f"{name}-sweep"] if args.chunk_sweep else [])
    for path in (pathlib.Path(args.out) / f"{stem}.{ext}" for stem in stems for ext in ("json", "md")):
        if path.exists():
            parser.error(f"--out {args.out!r} already holds {path.name}; choose another --out or --name (results "
                         f"are never overwritten)")
        try:
            check_output_file(str(path), "--out")
        except OutputError as e:
            parser.error(str(e))
    if "cnn" in args.workloads:
        from jaxqfl.bench.workloads import DEFAULT_MNIST

        path = pathlib.Path(args.mnist_path) if args.mnist_path else DEFAULT_MNIST
        if not path.is_file():
            parser.error(f"the cnn workload needs mnist.npz: {str(path)!r} is not a file (pass --mnist-path)")
        args.mnist_path = str(path)
    if {"lstm", "transformer"} & set(args.workloads):
        from jaxqfl.bench.workloads import DEFAULT_FORTUNES

        path = pathlib.Path(args.fortunes_path) if args.fortunes_path else DEFAULT_FORTUNES
        if not path.is_dir():
            parser.error(f"the lstm and transformer workloads read text: {str(path)!r} is not a folder "
                         "(pass --fortunes-path)")
        args.fortunes_path = str(path)
    # The CPU device split (--devices, default one per core) is set by jaxqfl.cli.main before this runs.


def main(args: argparse.Namespace) -> int:
    import gc

    import jax

    from jaxqfl.bench import machine, report, runner, workloads

    info = machine.describe()
    if info["backend"] == "cpu" and args.devices and info["num_devices"] < args.devices:
        print(f"warning: JAX started with {info['num_devices']} CPU device(s), not --devices {args.devices} "
              "(XLA_FLAGS was set too late or overridden)", flush=True)
    print(f"machine: {info['cpu']}, {info['cpu_cores']} cores; {info['backend']} x {info['num_devices']}", flush=True)
    first_peaks = machine.measure_peaks()
    print(f"peaks: {first_peaks.flops / 1e9:.0f} GFLOP/s matmul, {first_peaks.bandwidth / 1e9:.1f} GB/s copy",
          flush=True)
    num_devices = args.devices if args.devices is None or args.devices <= len(jax.devices()) else None
    results, notes = [], []
    for name in args.workloads:
        print(f"[{name}] building", flush=True)
        w = workloads.WORKLOADS[name](mnist_path=args.mnist_path, fortunes_path=getattr(args, "fortunes_path", None))
        if args.chunk_sweep:
            from jaxqfl.bench import sweep

            r = sweep.sweep_workload(w, rounds=args.rounds, num_devices=num_devices, run_loop=not args.no_loop,
                                     seed=args.seed)
            results.append(r)
            print(sweep.markdown_table([r]).splitlines()[-1], flush=True)
            del w
            gc.collect()
            continue
        r = runner.bench_workload(
            w, first_peaks, rounds=args.rounds, chunk_size=args.chunk_size,
            num_devices=num_devices, run_loop=not args.no_loop, seed=args.seed, autotune=args.autotune,
        )
        results.append(r)
        print(report.markdown_table([r]).splitlines()[-1], flush=True)
        del w
        gc.collect()
    # The floors use the best peaks seen (start or end of the run): a peak measured while
    # other processes share the cores is too low and would flatter the time / floor ratios.
    if args.chunk_sweep:
        from jaxqfl.bench import sweep

        payload = {"machine": info, "peaks": first_peaks._asdict(),
                   "args": {k: v for k, v in vars(args).items() if k != "func"}, "results": results}
        json_path, md_path = sweep.write(args.out, f"{args.name}-sweep", payload)
        print()
        print(sweep.markdown_table(results))
        print(f"\nwrote {json_path} and {md_path}")
        return 0
    last_peaks = machine.measure_peaks()
    peaks = machine.Peaks(max(first_peaks.flops, last_peaks.flops), max(first_peaks.bandwidth, last_peaks.bandwidth))
    for r in results:
        runner.set_floor(r, peaks)
    payload = {
        "machine": info,
        "peaks": peaks._asdict(),
        "peaks_measured": {"start": first_peaks._asdict(), "end": last_peaks._asdict()},
        "args": {k: v for k, v in vars(args).items() if k != "func"},
        "results": results,
        "notes": notes,
    }
    json_path, md_path = report.write(args.out, args.name, payload)
    print()
    print(report.markdown_table(results))
    print(f"\nwrote {json_path} and {md_path}")
    return 0
