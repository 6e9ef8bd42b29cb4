"""jaxqfl plot: test metrics of one or more runs, against rounds and cumulative uplink bits.

    jaxqfl plot runs/a runs/b --out fig.png

Reads each RUN folder's metrics.jsonl and config.toml (or summary.json) and draws
one row per test metric of the runs' task: accuracy and loss (classification),
MSE and R^2 (regression), inertia, plus ARI and NMI where the records carry them
(clustering); each against the round (left) and against the cumulative uplink
bits of all clients (middle, log scale) and, for runs with ``--speeds``, against
simulated time (right: the virtual clock), one line per run, labelled by the
settings in which the runs differ (or by the folder name). ``--out`` must end
in an image extension matplotlib writes (.png, .pdf, .svg, ...) in a writable
place: checked before anything is read or drawn. Needs matplotlib:
``pip install "jaxqfl[plot]"``.

A run whose records carry per-client metrics (``test_client_<metric>_mean``,
``_p10``, ``_p90``: the clients' own test rows, ``jaxqfl.engine.client_metrics``)
gets one more row: the mean over clients as a line, with a band from the 10th to
the 90th percentile of the clients (the models the clients use: their own for
Ditto / FedRep / FedPer or ``--personal-eval``, else the global one).

A sweep folder (``jaxqfl run --seeds ...``: it holds ``sweep.json``) draws one
curve per combination of its swept hyper-parameters: the mean over its seeds,
with a band of plus and minus one sample standard deviation over the seeds
(``ddof=1``, as ``sweep.json``'s table; no band for a single seed). Against
bits, the x value is the mean of the seeds' cumulative uplink bits.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

#: Settings that make the best labels, in order, when runs differ in them.
LABEL_KEYS = ("uplink", "downlink", "quant", "server_opt", "client_lr", "server_lr", "model", "partition",
              "cohort_size", "num_clients", "local_steps", "local_epochs", "batch_size", "seed", "dataset")


def _dpi(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = None
    if v is None or not 10 <= v <= 1200:
        raise argparse.ArgumentTypeError(f"expected an integer from 10 to 1200, got {text!r}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run folders (each with metrics.jsonl) or sweep folders (with sweep.json: the mean over "
                        "seeds with a band)")
    p.add_argument("--out", required=True, help="image file to write (.png, .pdf, .svg)")
    p.add_argument("--title", default=None)
    p.add_argument("--dpi", type=_dpi, default=100, help="dots per inch, 10 to 1200 (default: %(default)s)")


def _records(metrics: pathlib.Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl``: JSON objects with a ``round``; ``ValueError`` naming the file and
    line of anything else, and for a file with none (nothing to draw)."""
    records = []
    for n, line in enumerate(metrics.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{str(metrics)!r} line {n} is not JSON ({e})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("round"), int):
            raise ValueError(f"{str(metrics)!r} line {n} is not a jaxqfl record (a JSON object with a round)")
        records.append(rec)
    if not records:
        raise ValueError(f"{str(metrics)!r} holds no records: the run evaluated nothing yet")
    return records


def _load(run: str) -> tuple[list[dict], dict]:
    path = pathlib.Path(run)
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise ValueError(f"{run!r} has no metrics.jsonl: is it a jaxqfl run folder?")
    records = _records(metrics)
    config = {}
    if (path / "config.toml").is_file():
        from jaxqfl.cli.config_file import read_toml

        config = read_toml(str(path / "config.toml"))
    elif (path / "summary.json").is_file():
        config = json.loads((path / "summary.json").read_text()).get("config", {})
    return records, config


#: Per task, the (metrics.jsonl key, axis label) rows drawn, in order, where the records carry them.
TASK_PANELS = {
    "classification": (("test_accuracy", "test accuracy"), ("test_loss", "test loss")),
    "regression": (("test_mse", "test MSE"), ("test_r2", "test R^2")),
    "clustering": (("test_inertia", "test inertia"), ("test_ari", "test ARI"), ("test_nmi", "test NMI")),
}
#: Per task, the per-client metric drawn as a mean line with a 10th-90th percentile band, where carried.
CLIENT_PANELS = {"classification": ("test_client_accuracy", "per-client test accuracy\n(mean, p10-p90 band)"),
                 "regression": ("test_client_mse", "per-client test MSE\n(mean, p10-p90 band)")}
PLOTTED = tuple(dict.fromkeys(k for rows in TASK_PANELS.values() for k, _ in rows))  # every metric a panel shows
BAND = "mean over seeds ± one sample standard deviation"


