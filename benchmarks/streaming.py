"""A million host-resident clients, 1,000 per round streamed to the devices (jaxqfl.bench.streaming_bench).

    python benchmarks/streaming.py [--clients 1000000] [--cohort 1000] [--rounds 10] [--devices N]

Writes benchmarks/results/streaming.json and streaming.md.
"""
import argparse
import json
import os
import pathlib

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--clients", type=int, default=1_000_000)
parser.add_argument("--cohort", type=int, default=1000)
parser.add_argument("--rounds", type=int, default=10)
parser.add_argument("--devices", type=int, default=os.cpu_count())
parser.add_argument("--chunk-size", type=int, default=None)
parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
args = parser.parse_args()
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={args.devices}"

from jaxqfl.bench import machine  # noqa: E402  (after XLA_FLAGS)
from jaxqfl.bench.streaming_bench import bench_streaming, markdown  # noqa: E402

result = bench_streaming(args.clients, args.cohort, args.rounds, chunk_size=args.chunk_size, num_devices=args.devices)
result["machine"] = machine.describe()
out = pathlib.Path(args.out)
out.mkdir(parents=True, exist_ok=True)
(out / "streaming.json").write_text(json.dumps(result, indent=2) + "\n")
(out / "streaming.md").write_text(markdown(result) + "\n")
print(markdown(result))
