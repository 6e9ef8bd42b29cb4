"""jaxqfl plot: test accuracy and loss of one or more runs, against rounds and cumulative uplink bits.

    jaxqfl plot runs/a runs/b --out fig.png

Reads each RUN folder's metrics.jsonl and config.toml (or summary.json) and draws
a 2 x 2 figure: test accuracy (top) and test loss (bottom), against the round
(left) and against the cumulative uplink bits of all clients (right, log scale),
one line per run, labelled by the settings in which the runs differ (or by the
folder name). Needs matplotlib: ``pip install "jaxqfl[plot]"``.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

#: Settings that make the best labels, in order, when runs differ in them.
LABEL_KEYS = ("uplink", "downlink", "quant", "server_opt", "client_lr", "server_lr", "model", "partition",
              "cohort_size", "num_clients", "local_steps", "local_epochs", "batch_size", "seed", "dataset")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (each with metrics.jsonl)")
    p.add_argument("--out", required=True, help="image file to write (.png, .pdf, .svg)")
    p.add_argument("--title", default=None)
    p.add_argument("--dpi", type=int, default=100)


def _load(run: str) -> tuple[list[dict], dict]:
    path = pathlib.Path(run)
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise ValueError(f"{run!r} has no metrics.jsonl: is it a jaxqfl run folder?")
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    config = {}
    if (path / "config.toml").is_file():
        from jaxqfl.cli.config_file import read_toml

        config = read_toml(str(path / "config.toml"))
    elif (path / "summary.json").is_file():
        config = json.loads((path / "summary.json").read_text()).get("config", {})
    return records, config


def labels(configs: list[dict], names: list[str]) -> list[str]:
    """Per run, ``key=value`` for the settings (LABEL_KEYS first) in which the runs differ; else the folder name."""
    keys = sorted({k for c in configs for k in c}, key=lambda k: (LABEL_KEYS.index(k) if k in LABEL_KEYS else 99, k))
    differ = [k for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1]
    if not differ or len(configs) == 1:
        return names
    return [", ".join(f"{k.replace('_', '-')}={c.get(k)}" for k in differ[:3]) for c in configs]


def main(args: argparse.Namespace) -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('jaxqfl plot: error: needs matplotlib; install it with: pip install "jaxqfl[plot]"', file=sys.stderr)
        return 2
    try:
        loaded = [_load(r) for r in args.runs]
    except ValueError as e:
        print(f"jaxqfl plot: error: {e}", file=sys.stderr)
        return 2
    names = [pathlib.Path(r).name for r in args.runs]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), squeeze=False)
    for (records, _), label in zip(loaded, labels([c for _, c in loaded], names)):
        rounds = [r["round"] for r in records]
        bits = [r.get("uplink_bits_total") for r in records]
        for row, metric in enumerate(("test_accuracy", "test_loss")):
            ys = [r.get(metric) for r in records]
            ys = [float("nan") if y is None else y for y in ys]  # null (a diverged value) leaves a gap
            axes[row][0].plot(rounds, ys, marker=".", label=label)
            if all(b is not None and b > 0 for b in bits):
                axes[row][1].plot(bits, ys, marker=".", label=label)
    for row, name in enumerate(("test accuracy", "test loss")):
        axes[row][0].set_ylabel(name)
        axes[row][1].set_xscale("log")
    axes[1][0].set_xlabel("round")
    axes[1][1].set_xlabel("cumulative uplink bits (all clients)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=args.dpi)
    print(f"jaxqfl plot: wrote {out}")
    return 0
