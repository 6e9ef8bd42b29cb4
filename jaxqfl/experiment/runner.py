"""jaxqfl run: simulate federated training and write metrics.

With no flags: FedAvg on Synthetic(1,1) (Li et al. 2020), 1,000 clients, 100 per
round, multinomial logistic regression, 300 rounds of 20 local SGD steps (batch 10,
lr 0.01). For reference, centralized logistic regression on the pooled training
rows reaches about 0.57 test accuracy on this population (seed 0).

Writes OUT/metrics.jsonl (one JSON object per evaluated round), OUT/summary.json,
OUT/config.toml, OUT/final_params.msgpack and OUT/checkpoints/, and prints a
one-screen summary. JSON is strict: a non-finite number is written as null.

Exit status: 0 done; 2 a bad flag or config (also secure aggregation whose
--dropout and --secagg-threshold make a failed round more likely than not);
3 the run diverged (a non-finite loss or parameter); 4 a secure-aggregation
round failed (too few surviving share holders; the message names the round);
5 a checkpoint could not be written (e.g. a full disk: the run stops at once,
the last good checkpoint stays, the summary says ``"checkpoint_error"``);
130 / 143 stopped by SIGINT / SIGTERM (checkpoint written, continue with
--resume OUT).
"""
from __future__ import annotations

from jaxqfl.experiment.resolved import Refuser, Settings

from jaxqfl import choices

import contextlib
import math
import pathlib
import sys
import time

import numpy as np

from jaxqfl.value_kinds import MAX_SWEEP_CONFIGS

from jaxqfl.experiment import algorithm_rules, checkpoint_policy, process_clock
from jaxqfl import sinks
from jaxqfl.experiment import async_rules, personal_rules, systems_rules, tier_rules
from jaxqfl.experiment.outputs import finite_or_none, strict_dumps, write_json
from jaxqfl.experiment.progress_bar import progress_bar
from jaxqfl.experiment import privacy_rules
from jaxqfl.experiment import robust_rules
from jaxqfl.experiment import sampling_rules, selection_rules
from jaxqfl.registry import attacks as attack_registry
from jaxqfl.experiment import clustering_runner
from jaxqfl.experiment import inert_rules, lora_rules, model_rules
from jaxqfl.experiment.data_rules import (build_population, data_seed_of, fail, fill_packed_task, stream_origin,
                                          validate_data)
from jaxqfl.registry import datasets as dataset_registry
from jaxqfl.data.build import DEFAULT_TASK

MODELS = choices.MODELS
DEFAULT_HIDDEN = (200, 200)


def validate(refuser: Refuser, args: Settings) -> None:
    """Fill dataset-dependent defaults and refuse inconsistent flags, before JAX starts."""
    d = dataset_registry.BY_NAME[args.dataset].defaults  # the flags this dataset fills when left unset
    for flag in ("quant", "uplink", "downlink"):  # names are case-insensitive (README): one spelling from here on
        setattr(args, flag, getattr(args, flag).lower())
    if args.dataset == "packed":  # rows on disk are read by cohort: the streamed path (engine.build_streaming)
        args.stream = True
        fill_packed_task(refuser, args)  # before the model's default: a packed text population takes the LSTM
    _split_sweep(refuser, args)
    async_rules.validate(refuser, args)  # before the defaults: --cohort-size given is refused, C takes its place
    clustering_runner.check(refuser, args)  # k-means fixes its own local work: before the defaults
    if args.local_steps is not None and args.local_epochs is not None:
        refuser.error(f"give --local-steps or --local-epochs, not both (got {args.local_steps} and {args.local_epochs})")
    if args.local_steps is None and args.local_epochs is None:
        args.local_steps, args.local_epochs = d.local_steps, d.local_epochs
    if args.model is None and args.task == "next-token":  # LEAF text: the character LSTM, not leaf's MLP
        args.model = "lstm"
    for name in ("model", "num_clients", "cohort_size", "rounds", "client_lr", "batch_size", "eval_every"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(d, name))
    inert_rules.validate(refuser, args)  # data and architecture settings this dataset / model does not read
    algorithm_rules.validate(refuser, args)
    personal_rules.validate(refuser, args)
    if args.num_clients is not None and args.cohort_size > args.num_clients:
        flag = "--concurrency" if async_rules.on(args) else "--cohort-size"
        refuser.error(f"{flag} {args.cohort_size} exceeds --num-clients {args.num_clients}")
    validate_data(refuser, args)
    model_rules.validate(refuser, args, args.task or DEFAULT_TASK[args.dataset])
    lora_rules.validate(refuser, args)
    task = args.task or DEFAULT_TASK[args.dataset]  # None: inferred from the file's targets (checked once read)
    if task is not None and _label_flip_without_labels(args.attack, task):
        refuser.error(_label_flip_without_labels(args.attack, task))
    if args.model == "cnn" and args.dataset not in ("mnist", "npz", "leaf", "packed"):
        refuser.error("--model cnn is the MNIST CNN of McMahan et al. 2017; use it with --dataset mnist "
                       "(or npz / leaf images of 28 x 28 pixels)")
    if args.model == "mlp" and args.hidden is None:
        args.hidden = DEFAULT_HIDDEN
    elif args.model != "mlp" and args.hidden is not None and getattr(args, "_resume_meta", None) is None:
        refuser.error(f"--hidden sets the MLP's hidden sizes; it does nothing with --model {args.model}: drop it "
                       f"or use --model mlp")
    from jaxqfl.quant.policy import PRESETS

    for preset in args.sweep_values.get("quant", [args.quant]):
        if preset not in PRESETS and preset != "list":
            refuser.error(f"--quant {preset!r} is not a preset; choose one of {', '.join(PRESETS)} (or list: "
                           f"their BOPs and bytes for the chosen model)")
    if "quant" in args.sweep_values and getattr(args, "lora_rank", None):
        refuser.error(f"--lora-rank trains float adapters on a frozen base; drop the --quant list "
                       f"{','.join(args.sweep_values['quant'])}")
    _check_codecs(refuser, args)
    privacy_rules.validate(refuser, args)
    sampling_rules.validate(refuser, args)
    if args.aggregator != "mean" and args.integer_aggregation:
        refuser.error(f"--integer-aggregation is a mean; it does not combine with --aggregator {args.aggregator}")
    robust_rules.validate(refuser, args)
    tier_rules.validate(refuser, args)
    systems_rules.validate(refuser, args)
    selection_rules.validate(refuser, args)
    if getattr(args, "secure_aggregation", None) and args.aggregator != "mean":
        refuser.error(f"--aggregator {args.aggregator} does not combine with secure aggregation (the server only "
                       "learns the sum); use --aggregator mean")
    if args.dp and args.aggregator != "mean":
        privacy_rules.check_central_dp_rule(refuser, args)


