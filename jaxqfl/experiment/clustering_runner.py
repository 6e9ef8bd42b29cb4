"""``jaxqfl run --task clustering``: federated k-means from the command line.

Round 0 is the seeding round (each sampled client uploads ``--seed-points`` of its
rows; k-means++ on the server; ``jaxqfl.clustering``), then ``--rounds`` rounds of
``--kmeans lloyd`` (one full-batch step a round) or ``--kmeans minibatch``
(Sculley's per-centroid rate over ``--local-steps`` steps of ``--batch-size``
rows). The uplink/downlink codecs, ``--integer-aggregation``, the devices and the
client-state home apply to every round, the seeding round included.

Writes ``metrics.jsonl`` (test loss = mean 1/2 squared distance to the nearest
centroid, test inertia, per evaluation) and ``summary.json`` with
``final_inertia`` (float64, test rows), ``final_ari`` and ``final_nmi`` (against
the test labels; null when the data has none).
"""
from __future__ import annotations

from jaxqfl.experiment.resolved import Refuser, Settings

from jaxqfl import choices

import contextlib
import json
import pathlib
import sys
import time

from jaxqfl import sinks
from jaxqfl.experiment import checkpoint_policy, inert_rules
from jaxqfl.experiment.process_clock import startup_fields
from jaxqfl.data.build import DEFAULT_TASK

KMEANS = choices.KMEANS


def is_clustering(args: Settings) -> bool:
    return (args.task or DEFAULT_TASK.get(args.dataset)) == "clustering"


#: The experiment's sections none of whose settings federated k-means reads (``jaxqfl.Experiment``'s sections).
_UNUSED_SECTIONS = frozenset({"algorithm", "model", "lora", "evaluation", "tiers", "systems", "asynchronous",
                              "aggregator", "robust", "privacy"})
#: Training settings it does not read either (its weights are 1; the cohort is drawn uniformly and fixed).
_UNUSED_TRAINING = frozenset({"server_opt", "server_lr", "weighting", "max_cohort"})
#: Refused elsewhere with their own words (sampling_rules, selection_rules, systems_rules, the check above).
_REFUSED_ELSEWHERE = frozenset({"model", "client_lr", "sampling", "availability", "selection", "speeds",
                                "target_accuracy"})


def _not_for_kmeans() -> dict:
    """``{flat name: flag}`` of the settings federated k-means does not read (the sets above)."""
    from jaxqfl.experiment.experiment import settings

    return {info.dest: info.flag for section, _, info in settings()
            if (section in _UNUSED_SECTIONS or (section == "training" and info.dest in _UNUSED_TRAINING))
            and info.dest not in _REFUSED_ELSEWHERE}


def check(refuser: Refuser, args: Settings) -> None:
    """Refuse flags that do not apply to k-means (called before the dataset's defaults fill the unset flags)."""
    if not is_clustering(args):
        for flag in ("clusters", "seed_points"):
            if getattr(args, flag) is not None:
                refuser.error(f"--{flag.replace('_', '-')} applies to --task clustering")
        return
    if args.model is not None or args.quant != "none":
        refuser.error("--task clustering learns K centroids (federated k-means); --model and --quant do not apply")
    if args.client_lr is not None:
        refuser.error("--client-lr does not apply to k-means: Lloyd divides sums by counts, mini-batch k-means "
                       "steps by 1/count per centroid (Sculley 2010)")
    flags = _not_for_kmeans()
    ignored = inert_rules.given(args, flags)  # none on resume: a resumed run keeps the config it ran with
    if ignored:
        refuser.error(f"{flags[ignored[0]]} does not apply to --task clustering: federated k-means takes the data, "
                       f"cohort, round and execution settings, --uplink, --downlink and --integer-aggregation; its "
                       f"server averages the clients' sums and counts (no algorithm, server optimizer, aggregator, "
                       f"attack, privacy, LoRA, tiers, systems clock or personal evaluation)")
    if args.kmeans == "lloyd":
        given = [f for f in ("local_steps", "local_epochs", "batch_size") if getattr(args, f) is not None]
        if given:
            refuser.error(f"--kmeans lloyd takes one full-batch step per client and round; "
                           f"--{given[0].replace('_', '-')} applies to --kmeans minibatch")
        args.local_steps, args.batch_size = 1, 0
    elif args.local_epochs is not None:
        refuser.error("--kmeans minibatch needs a fixed batch per step: give --local-steps, not --local-epochs")
    args.client_lr = 1.0  # unused: k-means has its own step sizes
    # Values the validators fill in that k-means refuses as flags: not in its config.toml (--config repeats it).
    args._derived = {"model", "hidden", "client_lr"} | (
        {"local_steps", "batch_size", "local_epochs"} if args.kmeans == "lloyd" else set())