def sweep_curves(folder: str) -> list[dict]:
    """Per combination of a sweep's swept hyper-parameters, the mean and std over its seeds of each metric.

    Reads ``folder/sweep.json`` and every config's ``metrics.jsonl``. Returns one dict per
    combination: ``hyperparameters`` ({name: value}), ``seeds``, ``label``, ``round`` [R],
    ``uplink_bits_total`` [R] (mean over seeds), ``mean`` and ``std`` ({metric: [R]} for
    each metric of ``PLOTTED`` the records carry; sample std, ``ddof=1``, 0 for one seed). A null value (a diverged round) in
    any seed makes that round's mean NaN: a gap, never a mean over the surviving seeds.
    """
    path = pathlib.Path(folder)
    try:
        report = json.loads((path / "sweep.json").read_text())
        swept, configs = list(report["swept"]), list(report["configs"])
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{folder!r}: cannot read its sweep.json ({e})") from None
    groups: dict[tuple, list[dict]] = {}
    for c in configs:
        groups.setdefault(tuple(c[k] for k in swept), []).append(c)
    curves = []
    for values, members in groups.items():
        runs = [_load(str(path / m["folder"]))[0] for m in members]
        n = min(len(r) for r in runs)
        rounds = [rec["round"] for rec in runs[0][:n]]
        if any([rec["round"] for rec in r[:n]] != rounds for r in runs):
            raise ValueError(f"{folder!r}: the configs of {dict(zip(swept, values))} evaluated different rounds")

        def column(name):  # [seeds, R]
            return np.array([[np.nan if rec.get(name) is None else float(rec[name]) for rec in r[:n]] for r in runs])

        stats = {m: column(m) for m in PLOTTED if any(m in rec for r in runs for rec in r)}
        hp = dict(zip(swept, values))
        seeds = [m["seed"] for m in members]
        text = ", ".join(f"{k.replace('_', '-')}=" + (f"{v:g}" if isinstance(v, (int, float)) else str(v))
                         for k, v in hp.items())  # a codec spec or a preset name is text
        count = f"{len(seeds)} seed{'s' * (len(seeds) > 1)}"
        curves.append({
            "hyperparameters": hp, "seeds": seeds, "round": rounds,
            "label": f"{text} ({count})" if text else f"mean of {count}",
            "uplink_bits_total": column("uplink_bits_total").mean(axis=0).tolist(),
            "mean": {m: v.mean(axis=0).tolist() for m, v in stats.items()},
            "std": {m: (v.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(n)).tolist() for m, v in stats.items()},
        })
    return curves


def labels(configs: list[dict], names: list[str]) -> list[str]:
    """Per run, ``key=value`` for the settings (LABEL_KEYS first) in which the runs differ; else the folder name."""
    keys = sorted({k for c in configs for k in c}, key=lambda k: (LABEL_KEYS.index(k) if k in LABEL_KEYS else 99, k))
    differ = [k for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1]
    if not differ or len(configs) == 1:
        return names
    return [", ".join(f"{k.replace('_', '-')}={c.get(k)}" for k in differ[:3]) for c in configs]


def task_of(metrics: set) -> str:
    """The task whose panels a run's metric keys call for (classification when none matches)."""
    for task, rows in TASK_PANELS.items():
        if rows[0][0] in metrics:
            return task
    return "classification"


def panels(metric_sets: list[set]) -> list[tuple[str, str]]:
    """The figure's rows: per run (its set of metric keys), its task's metrics that it carries, in order."""
    rows = []
    for keys in metric_sets:
        task = task_of(keys)
        for key, label in TASK_PANELS[task]:
            if key in keys and (key, label) not in rows:
                rows.append((key, label))
    for keys in metric_sets:
        prefix, label = CLIENT_PANELS.get(task_of(keys), (None, None))
        if prefix is not None and f"{prefix}_mean" in keys and (prefix, label) not in rows:
            rows.append((prefix, label))
    return rows or list(TASK_PANELS["classification"])


def image_extensions() -> list[str]:
    """The file extensions matplotlib's savefig writes."""
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


def check_out(out: str) -> None:
    """Refuse an ``--out`` that is not an image file matplotlib writes, or cannot be written (``ValueError``)."""
    from jaxqfl.experiment.outputs import OutputError, check_output_file

    allowed = image_extensions()
    ext = pathlib.Path(out).suffix.lower().lstrip(".")
    if ext not in allowed:
        what = f": .{ext} is not an image format matplotlib writes" if ext else " has no image extension"
        raise ValueError(f"--out {out!r}{what}; use one of {', '.join('.' + e for e in allowed)}")
    try:
        check_output_file(out)
    except OutputError as e:
        raise ValueError(str(e)) from None


