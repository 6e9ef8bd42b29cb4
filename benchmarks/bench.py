"""The speed benchmarks (same as ``jaxqfl bench``): python benchmarks/bench.py [jaxqfl bench flags]."""
import sys

from jaxqfl.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
