"""The ``jaxqfl`` command.

    jaxqfl run [flags]      simulate federated training and write metrics
    jaxqfl bench [flags]    speed benchmarks against the roofline and a per-client loop
    jaxqfl quantize RUN_DIR post-training quantization of a run's final model (integer export)

Flags are parsed and checked before any data is built or any program compiled,
so a bad value is refused with a message at once.
"""
from __future__ import annotations

import argparse
import os
import sys

from jaxqfl.cli import quantize_command, run_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxqfl", description="Quantized federated learning, simulated on accelerators with JAX."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run_command.add_arguments(sub.add_parser("run", help="simulate federated training", description=run_command.__doc__,
                                             formatter_class=argparse.RawDescriptionHelpFormatter))
    quantize_command.add_arguments(sub.add_parser("quantize", help="post-training quantization of a run's model",
                                                  description=quantize_command.__doc__,
                                                  formatter_class=argparse.RawDescriptionHelpFormatter))
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


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        _force_cpu_devices(args.devices)  # before validate(), which may import JAX to parse codec specs
        run_command.validate(parser, args)
        return run_command.main(args)
    if args.command == "quantize":
        quantize_command.validate(parser, args)
        _force_cpu_devices(None)
        return quantize_command.main(args)
    if args.command == "bench":
        from jaxqfl.bench import cli as bench_cli

        _force_cpu_devices(getattr(args, "devices", None))
        bench_cli.validate(parser, args)
        return bench_cli.main(args)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
