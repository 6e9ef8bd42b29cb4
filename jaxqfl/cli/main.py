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
from jaxqfl.cli import bench_command, data_command, experiment_flags, plot_command, quantize_command
from jaxqfl.experiment import process_clock, runner


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxqfl", description="Quantized federated learning, simulated on accelerators with JAX."
    )
    parser.add_argument("--version", action="version", version=f"jaxqfl {jaxqfl.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="simulate federated training", description=runner.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    experiment_flags.add_arguments(run_parser)
    parser.run_parser = run_parser
    plot_command.add_arguments(sub.add_parser("plot", help="plot runs' accuracy and loss",
                                              description=plot_command.__doc__,
                                              formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.quantize_parser = sub.add_parser("quantize", help="post-training quantization of a run's model",
                                            description=quantize_command.__doc__,
                                            formatter_class=argparse.RawDescriptionHelpFormatter)
    quantize_command.add_arguments(parser.quantize_parser)
    data_parser = sub.add_parser("data", help="prepare datasets on disk (pack)", description=data_command.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    data_command.add_arguments(data_parser)
    parser.data_parser = data_parser
    parser.bench_parser = sub.add_parser("bench", help="speed benchmarks", description=bench_command.__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_command.add_arguments(parser.bench_parser)
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
    from jaxqfl.cli import interrupts
    from jaxqfl.experiment import outputs

    from jaxqfl.experiment.collections_pause import fewer_collections

    stop = interrupts.StopRequest().install()  # before JAX starts: a signal from now on ends at a safe point
    try:
        with fewer_collections():
            return _run_with(parser, args, argv, stop, origin)
    finally:
        stop.uninstall()
        outputs.release_locks()


def _run_with(parser, args, argv, stop, origin) -> int:
    """Parsed flags (merged over ``--config`` or the resumed run's config) -> ``Experiment`` -> the library's run
    path (``jaxqfl.experiment.run``), the parser refusing with the usage; the parsed flags are not changed."""
    from jaxqfl.cli import experiment_flags, run_setup
    from jaxqfl.experiment import pipeline
    from jaxqfl.experiment import run_folder, runner, toml_io
    from jaxqfl.value_kinds import ExperimentError

    run_argv = argv[argv.index("run") + 1:] if "run" in argv else argv
    if args.resume is not None:  # reading the checkpoint starts JAX: split the host as the run did, first
        _force_cpu_devices(args.devices or run_folder.saved_devices(args.resume))
    try:
        run_setup.prepare(parser.run_parser, args, run_argv)
        settings = experiment_flags.settings_of_args(args)
    except ExperimentError as e:
        parser.run_parser.error(str(e))
    _force_cpu_devices(settings.devices)  # before resolve(), which may import JAX to parse codec specs
    pipeline.start_data(settings)
    pipeline.resolve(settings, _NamingFileValues(parser.run_parser, getattr(args, "_from_config", None)))
    if settings.print_config:
        print(toml_io.to_toml(run_folder.config_of(settings)), end="")
        return 0
    if settings.quant == "list":  # the presets' costs for this model: reads the data, trains nothing, writes nothing
        return runner.list_quant_presets(settings)
    pipeline.check_memory(settings, parser.run_parser)
    out = pipeline.open_out(settings, parser.run_parser)
    settings._startup_origin = origin  # not a setting: config_of leaves "_" names out
    try:
        return runner.main(settings, stop=stop, out=out)
    except ExperimentError as e:  # refused once the data is read (e.g. a model that does not fit it)
        print(f"jaxqfl run: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


class _NamingFileValues:
    """The run parser as refuser, its message naming the settings it mentions that a config file gave."""

    def __init__(self, parser, from_config):
        self.parser, self.from_config = parser, from_config

    def error(self, message: str):
        from jaxqfl.cli.config_file import name_file_values

        self.parser.error(name_file_values(message, self.from_config))


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
        quantize_command.validate(parser.quantize_parser, args)  # refusals: the subcommand's usage
        return quantize_command.main(args)
    if args.command == "data":
        data_command.validate(parser.data_parser, args)
        return data_command.main(args)
    if args.command == "bench":
        _force_cpu_devices(getattr(args, "devices", None))
        bench_command.validate(parser.bench_parser, args)
        return bench_command.main(args)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
