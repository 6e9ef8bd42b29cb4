"""``jaxqfl run --seeds 0-7 --client-lr 0.01,0.1``: the Cartesian product of configs as ONE program.

Every config of the sweep (each seed x each combination of list-valued flags)
runs in one compiled program (``engine.build_sweep``: the round vmapped over a
config axis). The population and its partition are built once, from the data seed
(``--data-seed``, default the first seed), and shared by every config; each
config has its own run key, so config ``s`` equals ``jaxqfl run --seed s
--data-seed <data seed>`` with the config's values (to float tolerance: the
vmap batches the same arithmetic). A signal (Ctrl-C, SIGTERM) stops the sweep
at the end of its block: every config's files hold the rounds run, with
``"interrupted": true``, a checkpoint of every config's state is written, and the exit
status is 130 / 143 (``--resume OUT`` continues bit for bit). A config whose loss or
parameters become non-finite is marked ``"diverged"`` and the exit status is 3.

Writes, under OUT:

    <config>/metrics.jsonl, <config>/summary.json   one folder per config, named by its values
    <config>/final_params.msgpack                    the config's final model
    <config>/config.toml                             the config as a single run: ``jaxqfl run --config
                                                     OUT/<config>/config.toml`` repeats it (its seed, values
                                                     and the sweep's data seed)
    config.toml                                      the sweep (its lists): ``--config`` repeats it
    checkpoints/<round>/                             every config's state stacked on a leading axis (the
                                                     single run's orbax checkpoints, ``engine.checkpoint``):
                                                     every ``--checkpoint-every`` rounds (default: every
                                                     evaluation), at the end and when stopped
    sweep.json                                       every config's final metrics, and per value of
                                                     the swept hyper-parameters the mean and standard
                                                     deviation over seeds
    sweep.md                                         that table

With DP, each config's rows, summary and ``sweep.json`` entry carry the epsilon of its own
noise multiplier (``--dp-noise 0.5,1``: one accountant per config).
"""
from __future__ import annotations

from jaxqfl.experiment.resolved import Settings
from jaxqfl.experiment.data_rules import fail

import json
import math
import pathlib
import sys
import time

import numpy as np

from jaxqfl import sinks
from jaxqfl.experiment import checkpoint_policy
from jaxqfl.experiment.progress_bar import progress_bar
from jaxqfl.experiment.process_clock import startup_fields
from jaxqfl.sweep_plan import NAMED

FINAL_KEYS = ("test_accuracy", "test_loss", "test_mse", "test_rmse", "test_r2", "test_perplexity",
              "test_bits_per_char", "train_loss")


def value_text(v) -> str:
    """A swept value as text that reads back to the same number: ``repr`` of a float (shortest round trip)."""
    return repr(float(v)) if isinstance(v, float) else str(v)


def config_name(config: dict) -> str:
    """A folder name, unique and reversible: ``client_lr=0.1,seed=3`` (``parse_config_name`` reads it back).

    Floats are written by ``repr`` (the shortest text that parses to the same float), so two
    configs share a folder only if they are equal (the flags refuse repeated values).
    """
    return ",".join(f"{k}={value_text(config[k])}" for k in sorted(config))