def _check_codecs(refuser, args) -> None:
    """Build ``args.uplink_codec`` / ``downlink_codec`` (the first of a list); refuse a bad spec, the same codec
    twice in a list, and a list member that the aggregation cannot take."""
    from jaxqfl.compress import from_spec
    from jaxqfl.compress.families import families, traces_bucket

    built = {}
    for flag in ("uplink", "downlink"):
        specs = args.sweep_values.get(flag, [getattr(args, flag)])
        try:
            setattr(args, f"{flag}_codec", from_spec(specs[0]))
            built[flag] = families(specs)
        except ValueError as e:
            refuser.error(f"--{flag} {','.join(specs)!r}: {e}")
    specs = args.sweep_values.get("uplink", [args.uplink])
    if args.integer_aggregation:
        checked, flag = specs, "--integer-aggregation"
    else:  # privacy_rules.validate checks the first spec, after its own refusals
        checked, flag = (specs[1:] if getattr(args, "secure_aggregation", None) else []), "--secure-aggregation"
    if checked:
        for family in built["uplink"][1]:
            if traces_bucket(family):
                refuser.error(f"{flag} needs a static bucket size (the cohort shares one scale per bucket), but "
                               f"--uplink {','.join(family.specs)!r} differ in bucket= and would share one codec with "
                               "a traced bucket size; sweep one bucket size per run")
    for spec in checked:
        if spec == "none" or getattr(from_spec(spec), "integer_sum", None) is None:
            refuser.error(f"{flag} needs an --uplink codec whose codes can be summed as integers "
                           f"(uniform, qsgd, terngrad, without +ef or hadamard); got --uplink {spec!r}")


def _label_flip_without_labels(attack: str, task: str) -> str | None:
    """The refusal of an ``--attack`` that flips labels (``jaxqfl.registry.attacks``) for a task without class
    labels (None when it applies)."""
    entry = attack_registry.BY_NAME.get(attack)
    if entry is None or not entry.flips_labels or task not in ("regression", "clustering"):
        return None
    others = [e.name for e in attack_registry.ENTRIES if e.cli and e.build is not None and not e.flips_labels]
    return (f"--attack {attack} trains malicious clients on flipped class labels (y -> K - 1 - y); --task {task} "
            f"has no class labels to flip. Choose another attack: {', '.join(others)}")


def _architecture(args, population):
    """The model of ``--model`` (and ``--quant``) before ``--init-from`` / ``--lora-rank``: its shapes and forward."""
    from jaxqfl.saved_run import model_for

    if args.model in model_rules.ZOO_MODELS:
        return model_rules.make_model(args, population.num_classes, population.feature_shape, policy=args.quant)
    return model_for(args.model, population, hidden=args.hidden, policy=args.quant)[0]


def _model(args, population):
    """The run's model: the architecture started from ``--init-from``, or its LoRA model (``--lora-rank``)."""
    return lora_rules.adapted(args, _architecture(args, population), population)


def _cost_fields(args, population) -> dict:
    """``summary.json``'s ``bops`` and ``model_bytes`` (``jaxqfl.models.cost``) of the model under ``--quant``."""
    from jaxqfl.models.cost import model_cost

    if args.quant in (None, "none"):  # a float model: nothing quantized to cost (BOPs = 1,024 x MACs)
        return {}
    cost = model_cost(_architecture(Settings(**{**vars(args), "quant": None}), population), args.quant,
                      _sample_rows(population))
    return {"macs_per_example": cost.macs, "bops": cost.bops, "model_bytes": cost.model_bytes,
            "model_cost_layers": [c._asdict() for c in cost.layers]}


