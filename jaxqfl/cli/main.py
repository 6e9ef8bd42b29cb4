"""The ``jaxqfl`` command.

    jaxqfl run [flags]      simulate federated training and write metrics
    jaxqfl run --resume OUT continue a stopped run from its latest checkpoint
    jaxqfl plot RUN [RUN ...] --out fig.png   accuracy and loss against rounds and uplink bits
    jaxqfl bench [flags]    speed benchmarks against the roofline and a per-client loop
    jaxqfl quantize RUN_DIR post-training quantization of a run's final model (integer export)
    jaxqfl data pack SRC OUT  an npz file or LEAF folder as a packed population, read by cohort from disk
    jaxqfl --version

Flags are parsed and checked before any data is built or any program compiled,
so a bad value is refused with a message at once.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jaxqfl
from jaxqfl.cli import data_command, experiment_flags, plot_command, process_clock, quantize_command, run_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxqfl", description="Quantized federated learning, simulated on accelerators with JAX."
    )
    parser.add_argument("--version", action="version", version=f"jaxqfl {jaxqfl.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="simulate federated training", description=run_command.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    experiment_flags.add_arguments(run_parser)
    parser.run_parser = run_parser
    plot_command.add_arguments(sub.add_parser("plot", help="plot runs' accuracy and loss",
                                              description=plot_command.__doc__,
                                              formatter_class=argparse.RawDescriptionHelpFormatter))
    quantize_command.add_arguments(sub.add_parser("quantize", help="post-training quantization of a run's model",
                                                  description=quantize_command.__doc__,
                                                  formatter_class=argparse.RawDescriptionHelpFormatter))
    data_parser = sub.add_parser("data", help="prepare datasets on disk (pack)", description=data_command.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    data_command.add_arguments(data_parser)
    parser.data_parser = data_parser
    try:
        from jaxqfl.bench import cli as bench_cli
    except ImportError:
        bench_cli = None
    if bench_cli is not None:
        bench_cli.add_arguments(sub.add_parser("bench", help="speed benchmarks", description=bench_cli.__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def _force_cpu_devices(n: int | None) -> None:
    """On a CPU, split the host into ``n`` XLA devices (default: one per core), before JAX starts.

    One device per core lets the cohort's shards run in parallel (measured in
    ``benchmarks/RESULTS.md``); the flag only concerns the host platform, so it is
    harmless on GPU and TPU machines.
    """
    if "jax" in sys.modules:
        return
    if n is None:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    flag = f"--xla_force_host_platform_device_count={n}"
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()


def _run(parser, args, argv: list[str], origin: tuple[float, str]) -> int:
    """``jaxqfl run``: every check that needs no data or device first, then the run.

    ``origin``: ``(epoch seconds, what)`` that the summary's ``startup_seconds`` count from (``process_clock``).
    """
    from jaxqfl.cli import interrupts, outputs

    stop = interrupts.StopRequest().install()  # before JAX starts: a signal from now on ends at a safe point
    try:
        return _run_with(parser, args, argv, stop, origin)
    finally:
        stop.uninstall()
        outputs.release_locks()


def _run_with(parser, args, argv, stop, origin) -> int:
    from jaxqfl.cli import config_file, memory_guard, outputs, run_setup

    run_argv = argv[argv.index("run") + 1:] if "run" in argv else argv
    if args.resume is not None:  # reading the checkpoint starts JAX: split the host as the run did, first
        _force_cpu_devices(args.devices or run_setup.saved_devices(args.resume))
    try:
        run_setup.prepare(parser.run_parser, args, run_argv)
    except config_file.ConfigError as e:
        parser.run_parser.error(str(e))
    _force_cpu_devices(args.devices)  # before validate(), which may import JAX to parse codec specs
    from jaxqfl.engine import compile_cache

    compile_cache.enable()  # before the first compilation: later runs of the same shapes load their programs
    run_command.validate(parser.run_parser, args)
    try:
        run_setup.check_resume(args)
    except config_file.ConfigError as e:
        parser.run_parser.error(str(e))
    if args.print_config:
        print(config_file.to_toml(config_file.config_of(args)), end="")
        return 0
    if args.quant == "list":  # the presets' costs for this model: reads the data, trains nothing, writes nothing
        return run_command.list_quant_presets(args)
    cpu = memory_guard.likely_cpu()
    if cpu and args.devices is not None and args.devices > memory_guard.cpu_cores():
        print(f"jaxqfl run: warning: --devices {args.devices} exceeds this host's {memory_guard.cpu_cores()} CPU "
              f"cores; the devices will share them (and each holds a copy of the population)", file=sys.stderr)
    fp = memory_guard.footprint_from_flags(args)  # generated data: its client sizes, drawn before any row
    if fp is not None:
        stream = getattr(args, "stream", False)
        devices = args.devices or (memory_guard.cpu_cores() if cpu else 1)
        est = memory_guard.estimate(args, num_devices=devices, examples=fp.train_rows, test_examples=fp.test_rows,
                                    feature_dim=fp.feature_dim, num_classes=max(fp.num_classes, fp.target_width),
                                    num_clients=fp.num_clients, home=args.client_state, cpu=cpu,
                                    feature_shape=fp.feature_shape,
                                    stream_block=fp.cohort_block_bytes(args.cohort_size) if stream else None)
        try:
            memory_guard.check(est, num_devices=devices, cpu=cpu,
                               stream_available=hasattr(args, "stream") and memory_guard.num_configs(args) == 1,
                               stream=stream, generated=args.dataset != "mnist")
        except memory_guard.MemoryRefusal as e:
            parser.run_parser.error(str(e))
    if args.resume is not None:
        out = outputs.pathlib.Path(args.resume)
        try:
            outputs.lock_folder(out, "--resume")
        except outputs.OutputError as e:
            parser.run_parser.error(str(e))
    else:
        try:
            out = outputs.prepare_out(args.out, dataset=args.dataset, seed=args.seed, overwrite=args.overwrite)
        except outputs.OutputError as e:
            parser.run_parser.error(str(e))
        args.out = str(out)
    args._startup_origin = origin  # not a flag: config_of leaves "_" names out
    return run_command.main(args, stop=stop, out=out)


def main(argv: list[str] | None = None) -> int:
    """The command; ``argv=None``: this process's arguments (the process is the command: startup counts from its
    start), else a call from Python (startup counts from this call)."""
    origin = process_clock.process_start() if argv is None else (time.time(), process_clock.MAIN_CALL)
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(parser, args, argv, origin)
    if args.command == "plot":
        return plot_command.main(args)
    if args.command == "quantize":
        _force_cpu_devices(None)  # before validate(), which imports flax (and so JAX) to read the params
        quantize_command.validate(parser, args)
        return quantize_command.main(args)
    if args.command == "data":
        data_command.validate(parser.data_parser, args)
        return data_command.main(args)
    if args.command == "bench":
        from jaxqfl.bench import cli as bench_cli

        _force_cpu_devices(getattr(args, "devices", None))
        bench_cli.validate(parser, args)
        return bench_cli.main(args)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