def parse_config_name(name: str) -> dict:
    """The config of a folder named by ``config_name`` (integers stay integers, other values are floats)."""
    config = {}
    for part in name.split(","):
        k, _, v = part.partition("=")
        if k in NAMED:  # a codec spec or a preset name, as given
            config[k] = v
        else:
            config[k] = int(v) if v.lstrip("-").isdigit() else float(v)
    return config


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def summarize(configs: list[dict], finals: list[dict], diverged: list[bool] | None = None,
              uplink_bits: list[int] | None = None) -> list[dict]:
    """Per combination of swept hyper-parameters: mean and std over its seeds of each final metric.

    ``row["diverged_seeds"]`` lists the seeds whose config diverged (their metrics are not finite,
    so the row has no mean). ``row["uplink_bits_mean"]``: the mean over its seeds of the configs'
    total uplink bits (the x of an accuracy-against-bits front).
    """
    diverged = diverged or [False] * len(configs)
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(tuple(sorted((k, v) for k, v in c.items() if k != "seed")), []).append(i)
    rows = []
    for key, members in groups.items():
        row = {**dict(key), "seeds": [configs[i]["seed"] for i in members],
               "diverged_seeds": [configs[i]["seed"] for i in members if diverged[i]]}
        if uplink_bits is not None:
            row["uplink_bits_mean"] = float(np.mean([uplink_bits[i] for i in members]))
        for name in FINAL_KEYS:
            if row["diverged_seeds"]:  # a diverged config's metrics are not its result: no mean
                break
            values = [finals[i].get(name) for i in members]
            values = [v for v in values if v is not None and math.isfinite(v)]
            if len(values) == len(members) and values:
                row[f"{name}_mean"] = float(np.mean(values))
                # the sample std (ddof=1): undefined for one seed, null there (0.0 read as "no spread")
                row[f"{name}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
        rows.append(row)
    return rows


def markdown(rows: list[dict], names: list[str]) -> str:
    metrics = [m for m in FINAL_KEYS if any(f"{m}_mean" in r for r in rows)]
    bits = any("uplink_bits_mean" in r for r in rows)
    head = "| " + " | ".join(names + ["seeds"] + (["uplink bits"] if bits else []) + metrics) + " |"
    lines = [head, "|" + " --- |" * (len(names) + 1 + bits + len(metrics))]
    for r in rows:
        cells = [value_text(r[n]) for n in names] + [str(len(r["seeds"]))]
        cells += [f"{r['uplink_bits_mean']:.4g}"] if bits else []
        missing = f"diverged ({len(r['diverged_seeds'])} of {len(r['seeds'])})" if r.get("diverged_seeds") else "n/a"
        cells += [(f"{r[m + '_mean']:.4f}" + ("" if r[m + "_std"] is None else f" ± {r[m + '_std']:.4f}"))
                  if f"{m}_mean" in r else missing for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


EXIT_DIVERGED = 3  # as a single run: some config diverged (every config's files are still written)


def run_sweep_cli(args, population, task, model, schedule, uplink, *, make_algorithm, make_aggregator=None,
                  make_model=None, make_codec_aggregator=None, label_transform=None, t_start: float,
                  stop=None) -> int:
    """Run the sweep of the flags; ``make_algorithm(hp)`` / ``make_aggregator(hp)`` build one config's pieces.

    Lists of codecs or presets (``--uplink``, ``--downlink``, ``--quant``) become the engine's variants
    (``jaxqfl.sweep_plan``): ``make_model(preset)`` and ``make_codec_aggregator(uplink codec, model, hp)``
    build a variant's pieces.

    Every config's ``metrics.jsonl`` and ``summary.json`` carry the privacy fields of its own
    noise multiplier (``privacy_rules.record_fields`` / ``summary_fields``: epsilon per config).
    """
    import jax

    from jaxqfl import engine
    from jaxqfl.experiment import run_folder, toml_io
    from jaxqfl.experiment import outputs, personal_rules, privacy_rules, systems_rules
    from jaxqfl.engine import checkpoint

    seeds = list(args.seeds) if args.seeds is not None else [args.seed]
    configs = engine.grid(seeds, **args.sweep_values)
    engine_configs, variants = configs, None
    if any(k in args.sweep_values for k in NAMED):  # codecs and presets: static variants, traced codec values
        from jaxqfl import sweep_plan

        configs = sweep_plan.by_variant(configs, uplink=args.uplink, downlink=args.downlink, quant=args.quant)
        engine_configs, variants = sweep_plan.plan(configs, uplink=args.uplink, downlink=args.downlink,
                                                   quant=args.quant, make_model=make_model,
                                                   make_aggregator=make_codec_aggregator)
    resumed = getattr(args, "_resume_meta", None)
    layout = (resumed or {}).get("layout") or {}  # a resumed sweep keeps its layout: bit for bit
    sim = engine.build_sweep(
        population, model, make_algorithm, schedule, configs=engine_configs, cohort_size=args.cohort_size, task=task,
        num_devices=args.devices or layout.get("num_devices"), chunk_size=args.chunk_size or layout.get("chunk_size"),
        uplink=uplink, downlink=None if args.downlink == "none" else args.downlink_codec,
        make_aggregator=make_aggregator, label_transform=label_transform, variants=variants,
    )
    try:  # each config's clients' speeds, from its seed (--speeds): read before the folder is made
        client_systems = systems_rules.build_per_config(args, population.num_clients, [c["seed"] for c in configs])
    except (OSError, ValueError) as e:
        fail(str(e))  # jaxqfl.run raises it; the command prints it and exits 2
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_config = run_folder.config_of(args)
    (out / "config.toml").write_text(toml_io.to_toml(run_config))  # --config OUT/config.toml repeats the sweep
    ckpt_dir, block = run_folder.checkpoint_dir(out), run_folder.block_rounds(args)
    states, totals, records = None, None, [[] for _ in configs]
    if resumed is not None:
        from jaxqfl.experiment.runner import _restore_readable

        states, meta = _restore_readable(ckpt_dir, sim.init(), args._resume_step)
        records, block = [list(r) for r in meta["records"]], int(meta["block_rounds"])
        totals = engine.SweepTotals(meta["uplink_bits_total"], meta["downlink_bits_total"],
                                    float(meta["train_seconds"]), meta["diverged"], meta.get("sim_time"))
    start_round = 0 if states is None else int(np.max(np.asarray(jax.device_get(states.round))))
    names = [config_name(c) for c in configs]
    files = []
    for n, recs in zip(names, records):
        (out / n).mkdir(parents=True, exist_ok=True)
        files.append(sinks.open_sinks(out / n, args.log))
        for r in recs:
            files[-1].write(r)
    setup_seconds = time.perf_counter() - t_start
    swept = [f"{k}: {len(v)} values" for k, v in args.sweep_values.items()] + [f"{len(seeds)} seeds"]
    print(f"jaxqfl run: a sweep of {len(configs)} configs in one program ({', '.join(swept)})"
          + (f", resumed at round {start_round}" if start_round else ""), flush=True)

    def on_eval(s, rec):
        try:
            rec.update(privacy_rules.record_fields(args, population.num_clients, rec,
                                                   noise=configs[s].get("dp_noise")))
        except privacy_rules.RoundFailed as e:
            raise privacy_rules.RoundFailed(f"config {names[s]}: {e}") from None
        rec = {k: _finite(v) for k, v in rec.items()}
        records[s].append(rec)
        files[s].write(rec)

    fingerprint, write_error, decided = run_folder.fingerprint(run_config), [], [None]

    def stopping() -> bool:
        return (stop is not None and stop.requested) or bool(write_error)

    def should_stop() -> bool:  # after a block: what after_block decided (and saved for)
        d, decided[0] = decided[0], None
        return stopping() if d is None else d

    gate = checkpoint_policy.Gate(args.checkpoint_every, args.eval_every)

    def after_block(states, t):
        r, now = int(np.max(np.asarray(jax.device_get(states.round)))), stopping()
        if (r == args.rounds or now or gate.due(r)) and not write_error:
            meta = outputs.finite_or_none({
                "config": run_config, "fingerprint": fingerprint, "records": records, "block_rounds": block,
                "layout": {"num_devices": sim.num_devices, "chunk_size": sim.chunk_size},
                "uplink_bits_total": t.uplink_bits, "downlink_bits_total": t.downlink_bits,
                "train_seconds": t.seconds, "diverged": t.diverged, "sim_time": t.sim_time})
            gate.write(lambda: checkpoint.save(ckpt_dir, states, meta), r, ckpt_dir, write_error)
        decided[0] = now or bool(write_error)

    try:
        if start_round >= args.rounds:
            t = totals
            results = [engine.RunResult(jax.tree.map(lambda a, s=s: a[s], states), [], 0.0, t.seconds, 0,
                                        t.uplink_bits[s], t.downlink_bits[s], t.diverged[s],
                                        sim_time=t.sim_time[s] if t.sim_time else None) for s in range(len(configs))]
        else:
            with progress_bar(args.rounds, not args.no_progress, start_round) as bar:  # moved by every piece
                results = engine.run_sweep(sim, rounds=args.rounds - start_round, eval_every=args.eval_every,
                                           on_eval=on_eval, should_stop=should_stop, states=states,
                                           block_rounds=block, totals=totals, after_block=after_block,
                                           systems=client_systems, progress_seconds=bar.progress_seconds,
                                           on_progress=bar.on_progress)
    except privacy_rules.RoundFailed as e:
        print(f"jaxqfl run: error: {e}", file=sys.stderr)
        return e.exit_status
    finally:
        for f in files:
            f.close()
    done_round = start_round + results[0].rounds
    for r, recs in zip(results, records):  # the records of the rounds before a resume count too
        r.records = recs
    costs = {}  # BOPs and model bytes per preset (jaxqfl.models.cost), as a single run's summary
    finals, clocks = [], []
    for config, name, result in zip(configs, names, results):
        preset = config.get("quant", args.quant)
        if preset not in costs:
            from jaxqfl.experiment.runner import _cost_fields

            costs[preset] = _cost_fields(Settings(**{**vars(args), "quant": preset}), population)
        final = {k: _finite(v) for k, v in result.final.items()}
        finals.append(final)
        clocks.append(systems_rules.summary_fields(args, result, result.records))  # {} without --speeds
        summary = {
            # this config as a single run (as its config.toml): not the sweep's list of seeds, which made every
            # config's summary O(configs) long (a 4,000-seed sweep wrote 16 million list items)
            "dataset": args.dataset, "model": args.model, "config": {**{k: v for k, v in vars(args).items()
                                                                        if k not in ("uplink_codec", "downlink_codec",
                                                                                     "sweep_values", "seeds")
                                                                        and not k.startswith("_")},
                                                                     **config, "seeds": None},
            "sweep_config": config,
            "final_accuracy": final.get("test_accuracy"), "final_loss": final.get("test_loss"),
            **({"final_perplexity": final.get("test_perplexity"), "final_bits_per_char": final.get("test_bits_per_char")}
               if "test_bits_per_char" in final else {}),
            **personal_rules.final_client_fields(final),
            "rounds": done_round, "rounds_requested": args.rounds,
            "resumed_from_round": start_round or None,
            "completed": done_round >= args.rounds and result.diverged_round is None,
            "interrupted": bool(result.stopped), "signal": stop.name if result.stopped else None,
            "diverged": result.diverged_round is not None, "diverged_round": result.diverged_round,
            "data_seed": args.data_seed, "num_clients": population.num_clients, "cohort_size": sim.cohort_size,
            "num_devices": sim.num_devices, "platform": jax.devices()[0].platform, "chunk_size": sim.chunk_size,
            "compile_seconds": result.compile_seconds, "seconds_per_round": result.seconds_per_round,
            "uplink_bits_total": result.uplink_bits_total, "downlink_bits_total": result.downlink_bits_total,
            "algorithm": args.algorithm, "aggregator": args.aggregator, "attack": args.attack,
            **privacy_rules.summary_fields(args, population.num_clients, noise=config.get("dp_noise")),
            **costs[preset],
            **clocks[-1],
        }
        summary["config"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in summary["config"].items()}
        (out / name / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        checkpoint.save_params(out / name / checkpoint.FINAL_PARAMS, result.state.params)
        single = Settings(**{**vars(args), **config, "seeds": None, "sweep_values": {}})  # this config as a single run
        (out / name / "config.toml").write_text(toml_io.to_toml(run_folder.config_of(single)))
    diverged = [r.diverged_round is not None for r in results]
    rows = summarize(configs, finals, diverged, [r.uplink_bits_total for r in results])
    swept = sorted(args.sweep_values)
    report = {
        "configs": [{**c, "folder": n, **{f"final_{k[5:] if k.startswith('test_') else k}": f.get(k)
                                         for k in FINAL_KEYS if k in f},
                     **({"dp_epsilon": f["dp_epsilon"]} if "dp_epsilon" in f else {}),
                     "uplink_bits_total": r.uplink_bits_total, "downlink_bits_total": r.downlink_bits_total,
                     **clock,
                     "diverged": r.diverged_round is not None, "diverged_round": r.diverged_round}
                    for c, n, f, r, clock in zip(configs, names, finals, results, clocks)],
        "by_hyperparameters": rows,
        "swept": swept,
        "seeds": seeds,
        "num_configs": len(configs),
        "data_seed": args.data_seed,
        "rounds": done_round,
        "rounds_requested": args.rounds,
        "resumed_from_round": start_round or None,
        "checkpoint_error": write_error[0] if write_error else None,
        "interrupted": bool(results[0].stopped),
        "num_diverged": sum(diverged),
        "setup_seconds": setup_seconds,
        "compile_seconds": results[0].compile_seconds,
        **startup_fields(args._startup_origin, results[0].first_round_started),
        **results[0].round_seconds_quantiles(),
        "seconds_per_round": results[0].seconds_per_round,
        "config_rounds_per_second": len(configs) / max(results[0].seconds_per_round, 1e-12),
    }
    (out / "sweep.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    table = markdown(rows, swept)
    stopped = results[0].stopped
    title = f"{done_round} of {args.rounds} rounds (stopped by {stop.name})" if stopped else f"{args.rounds} rounds"
    (out / "sweep.md").write_text(f"# Sweep: {len(configs)} configs, {title}\n\n{table}\n")
    print(table)
    print(f"  compile {report['compile_seconds']:.2f} s; {report['seconds_per_round'] * 1e3:.1f} ms per round of all "
          f"{len(configs)} configs; written {out / 'sweep.json'}, {out / 'sweep.md'} and one folder per config")
    if write_error:
        from jaxqfl.experiment.runner import EXIT_WRITE_FAILED

        print(f"jaxqfl run: error: could not write the {write_error[0]}; the last complete checkpoint is kept: "
              f"free some space and continue with: jaxqfl run --resume {out}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    if any(diverged):
        bad = [n for n, d in zip(names, diverged) if d]
        print(f"jaxqfl run: {len(bad)} of {len(configs)} configs diverged (a non-finite train loss or parameter): "
              f"{', '.join(bad)}", file=sys.stderr)
        return EXIT_DIVERGED
    if stopped:
        print(f"jaxqfl run: sweep stopped by {stop.name} after round {done_round} of {args.rounds}; checkpoint "
              f"written, every config's files hold the rounds run. Continue with: jaxqfl run --resume {out}",
              file=sys.stderr)
        return stop.exit_status
    return 0