def list_quant_presets(args) -> int:
    """``--quant list``: every preset's BOPs and model bytes for the chosen model (``jaxqfl.models.cost``),
    printed as a table; nothing trains and no folder is written."""
    from jaxqfl.models.cost import model_cost
    from jaxqfl.quant.policy import PRESETS

    population = build_population(args)
    model = _architecture(Settings(**{**vars(args), "quant": None}), population)
    rows = []
    for name in PRESETS:
        try:
            c = model_cost(model, None if name == "none" else name, population.x[:1])
            rows.append((name, f"{c.bops:,}", f"{c.model_bytes / 1e3:,.1f} kB", c.macs, c.bops))
        except (ValueError, TypeError) as e:  # a preset this model cannot take
            rows.append((name, f"n/a ({e})", "", 0, 0))
    float_bops = rows[0][4] or 1
    print(f"--quant presets for {args.model} on {args.dataset} ({rows[0][3]:,} MACs per example; BOPs = MACs x "
          f"weight bits x input bits, van Baalen et al. 2020):")
    print(f"  {'preset':8s} {'BOPs per example':>22s} {'x float':>8s} {'model bytes':>14s}")
    for name, bops, size, _, value in rows:
        ratio = f"{value / float_bops:.3f}" if value else ""
        print(f"  {name:8s} {bops:>22s} {ratio:>8s} {size:>14s}")
    return 0


def _aggregator(args, population, uplink, model, hp: dict | None = None):
    """``(aggregator, label_transform)`` of the flags; ``hp`` (a sweep) gives one config's traced ``dp_noise``.

    With an attack, the malicious set is drawn from the data seed (``--data-seed``, default the run seed;
    a sweep's first seed) and shared
    by every config of a sweep, as the population's partition is.
    """
    from jaxqfl import aggregate

    aggregator = privacy_rules.make_aggregator(args, population.num_clients, uplink, hp, model=model,
                                               feature_shape=population.feature_shape,
                                               largest_client=population.max_count)
    if aggregator is None:
        aggregator = lora_rules.aggregator(args)
    if aggregator is None:
        aggregator = aggregate.integer_mean(uplink) if args.integer_aggregation else aggregate.aggregator_by_name(
            args.aggregator, trim_fraction=args.trim_fraction, krum_m=args.krum_m, clip_radius=args.clip_radius)
    return aggregate.attacked(
        aggregator, args.attack, args.byzantine_fraction, num_clients=population.num_clients,
        num_classes=population.num_classes, seed=data_seed_of(args), scale=args.attack_scale)


def _codec_flags(args) -> str:
    """The codec flags of the run, as given: ``--uplink topk:k=11, --downlink none``."""
    return f"--uplink {args.uplink}, --downlink {args.downlink}"


def _algorithm(args, num_clients: int, hp: dict | None = None):
    """The run's algorithm; ``hp`` overrides swept hyper-parameters with traced values (a sweep)."""
    return lora_rules.wrap_algorithm(args, algorithm_rules.build(args, hp)[0], num_clients)


SWEEPABLE = ("client_lr", "server_lr", "mu", "dp_noise", "local_steps")  # flags that take comma-separated lists
NAMED_LISTS = ("quant", "uplink", "downlink")  # and these, of names (specs and presets hold no commas)


def _split_sweep(refuser, args) -> None:
    """``args.sweep_values``: the swept flags' value lists; the flags themselves keep their first value."""
    args.sweep_values = {}
    for name in SWEEPABLE:
        value = getattr(args, name)
        if isinstance(value, tuple):
            if len(value) > 1:
                args.sweep_values[name] = list(value)
            setattr(args, name, value[0])
    for name in NAMED_LISTS:
        items = [x.strip() for x in getattr(args, name).split(",")]
        if len(items) > 1:
            if not all(items) or len(set(items)) < len(items):
                refuser.error(f"--{name} {getattr(args, name)!r}: a list takes each value once, none empty")
            if "list" in items:
                refuser.error(f"--{name} {getattr(args, name)!r}: 'list' prints the presets' costs; it is not a preset")
            args.sweep_values[name] = items
        setattr(args, name, items[0])
    if args.seeds is not None and args.seed is not None:
        refuser.error("give --seed or --seeds, not both")
    configs = math.prod(len(v) for v in args.sweep_values.values()) * len(args.seeds or (0,))
    if configs > MAX_SWEEP_CONFIGS:
        refuser.error(f"a sweep of {configs:,} configs ({' x '.join(str(len(v)) for v in args.sweep_values.values())}"
                       f"{f' x {len(args.seeds)} seeds' if args.seeds else ''}); a sweep runs at most "
                       f"{MAX_SWEEP_CONFIGS:,} (split the study into several sweeps)")
    if args.seed is None:
        args.seed = args.seeds[0] if args.seeds is not None else 0
    if (args.sweep_values or args.seeds is not None) and args.data_seed is None:
        args.data_seed = args.seed  # one population for every config: recorded, so each config can be repeated
    if (args.sweep_values or args.seeds is not None) and args.stream:
        refuser.error(f"a sweep (--seeds or a list of values) runs on-device; {stream_origin(args)} is not available "
                       f"in a sweep (drop it, or run one config at a time with --seed)")
    if (args.sweep_values or args.seeds is not None) and getattr(args, "dp_distributed", None) is not None:
        refuser.error("--dp-distributed runs one config at a time (its grid and noise shares are calibrated per "
                       "run); drop --seeds and list-valued flags")
    if (args.sweep_values or args.seeds is not None) and args.client_state not in ("auto", "replicated"):
        refuser.error(f"a sweep keeps every config's per-client states replicated on the devices ([configs, clients, "
                       f"...]); drop --client-state {args.client_state}")


EXIT_DIVERGED = 3
EXIT_WRITE_FAILED = 5
DAMAGED_CHECKPOINTS = "damaged-checkpoints"  # where a resume sets aside checkpoints it could not read