def figure(loaded: list, names: list[str], sweeps: list, *, multiple: bool, title: str | None = None):
    """The matplotlib figure of ``loaded`` runs ([(records, config)]) and ``sweeps`` ([(folder, curves)])."""
    import matplotlib.pyplot as plt

    rows = panels([{k for rec in records for k in rec} for records, _ in loaded]
                  + [set(c["mean"]) for _, curves in sweeps for c in curves])
    timed = any("sim_time" in r for records, _ in loaded for r in records)  # a third column: simulated time
    fig, axes = plt.subplots(len(rows), 3 if timed else 2, figsize=(15 if timed else 10, 3.5 * len(rows)),
                             squeeze=False)
    for folder, curves in sweeps:
        prefix = f"{pathlib.Path(folder).name}: " if multiple else ""
        for c in curves:
            bits = np.asarray(c["uplink_bits_total"])
            for row, (metric, _) in enumerate(rows):
                if metric not in c["mean"]:
                    continue
                mean, std = np.asarray(c["mean"][metric]), np.asarray(c["std"][metric])
                for col, xs in enumerate((c["round"], bits)):
                    if col == 1 and not np.all(bits > 0):
                        continue
                    line, = axes[row][col].plot(xs, mean, marker=".", label=prefix + c["label"])
                    axes[row][col].fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    if sweeps:
        axes[0][0].set_title(f"bands: {BAND}", fontsize="small")
    for (records, _), label in zip(loaded, labels([c for _, c in loaded], names)):
        rounds = [r["round"] for r in records]
        bits = [r.get("uplink_bits_total") for r in records]
        times = [r.get("sim_time") for r in records]
        for row, (metric, _) in enumerate(rows):
            band = metric.startswith("test_client_")  # a per-client row: mean line, p10-p90 band
            column = (lambda k: [float("nan") if r.get(k) is None else r[k] for r in records])
            if not any((f"{metric}_mean" if band else metric) in r for r in records):
                continue
            ys = column(f"{metric}_mean" if band else metric)  # null (a diverged value) leaves a gap
            for col, xs in enumerate((rounds, bits, times)[:3 if timed else 2]):
                if col == 1 and not all(b is not None and b > 0 for b in bits):
                    continue
                if col == 2 and any(t is None for t in times):  # a run without --speeds
                    continue
                line, = axes[row][col].plot(xs, ys, marker=".", label=label)
                if band and any(f"{metric}_p10" in r for r in records):
                    axes[row][col].fill_between(xs, column(f"{metric}_p10"), column(f"{metric}_p90"),
                                                color=line.get_color(), alpha=0.2)
    for row, (_, name) in enumerate(rows):
        axes[row][0].set_ylabel(name)
        axes[row][1].set_xscale("log")
    axes[-1][0].set_xlabel("round")
    axes[-1][1].set_xlabel("cumulative uplink bits (all clients)")
    if timed:
        axes[-1][2].set_xlabel("simulated time (s, virtual clock)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def main(args: argparse.Namespace) -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        print('jaxqfl plot: error: needs matplotlib; install it with: pip install "jaxqfl[plot]"', file=sys.stderr)
        return 2
    is_sweep = [(pathlib.Path(r) / "sweep.json").is_file() for r in args.runs]
    try:
        check_out(args.out)
        loaded = [_load(r) for r, sweep in zip(args.runs, is_sweep) if not sweep]
        sweeps = [(r, sweep_curves(r)) for r, sweep in zip(args.runs, is_sweep) if sweep]
    except ValueError as e:
        print(f"jaxqfl plot: error: {e}", file=sys.stderr)
        return 2
    names = [pathlib.Path(r).name for r, sweep in zip(args.runs, is_sweep) if not sweep]
    fig = figure(loaded, names, sweeps, multiple=len(args.runs) > 1, title=args.title)
    out = pathlib.Path(args.out)
    try:  # checked above; a disk that fills meanwhile is still named, not a traceback
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=args.dpi)
    except OSError as e:
        print(f"jaxqfl plot: error: cannot write --out {args.out!r}: {e.strerror or e}", file=sys.stderr)
        return 1
    finally:
        matplotlib.pyplot.close(fig)
    print(f"jaxqfl plot: wrote {out}")
    return 0