def main(args: Settings, population, t_start: float, data_seconds: float, stop=None) -> int:
    """Seed, run the k-means rounds, write the run's files; a signal (``stop``) ends it at the next block.

    Writes OUT/metrics.jsonl, OUT/summary.json, OUT/config.toml (``--config`` repeats the run) and
    OUT/final_params.msgpack (the centroids, ``{"centroids": [K, d]}``) and OUT/checkpoints/<round>/
    (the single run's orbax checkpoints: every ``--checkpoint-every`` rounds after the seeding round,
    at the end and when stopped; ``--resume OUT`` continues bit for bit without seeding again; the
    checkpoint's record keeps the seeding's sample size, bits and inertia). Stopped by Ctrl-C or
    SIGTERM, the run stops between pieces of the seeding (``summary.json`` only: nothing to resume)
    or at the end of a block, writes its files with ``"interrupted": true`` and exits with 130 / 143.
    """
    import jax
    import numpy as np

    from jaxqfl import aggregate, clustering, engine, models, tasks
    from jaxqfl.algorithms import kmeans
    from jaxqfl.experiment import run_folder, toml_io
    from jaxqfl.experiment.data_rules import fail
    from jaxqfl.experiment.outputs import finite_or_none as _finite_or_null
    from jaxqfl.experiment.progress_bar import progress_bar
    from jaxqfl.engine import checkpoint

    stop_requested = (lambda: stop.requested) if stop is not None else (lambda: False)

    K = args.clusters if args.clusters is not None else population.num_classes
    if K < 1:
        fail(f"{population.name} has no labels to count clusters from; give --clusters K")
    if args.cohort_size > population.num_clients:
        fail(f"--cohort-size {args.cohort_size} exceeds the {population.num_clients} clients of {population.name}")
    rows = int(np.sum(population.counts, dtype=np.int64))
    if K > rows:
        fail(f"--clusters {K} exceeds the {rows} training rows of {population.name}: k-means needs at most one "
             f"cluster per row; choose --clusters at most {rows}")
    from jaxqfl.experiment.memory_guard import _gib, host_available_bytes

    need, have = clustering.seeding_bytes(K, args.cohort_size, args.seed_points), host_available_bytes()
    if need > have:
        points = f" with --seed-points {args.seed_points:,}" if args.seed_points else ""  # the factor a user set
        fail(f"--clusters {K}{points}: the k-means++ seeding (10 restarts on {args.cohort_size} clients' sampled rows) "
             f"needs at least {_gib(need)} ({need:,} bytes) of memory, {_gib(have)} is available; use fewer "
             f"--clusters, a smaller --cohort-size, or fewer --seed-points")
    model = models.centroids(K)
    from jaxqfl.experiment.runner import _restore_readable

    uplink = None if args.uplink == "none" else args.uplink_codec
    common = dict(
        aggregator=aggregate.integer_mean(uplink) if args.integer_aggregation else None,
        num_devices=args.devices, chunk_size=args.chunk_size, uplink=uplink,
        downlink=None if args.downlink == "none" else args.downlink_codec, client_state=args.client_state,
    )
    build = engine.build_streaming if args.stream else engine.build
    resumed = getattr(args, "_resume_meta", None)
    if resumed is not None:  # the layout the checkpoint was written with: bit for bit
        layout = resumed.get("layout") or {}
        common.update(num_devices=args.devices or layout.get("num_devices"),
                      chunk_size=args.chunk_size or layout.get("chunk_size"))
    if args.kmeans == "lloyd":
        algorithm, schedule = kmeans.lloyd(), engine.LocalSchedule(local_steps=1, batch_size=None)
    else:
        batch = None if args.batch_size == 0 else args.batch_size
        algorithm, schedule = kmeans.minibatch_kmeans(), engine.LocalSchedule(local_steps=args.local_steps,
                                                                               batch_size=batch)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_config = run_folder.config_of(args)
    (out / "config.toml").write_text(toml_io.to_toml(run_config))
    ckpt_dir, block = run_folder.checkpoint_dir(out), run_folder.block_rounds(args)
    records, totals = [], engine.RunTotals()
    if resumed is None:
        try:
            seeds = clustering.seed(population, model, K, cohort_size=args.cohort_size, run_seed=args.seed,
                                    points_per_client=args.seed_points, build=build, should_stop=stop_requested,
                                    **common)
        except ValueError as err:
            fail(f"k-means++ seeding: {err}")
    sim = build(population, model, algorithm, schedule, cohort_size=args.cohort_size, task=tasks.clustering(),
                **common)
    if resumed is None and seeds is None:  # stopped while seeding: no centroids yet, nothing to resume from
        (out / "summary.json").write_text(json.dumps({
            "dataset": args.dataset, "task": "clustering", "clusters": K, "rounds": 0, "rounds_requested": args.rounds,
            "completed": False, "interrupted": True, "signal": stop.name, "stopped_in": "seeding"}, indent=2) + "\n")
        print(f"jaxqfl run: stopped by {stop.name} during the k-means++ seeding; no round was run (no checkpoint): "
              f"start the run again with --overwrite", file=sys.stderr)
        return stop.exit_status
    if resumed is None:
        state = clustering.start_state(sim, args.seed, seeds.centroids)
        seeding = {"sample_size": seeds.sample_size, "uplink_bits": seeds.uplink_bits,
                   "downlink_bits": seeds.downlink_bits,
                   "inertia": clustering.scores(population, seeds.centroids)["inertia"]}
    else:
        state, meta = _restore_readable(ckpt_dir, sim.init(args.seed), args._resume_step)
        records, seeding, block = list(meta["records"]), meta["seeding"], int(meta["block_rounds"])
        totals = engine.RunTotals(int(meta["uplink_bits_total"]), int(meta["downlink_bits_total"]),
                                  float(meta["train_seconds"]))
    done_before = int(jax.device_get(state.round)) - 1  # round 0 was the seeding round
    # the checkpoint resumed from is on disk already: a finished run resumed writes it again otherwise (exit 5)
    saved, write_error = ({int(jax.device_get(state.round))} if resumed is not None else set()), []

    def save_checkpoint(state, t):
        r = int(jax.device_get(state.round))
        if r in saved or write_error:
            return
        meta = _finite_or_null({
            "config": run_config, "fingerprint": run_folder.fingerprint(run_config), "records": all_records,
            "block_rounds": block, "seeding": seeding,
            "layout": {"num_devices": sim.num_devices, "chunk_size": sim.chunk_size},
            "uplink_bits_total": t.uplink_bits, "downlink_bits_total": t.downlink_bits, "train_seconds": t.seconds})
        if gate.write(lambda: checkpoint.save(ckpt_dir, state, meta), r, ckpt_dir, write_error):
            saved.add(r)

    gate = checkpoint_policy.Gate(args.checkpoint_every, args.eval_every)

    def after_block(state, rec, t):
        del rec
        r = int(jax.device_get(state.round)) - 1
        if r == args.rounds or gate.due(r):
            save_checkpoint(state, t)

    setup_seconds = time.perf_counter() - t_start
    all_records = list(records)
    sink = sinks.open_sinks(out, args.log)  # metrics.jsonl (+ TensorBoard, CSV), the restored records first
    with contextlib.closing(sink), progress_bar(args.rounds + 1, not args.no_progress, done_before + 1) as bar:
        for r in records:
            sink.write(r)

        def on_eval(rec):
            rec = _finite_or_null(rec)
            all_records.append(rec)
            sink.write(rec)
            bar.record(rec)

        if done_before >= args.rounds:
            result = engine.RunResult(state, [], 0.0, totals.seconds, 0, totals.uplink_bits, totals.downlink_bits)
        else:
            result = engine.run(sim, rounds=args.rounds - done_before, eval_every=args.eval_every, seed=args.seed,
                                state=state, on_eval=on_eval, block_rounds=block, totals=totals, first_round=1,
                                after_block=after_block, should_stop=lambda: stop_requested() or bool(write_error),
                                progress_seconds=bar.progress_seconds, on_progress=bar.on_progress)
    if result.diverged_round is None:  # a stopped run's last state (the finished one is saved already)
        save_checkpoint(result.state, engine.RunTotals(result.uplink_bits_total, result.downlink_bits_total,
                                                       result.train_seconds))
    result.records, result.rounds = all_records, done_before + result.rounds
    interrupted = stop_requested() and result.rounds < args.rounds
    final = result.final
    score = clustering.scores(population, jax.device_get(result.state.params["centroids"]))
    summary = {
        "dataset": args.dataset, "population": population.name, "task": "clustering", "stream": bool(args.stream),
        "kmeans": args.kmeans, "clusters": K, "uplink": args.uplink, "downlink": args.downlink,
        "final_inertia": score["inertia"], "final_ari": score["ari"], "final_nmi": score["nmi"],
        "final_loss": final.get("test_loss"), "final_train_loss": final.get("train_loss"),
        "seeding_sample_size": seeding["sample_size"], "seeding_inertia": seeding["inertia"],
        "rounds": result.rounds, "rounds_requested": args.rounds, "seeding_rounds": 1,
        "completed": result.rounds >= args.rounds, "interrupted": bool(interrupted),
        "resumed_from_round": done_before or None, "checkpoint_error": write_error[0] if write_error else None,
        "signal": stop.name if interrupted else None, "num_clients": population.num_clients,
        "num_examples": population.num_examples, "cohort_size": sim.cohort_size, "num_devices": sim.num_devices,
        "platform": jax.devices()[0].platform, "chunk_size": sim.chunk_size,
        "client_state_home": sim.client_state_home, "num_params": sim.num_params, "setup_seconds": setup_seconds,
        "data_seconds": data_seconds, "compile_seconds": result.compile_seconds,
        **startup_fields(args._startup_origin, result.first_round_started), **result.round_seconds_quantiles(),
        "seconds_per_round": result.seconds_per_round,
        "rounds_per_second": 1.0 / max(result.seconds_per_round, 1e-12),
        "uplink_bits_total": result.uplink_bits_total + seeding["uplink_bits"],
        "downlink_bits_total": result.downlink_bits_total + seeding["downlink_bits"],
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
                   if not k.endswith("_codec") and not k.startswith("_")},
    }
    summary = _finite_or_null(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    checkpoint.save_params(out / checkpoint.FINAL_PARAMS, result.state.params)
    if write_error:
        from jaxqfl.experiment.runner import EXIT_WRITE_FAILED

        print(f"jaxqfl run: error: could not write the {write_error[0]}; the last complete checkpoint is kept: "
              f"free some space and continue with: jaxqfl run --resume {out}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    if interrupted:
        print(f"jaxqfl run: stopped by {stop.name} after round {result.rounds} of {args.rounds}; checkpoint "
              f"written. Continue with: jaxqfl run --resume {out}", file=sys.stderr)
        return stop.exit_status
    _print_summary(summary, out)
    return 0


def _print_summary(s: dict, out: pathlib.Path) -> None:
    def num(v, fmt):
        return "n/a (no labels)" if v is None else format(v, fmt)

    lines = [
        "",
        f"jaxqfl run: {s['dataset']} / k-means ({s['kmeans']}), K = {s['clusters']}",
        f"  clients          {s['num_clients']:,} ({s['num_examples']:,} examples), {s['cohort_size']} per round",
        f"  devices          {s['num_devices']} x {s['platform']}, chunk {s['chunk_size']} clients per vmap",
        f"  rounds           1 seeding (k-means++ on {s['seeding_sample_size']} sampled rows) + {s['rounds']}",
        f"  test inertia     {num(s['final_inertia'], '.6g')} (k-means++ seeds: {num(s['seeding_inertia'], '.6g')})",
        f"  test ARI / NMI   {num(s['final_ari'], '.4f')} / {num(s['final_nmi'], '.4f')}",
        f"  compile          {s['compile_seconds']:.2f} s",
        f"  time per round   {s['seconds_per_round'] * 1e3:.1f} ms ({s['rounds_per_second']:.1f} rounds/s)",
        f"  uplink           {s['uplink']}; {s['uplink_bits_total'] / 8e6:,.3f} MB in all (seeding included)",
        f"  written          {out / 'metrics.jsonl'}, {out / 'summary.json'}, {out / 'config.toml'},",
        f"                   {out / 'final_params.msgpack'} (the centroids)",
    ]
    print("\n".join(lines), file=sys.stdout)