def _check_device_count(args: Settings, wanted: int | None, resumed: bool) -> None:
    """Refuse more devices than this process's JAX sees, saying why they are asked for and how to get them (a
    Python script sees one CPU device unless it sets XLA_FLAGS; ``jaxqfl run`` splits the host itself)."""
    import jax

    have = jax.devices()
    if not wanted or wanted <= len(have):
        return
    why = (f"the run was trained on {wanted} devices (its checkpoint's layout, kept so that the resumed run equals the "
           f"uninterrupted one)" if resumed else f"--devices {wanted}")
    how = (f"; `jaxqfl run{f' --resume {args.resume}' if resumed else ''}` splits the host into as many, and a "
           f"Python script sets XLA_FLAGS=--xla_force_host_platform_device_count={wanted} before it imports JAX"
           if have[0].platform == "cpu" else "")
    fail(f"{why}, but this process's JAX sees {len(have)} ({have[0].platform}){how}")


def main(args: Settings, stop=None, out: pathlib.Path | None = None) -> int:
    """Build, run (or resume), checkpoint, and write the run's files into ``out``.

    ``stop``: a ``jaxqfl.cli.interrupts.StopRequest`` (installed by ``jaxqfl.cli.main``).
    """
    from jaxqfl.engine.compile_cache import CacheHits

    if getattr(args, "_startup_origin", None) is None:  # called from Python, not through jaxqfl.cli.main
        args._startup_origin = (time.time(), "jaxqfl.experiment.runner.main() call")
    from jaxqfl.experiment.memory_guard import out_of_memory

    with CacheHits() as cache_hits:  # programs loaded from the persistent compilation cache (summary.json)
        try:
            return _main(args, stop, out, cache_hits)
        except Exception as e:  # XLA's allocator refused what the estimate let start: said, not a traceback
            why = out_of_memory(e)
            if why is None:
                raise
    fail(why)


def _main(args: Settings, stop, out: pathlib.Path | None, cache_hits) -> int:
    import jax

    from jaxqfl import engine, tasks
    from jaxqfl.experiment import run_folder, toml_io
    from jaxqfl.experiment import memory_guard
    from jaxqfl.experiment.outputs import versions
    from jaxqfl.data.footprint import footprint_of
    from jaxqfl.data.packed import is_packed  # rows on disk: not held in host memory
    from jaxqfl.engine import checkpoint, memory_plan

    out = pathlib.Path(args.out) if out is None else out
    stop_requested = (lambda: stop.requested) if stop is not None else (lambda: False)
    checkpoint.load_in_background()  # orbax, for the first checkpoint: loaded while the data and programs are built
    t_start = time.perf_counter()
    population = build_population(args)
    procedural = not hasattr(population, "x")  # --population procedural: no rows on the host
    if not procedural:
        population = personal_rules.client_test_split(args, population, data_seed_of(args))
    problem = model_rules.misfit(args, population)
    if problem is not None:
        fail(problem)
    if _label_flip_without_labels(args.attack, population.task):  # a file's task is known once it is read
        fail(_label_flip_without_labels(args.attack, population.task))
    if args.cohort_size > population.num_clients:
        fail(f"{'--concurrency' if async_rules.on(args) else '--cohort-size'} {args.cohort_size} exceeds the {population.num_clients} clients of {population.name}")
    task = tasks.for_population(population)
    misfit = systems_rules.misfit(args, task.name)
    if misfit:
        fail(misfit)
    data_seconds = time.perf_counter() - t_start
    if task.name == "clustering":  # federated k-means: seeding round, then Lloyd / mini-batch rounds
        if args.sweep_values or args.seeds is not None:
            fail("--seeds and list-valued flags (a sweep) are not available for --task clustering; "
                 "run one seed at a time with --seed")
        return clustering_runner.main(args, population, t_start, data_seconds, stop=stop)
    # A resumed run reuses the layout its checkpoint was written with (re-tuning could pick another
    # device count or chunk size, whose sums differ in the last bits): bit for bit on the same machine.
    layout = (getattr(args, "_resume_meta", None) or {}).get("layout") or {}
    devices_wanted = args.devices or layout.get("num_devices")  # None: the tuner (or every device) decides
    _check_device_count(args, devices_wanted, resumed=bool(layout.get("num_devices")))
    num_devices = args.devices or len(jax.devices())
    cpu = jax.devices()[0].platform == "cpu"
    stream = getattr(args, "stream", False)  # a streamed population is not replicated on the devices
    batch = None if args.batch_size == 0 else args.batch_size
    schedule = engine.LocalSchedule(local_steps=args.local_steps, local_epochs=args.local_epochs, batch_size=batch)
    algorithm, algorithm_hparams = algorithm_rules.build(args)
    algorithm = lora_rules.wrap_algorithm(args, algorithm, population.num_clients)
    uplink = None if args.uplink == "none" else args.uplink_codec
    try:  # e.g. pretrained params that do not fit the model, a --dp-epsilon the calibration cannot meet
        model = _model(args, population)
        aggregator, label_transform = _aggregator(args, population, uplink, model)
    except ValueError as e:
        fail(str(e))
    # the memory check on the run's real states (jax.eval_shape of its model, algorithm, aggregator, codecs)
    try:  # the states traced on the model's shapes: a codec's k past a tensor's size is refused here
        footprint = memory_plan.state_footprint(model, algorithm, population.feature_shape, aggregator=aggregator,
                                                uplink=uplink,
                                                downlink=None if args.downlink == "none" else args.downlink_codec)
    except ValueError as e:
        fail(f"the run's states do not fit the model ({_codec_flags(args)}): {e}")
    est = memory_guard.estimate(
        args, num_devices=num_devices, examples=0 if procedural or is_packed(population) else population.num_examples, test_examples=population.x_test.shape[0],
        feature_dim=math.prod(population.feature_shape), num_classes=max(population.num_classes, 1),
        num_clients=population.num_clients, home=args.client_state, cpu=cpu, feature_shape=population.feature_shape,
        stream_block=footprint_of(population).cohort_block_bytes(args.cohort_size) if stream else None,
        footprint=footprint, largest_client=int(population.max_count))
    limit = None if cpu else (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    try:
        memory_guard.check(est, num_devices=num_devices, cpu=cpu, device_limit=limit,
                           stream_available=hasattr(args, "stream") and memory_guard.num_configs(args) == 1,
                           stream=stream,
                           generated=args.dataset in ("synthetic", "synthetic-regression", "gaussian-mixture"))
    except memory_guard.MemoryRefusal as e:
        fail(str(e))  # jaxqfl.run raises it; the command prints it and exits 2
    if args.sweep_values or args.seeds is not None:  # many configs, one program
        from jaxqfl.experiment.sweep_runner import run_sweep_cli

        return run_sweep_cli(args, population, task, model, schedule, uplink,
                             make_algorithm=lambda hp: _algorithm(args, population.num_clients, hp),
                             make_aggregator=lambda hp: _aggregator(args, population, uplink, model, hp)[0],
                             make_model=lambda preset: _model(Settings(**{**vars(args), "quant": preset}),
                                                              population),
                             make_codec_aggregator=lambda codec, m, hp: _aggregator(args, population, codec, m, hp)[0],
                             label_transform=label_transform, t_start=t_start, stop=stop)
    def tier_model(preset):  # a preset name: the tier's model; a bit family's Policy: only its forward is
        # used (Tiers.model_at, built while tracing), so the architecture without --init-from's loading
        quant = Settings(**{**vars(args), "quant": preset})
        return _model(quant, population) if isinstance(preset, str) else _architecture(quant, population)

    tiers = tier_rules.build(args, population, tier_model, data_seed_of(args))
    aggregator = tier_rules.weighted(args, aggregator, tiers, population)
    try:
        client_systems = systems_rules.build(args, population.num_clients)
    except (OSError, ValueError) as e:
        fail(str(e))
    build = engine.build_streaming if args.stream else engine.build
    t_rule = time.perf_counter()
    tuning_rule = None if async_rules.on(args) else _tuning_decision(args, population, model, algorithm, schedule,
                                                                      num_devices, cpu)
    rule_seconds = time.perf_counter() - t_rule if tuning_rule is not None else 0.0
    try:  # what only the built population decides (e.g. a client-state home Poisson sampling cannot use)
        if async_rules.on(args):  # FedBuff: one round = one buffer flush on the virtual clock
            sim = async_rules.build(
                args, population, model, algorithm, schedule, aggregator=aggregator, uplink=uplink,
                downlink=None if args.downlink == "none" else args.downlink_codec, task=task,
                label_transform=label_transform, client_systems=client_systems)
        else:
            sim = build(
                population,
                model,
                algorithm,
                schedule,
                cohort_size=args.cohort_size,
                aggregator=aggregator,
                label_transform=label_transform,
                task=task,
                num_devices=devices_wanted,
                chunk_size=args.chunk_size or layout.get("chunk_size"),
                uplink=uplink,
                downlink=None if args.downlink == "none" else args.downlink_codec,
                client_state=layout.get("client_state_home", args.client_state) if args.client_state == "auto"
                else args.client_state,
                autotune=args.autotune if tuning_rule is None else tuning_rule.tune,
                **sampling_rules.build_kwargs(args, population.num_clients),
                **{**selection_rules.build_kwargs(args, population.num_clients, client_systems),  # both may pass
                   **systems_rules.deadline_kwargs(args, client_systems)},  # the same systems
                **({"personal_eval": personal_rules.fine_tune(args)} if not args.stream else {}),
                **({"tiers": tiers} if tiers is not None else {}),
            )
    except ValueError as e:
        fail(str(e))  # jaxqfl.run raises it; the command prints it and exits 2
    if args.verbose:
        print(_chunk_line(sim), flush=True)
    config = run_folder.config_of(args)
    fp = run_folder.fingerprint(config)
    (out / "config.toml").write_text(toml_io.to_toml(config))
    ckpt_dir = run_folder.checkpoint_dir(out)
    block = run_folder.block_rounds(args)

    records, totals, state = [], engine.RunTotals(), None
    if getattr(args, "_resume_meta", None) is not None:
        state, meta = _restore_readable(ckpt_dir, sim.init(args.seed), args._resume_step)
        records = list(meta["records"])
        totals = engine.RunTotals(int(meta["uplink_bits_total"]), int(meta["downlink_bits_total"]),
                                  float(meta["train_seconds"]), tuple(meta.get("tier_uplink_bits", ())),
                                  tuple(meta.get("tier_clients", ())), float(meta.get("sim_time", 0.0)),
                                  counts=async_rules.resumed_counts(meta))  # FedBuff: the staleness so far
        block = int(meta["block_rounds"])
    start_round = 0 if state is None else int(jax.device_get(state.round))
    setup_seconds = time.perf_counter() - t_start

    def meta_for(rec_list, t: engine.RunTotals) -> dict:
        """The checkpoint's JSON record: what a resumed run needs besides the state (strict: NaN -> null)."""
        return finite_or_none({
            "config": config, "fingerprint": fp, "records": rec_list, "block_rounds": block,
            "layout": {"num_devices": sim.num_devices, "chunk_size": sim.chunk_size,
                       "client_state_home": sim.client_state_home},
            "uplink_bits_total": t.uplink_bits, "downlink_bits_total": t.downlink_bits, "train_seconds": t.seconds,
            "tier_uplink_bits": list(t.tier_uplink_bits), "tier_clients": list(t.tier_clients),
            "sim_time": t.sim_time, **async_rules.meta_fields(args, t.counts),
        })

    saved_rounds = set()
    if start_round > 0:
        saved_rounds.add(start_round)

    write_error = []  # a checkpoint that could not be written (a full disk): the run stops at once

    def save_checkpoint(state, rec_list, t):
        r = int(jax.device_get(state.round))
        if r not in saved_rounds and not write_error and gate.write(
                lambda: checkpoint.save(ckpt_dir, state, meta_for(rec_list, t)), r, ckpt_dir, write_error):
            saved_rounds.add(r)

    all_records = list(records)
    gate = checkpoint_policy.Gate(args.checkpoint_every, args.eval_every)
    sink = sinks.open_sinks(out, args.log)  # metrics.jsonl (+ TensorBoard, CSV), the restored records first
    with contextlib.closing(sink), progress_bar(args.rounds, not args.no_progress, start_round) as bar:
        for rec in records:
            sink.write(rec)

        def on_eval(rec):
            rec.update(privacy_rules.record_fields(args, population.num_clients, rec))
            sampling_rules.warn_overflow(args, sim, rec)
            all_records.append(rec)
            sink.write(rec)
            bar.record(rec)

        def after_block(state, rec, t):
            r = int(jax.device_get(state.round))
            if r == args.rounds or gate.due(r):
                save_checkpoint(state, all_records, t)

        if start_round >= args.rounds:
            result = engine.RunResult(state, [], 0.0, totals.seconds, 0, totals.uplink_bits, totals.downlink_bits,
                                      tier_uplink_bits=list(totals.tier_uplink_bits),
                                      tier_clients=list(totals.tier_clients),
                                      sim_time=totals.sim_time if client_systems is not None else None,
                                      counts=dict(totals.counts or {}))
        else:
            try:
                result = engine.run(sim, rounds=args.rounds - start_round, eval_every=args.eval_every,
                                    seed=args.seed, state=state, on_eval=on_eval, block_rounds=block, totals=totals,
                                    should_stop=lambda: stop_requested() or bool(write_error),
                                    after_block=after_block, systems=client_systems,
                                    progress_seconds=bar.progress_seconds, on_progress=bar.on_progress)
            except privacy_rules.RoundFailed as e:
                print(f"jaxqfl run: error: {e}", file=sys.stderr)
                return e.exit_status
    final_state = result.state
    recheck = None
    if not args.stream:  # a streamed round also moves the cohort from the host: not what the tuner timed
        from jaxqfl.engine.tuning_conditions import recheck_run

        recheck = recheck_run(sim.tuning, result.records, start_round=start_round, start_seconds=totals.seconds)
        if recheck is not None and args.verbose:
            print(f"autotune re-check: {recheck.reason}", flush=True)
    totals_now = engine.RunTotals(result.uplink_bits_total, result.downlink_bits_total, result.train_seconds,
                                  tuple(result.tier_uplink_bits), tuple(result.tier_clients), result.sim_time or 0.0,
                                  counts=result.counts)
    if result.diverged_round is None:  # a stopped run's state, or the last one (already saved unless stopped)
        save_checkpoint(final_state, all_records, totals_now)
    if not write_error:
        try:
            checkpoint.save_params(out / checkpoint.FINAL_PARAMS, final_state.params)
            if args.lora_rank is not None:  # base + adapters as the original model's params, for serving
                from jaxqfl import lora

                merged = lora.merge(model, final_state.params, population.x[:1])
                checkpoint.save_params(out / lora_rules.MERGED_PARAMS, merged)
                if args.base_quant not in (None, "none"):  # re-quantized for serving, in the base's own format
                    from jaxqfl.lora import base_quant

                    base_quant.save(out / lora_rules.merged_quantized(args.base_quant),
                                    base_quant.quantize_base(merged, args.base_quant))
        except OSError as e:
            write_error.append(f"{out / checkpoint.FINAL_PARAMS}: {e.strerror or e}")
    done_round = int(jax.device_get(final_state.round))
    final = all_records[-1] if all_records else {}
    interrupted = (stop is not None and stop.requested and done_round < args.rounds)
    summary = {
        "dataset": args.dataset,
        "population": population.name,
        "task": population.task,
        "stream": bool(args.stream),
        "model": args.model,
        "algorithm": args.algorithm,
        "algorithm_hparams": algorithm_hparams,
        "quant": args.quant,
        "uplink": args.uplink,
        "downlink": args.downlink,
        "aggregator": args.aggregator,
        "attack": args.attack,
        "byzantine_fraction": args.byzantine_fraction if args.attack != "none" else 0.0,
        "malicious_in_cohort_per_round": [int(x) for r in all_records
                                          for x in r.get("server_malicious_in_cohort_per_round", [])],
        "final_accuracy": final.get("test_accuracy"),
        "final_loss": final.get("test_loss"),
        "final_mse": final.get("test_mse"),
        "final_rmse": final.get("test_rmse"),
        "final_r2": final.get("test_r2"),
        "final_perplexity": final.get("test_perplexity"),
        "final_bits_per_char": final.get("test_bits_per_char"),
        **personal_rules.final_client_fields(final),
        "final_train_loss": final.get("train_loss"),
        "rounds": done_round,
        "rounds_requested": args.rounds,
        "completed": done_round >= args.rounds and result.diverged_round is None,
        "interrupted": bool(interrupted),
        "signal": stop.name if interrupted and stop is not None else None,
        "diverged": result.diverged_round is not None,
        "diverged_round": result.diverged_round,
        "checkpoint_error": write_error[0] if write_error else None,
        "data_seed": data_seed_of(args),
        "resumed_from_round": start_round if start_round > 0 else None,
        "num_clients": population.num_clients,
        "num_examples": None if procedural else population.num_examples,
        "population_kind": "procedural" if procedural else "memory",
        "cohort_size": sim.cohort_size,
        "num_devices": sim.num_devices,
        "chunk_size": sim.chunk_size,
        "client_state_home": sim.client_state_home,
        "chunk_size_from": _chunk_source(args, sim) + ("; no search: the run is too short to repay one"
                                                       if tuning_rule is not None and not tuning_rule.tune else ""),
        "tuning_rule": tuning_rule.reason if tuning_rule is not None else None,
        "tuning": sim.tuning,
        "tuning_recheck": recheck._asdict() if recheck is not None else None,
        "num_params": sim.num_params,
        **lora_rules.summary_fields(args, model, sim.num_params),
        **_cost_fields(args, population),
        "compile_cache_hits": cache_hits.count,
        "compile_cache_dir": str(jax.config.jax_compilation_cache_dir or "") or None,
        "setup_seconds": setup_seconds,
        "data_seconds": data_seconds,
        "compile_seconds": result.compile_seconds,
        "tuning_seconds": rule_seconds + _search_seconds(sim.tuning),
        **process_clock.startup_fields(args._startup_origin, result.first_round_started),
        "seconds_per_round": result.train_seconds / max(done_round, 1),
        "rounds_per_second": done_round / max(result.train_seconds, 1e-12),
        **result.round_seconds_quantiles(),
        "uplink_bits_total": result.uplink_bits_total,
        "downlink_bits_total": result.downlink_bits_total,
        "memory_estimate_bytes": {"host": est.host_bytes, "per_device": est.per_device_bytes},
        "versions": versions(),
        "platform": jax.devices()[0].platform,
        "config": config,
        "config_fingerprint": fp,
        "checkpoint": str(ckpt_dir / str(max(saved_rounds))) if saved_rounds else None,
        "final_params": str(out / checkpoint.FINAL_PARAMS),
        **privacy_rules.summary_fields(args, population.num_clients),
        **sampling_rules.summary_fields(args, sim, population.num_clients, all_records),
        **tier_rules.summary_fields(args, tiers, result, final, lambda preset: _cost_fields(
            Settings(**{**vars(args), "quant": preset}), population)),
        **systems_rules.summary_fields(args, result, all_records),
        **selection_rules.summary_fields(args, all_records),
        **(async_rules.summary_fields(args, result.counts) if async_rules.on(args) else {}),
    }
    try:
        write_json(out / "summary.json", summary)
    except OSError as e:
        write_error.append(f"{out / 'summary.json'}: {e.strerror or e}")
    if write_error:
        print(f"jaxqfl run: error: could not write {'; '.join(write_error)}. Stopped after round {done_round}; the "
              f"last complete checkpoint (round {max(saved_rounds) if saved_rounds else 'none'}) is kept: free some "
              f"space and continue with: jaxqfl run --resume {out}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    if result.diverged_round is not None:
        print(f"jaxqfl run: diverged at round {result.diverged_round}: the train loss or the parameters are not "
              f"finite (try a smaller --client-lr or --server-lr). Wrote {out / 'summary.json'}.", file=sys.stderr)
        return EXIT_DIVERGED
    if interrupted:
        print(f"jaxqfl run: stopped by {stop.name} after round {done_round} of {args.rounds}; checkpoint written. "
              f"Continue with: jaxqfl run --resume {out}", file=sys.stderr)
        return stop.exit_status
    _print_summary(summary, out)
    return 0


def _restore_readable(ckpt_dir, template, step: int):
    """``(state, meta)`` of the newest readable checkpoint at or before ``step``; a damaged one is skipped, warned.

    Refuses (exit status 2), naming the folders, when no kept checkpoint can be read.
    """
    from jaxqfl.engine import checkpoint

    tried, kept = [], checkpoint.all_rounds(ckpt_dir)
    for r in [r for r in kept if r <= step][::-1]:
        try:
            got = checkpoint.restore(ckpt_dir, template, step=r)
        except Exception as e:  # a truncated or bit-flipped file surfaces as many error types
            tried.append(str(ckpt_dir / str(r)))
            print(f"jaxqfl run: warning: the checkpoint {ckpt_dir / str(r)} cannot be read ({type(e).__name__}: "
                  f"{e}); trying an older one", file=sys.stderr)
            continue
        damaged = pathlib.Path(ckpt_dir).parent / DAMAGED_CHECKPOINTS
        for newer in (n for n in kept if n > r):  # set aside (the resumed run writes those rounds again)
            damaged.mkdir(exist_ok=True)
            (pathlib.Path(ckpt_dir) / str(newer)).rename(damaged / f"{newer}-{time.strftime('%Y%m%d-%H%M%S')}")
            print(f"jaxqfl run: warning: resuming from round {r}; the unreadable checkpoint of round {newer} is "
                  f"kept in {damaged}", file=sys.stderr)
        return got
    fail(f"no readable checkpoint in {ckpt_dir} (damaged: {', '.join(tried)}); start the run again")


def _print_summary(s: dict, out: pathlib.Path) -> None:
    acc = s["final_accuracy"]
    lines = [
        "",
        f"jaxqfl run: {s['dataset']} / {s['model']}  ({s['num_params']:,} parameters)",
        f"  clients          {s['num_clients']:,} ("
        + (f"{s['num_examples']:,} examples" if s["num_examples"] is not None else "procedural: rows generated per round")
        + f"), {s['cohort_size']} per round",
        f"  devices          {s['num_devices']} x {s['platform']}, chunk {s['chunk_size']} clients per vmap"
        f" ({s['chunk_size_from']})",
        f"  rounds           {s['rounds']} of {s['algorithm']}",
        f"  test accuracy    {acc:.4f}" if acc is not None else "",
        personal_rules.summary_line(s),
        f"  test loss        {s['final_loss']:.4f}" if s["final_loss"] is not None else "  test loss        not finite",
        f"  test MSE / RMSE  {s['final_mse']:.4g} / {s['final_rmse']:.4g}" if s["final_mse"] is not None else "",
        f"  test R^2         {s['final_r2']:.4f}" if s["final_r2"] is not None else "",
        privacy_rules.summary_line(s),
        f"  bits per char    {s['final_bits_per_char']:.4f} (perplexity {s['final_perplexity']:.4g})"
        if s.get("final_bits_per_char") is not None else "",
        f"  compile          {s['compile_seconds']:.2f} s",
        f"  startup          {s['startup_seconds']:.2f} s to the first round (data {s['data_seconds']:.2f} s, "
        f"tuning {s['tuning_seconds']:.2f} s, compile {s['compile_seconds']:.2f} s, from the {s['startup_from']})"
        if s.get("startup_seconds") is not None else "",
        f"  time per round   {s['seconds_per_round'] * 1e3:.1f} ms ({s['rounds_per_second']:.1f} rounds/s)",
        f"  quantization     {s['quant']}; uplink {'per tier' if s.get('tiers') else s['uplink']}; "
        f"downlink {s['downlink']}",
        tier_rules.summary_line(s),
        systems_rules.summary_line(s),
        async_rules.summary_line(s),
        lora_rules.summary_line(s),
        f"  uplink           {s['uplink_bits_total'] / 8e6:,.1f} MB in all ({s['uplink_bits_total']:,} bits)",
        f"  downlink         {s['downlink_bits_total'] / 8e6:,.1f} MB in all",
        f"  written          {out / 'metrics.jsonl'}, {out / 'summary.json'}, {out / 'config.toml'},",
        f"                   {out / 'final_params.msgpack'}, checkpoints in {out / 'checkpoints'}",
    ]
    print("\n".join(line for line in lines if line))


def _search_seconds(tuning: dict | None) -> float:
    """Wall seconds of the chunk-size (and device-count) search, its cache lookup included; 0 when none ran."""
    if not tuning:
        return 0.0
    split = tuning.get("device_split") or {}
    return float(split.get("tuning_seconds", tuning.get("tuning_seconds", 0.0)))  # the split's contains the chunk's


def _tuning_decision(args, population, model, algorithm, schedule, num_devices: int, cpu: bool):
    """Whether to search chunk sizes when ``--autotune`` is not given (``jaxqfl.engine.tuning_rule``); None when
    the flag, ``$JAXQFL_AUTOTUNE``, ``--chunk-size`` or a resumed layout decides."""
    from jaxqfl.engine.autotune import autotune_default

    layout = (getattr(args, "_resume_meta", None) or {}).get("layout") or {}
    if not hasattr(population, "x"):  # procedural: the cost model picks the chunk (no rows to measure on)
        return None
    if args.autotune is not None or args.chunk_size is not None or layout.get("chunk_size") or not autotune_default():
        return None
    from jaxqfl.engine import tuning_rule

    return tuning_rule.decide(population, model, algorithm, schedule, cohort_size=args.cohort_size,
                              rounds=args.rounds, platform="cpu" if cpu else "accelerator", num_devices=num_devices)


def _sample_rows(population):
    """One example row: the first training row, or a procedural population's first test row."""
    return population.x[:1] if hasattr(population, "x") else population.x_test[:1]


def _chunk_source(args, sim) -> str:
    """Where the chunk size came from: the flag, the cost model, a measurement or the tuning cache."""
    if async_rules.on(args):
        return "none: --async fedbuff vmaps each buffer and its replacements whole"
    if args.chunk_size is not None:
        return "--chunk-size"
    if (getattr(args, "_resume_meta", None) or {}).get("layout"):
        return "the resumed checkpoint's layout"
    if sim.tuning is None:
        return "cost model"
    return "autotune, cache hit" if sim.tuning["cache_hit"] else "autotune"


def _chunk_line(sim) -> str:
    if sim.tuning is None:
        return f"chunk size: {sim.chunk_size} clients per vmap (not tuned)"
    from jaxqfl.engine.autotune import TuningRecord

    return TuningRecord(**sim.tuning).summary_line()
