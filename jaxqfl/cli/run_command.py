"""jaxqfl run: simulate federated training and write metrics.

With no flags: FedAvg on Synthetic(1,1) (Li et al. 2020), 1,000 clients, 100 per
round, multinomial logistic regression, 300 rounds of 20 local SGD steps (batch 10,
lr 0.01). For reference, centralized logistic regression on the pooled training
rows reaches about 0.57 test accuracy on this population (seed 0).

Writes OUT/metrics.jsonl (one JSON object per evaluated round) and
OUT/summary.json, and prints a one-screen summary.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pathlib
import time

from jaxqfl.cli.argtypes import nonneg_int as _nonneg_int
from jaxqfl.cli.argtypes import positive_float as _positive_float
from jaxqfl.cli.argtypes import positive_int as _positive_int
from jaxqfl.choices import AGGREGATORS, ATTACK_NAMES, CLIENT_STATE_HOMES, SERVER_OPTIMIZERS, WEIGHTINGS
from jaxqfl.data.build import DATASETS, PARTITIONS  # NumPy only: JAX is not started yet

MODELS = ("mlp", "cnn", "logreg")

DEFAULTS = {
    "synthetic": {"model": "logreg", "num_clients": 1000, "cohort_size": 100, "rounds": 300, "client_lr": 0.01,
                  "local_steps": 20, "batch_size": 10, "eval_every": 20},
    "mnist": {"model": "mlp", "num_clients": 100, "cohort_size": 10, "rounds": 50, "client_lr": 0.05,
              "local_epochs": 1, "batch_size": 32, "eval_every": 5},
}


def _hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden takes comma-separated positive integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--hidden takes comma-separated positive integers, got {text!r}")
    return sizes


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="synthetic")
    g.add_argument("--data-path", default=None, help="path of mnist.npz (Keras layout); required for --dataset mnist")
    g.add_argument("--partition", choices=PARTITIONS, default=None,
                   help="how examples are split over clients (default: natural for synthetic, iid for mnist); "
                        "a partitioner given for synthetic re-splits its pooled training rows")
    g.add_argument("--alpha", type=_positive_float, default=0.5, help="Dirichlet concentration (--partition dirichlet)")
    g.add_argument("--shards-per-client", type=_positive_int, default=2, help="label shards per client (--partition shards)")
    g.add_argument("--sigma", type=float, default=1.0, help="log-normal size spread (--partition quantity)")
    g.add_argument("--num-clients", type=_positive_int, default=None)
    g = p.add_argument_group("federated training")
    g.add_argument("--cohort-size", type=_positive_int, default=None, help="clients per round")
    g.add_argument("--rounds", type=_positive_int, default=None)
    g.add_argument("--local-steps", type=_positive_int, default=None)
    g.add_argument("--local-epochs", type=_positive_int, default=None)
    g.add_argument("--batch-size", type=_nonneg_int, default=None, help="0 means full batch (FedSGD with 1 local step)")
    g.add_argument("--client-lr", type=_positive_float, default=None)
    g.add_argument("--server-opt", choices=SERVER_OPTIMIZERS, default="sgd")
    g.add_argument("--server-lr", type=_positive_float, default=1.0)
    g.add_argument("--weighting", choices=WEIGHTINGS, default="examples")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=MODELS, default=None, help="default: logreg for synthetic, mlp for mnist")
    g.add_argument("--hidden", type=_hidden, default=(200, 200), help="MLP hidden sizes, e.g. 200,200")
    g = p.add_argument_group("quantization and communication")
    g.add_argument("--quant", default="none",
                   help="quantization-aware training preset: none, full (int8 weights+activations), half (bf16), "
                        "mixed (8-bit first/last layers, 4-bit rest), w4a8, w8, log4, nf4, fp8, lsq4, binary")
    g.add_argument("--uplink", default="none",
                   help="client->server update codec, e.g. none, qsgd:16, uniform:8, terngrad, sign+ef, natural, "
                        "topk:0.01+ef, randk:0.1, hadamard+qsgd:4 (FedPAQ = FedAvg with an unbiased uplink quantizer)")
    g.add_argument("--integer-aggregation", action="store_true",
                   help="sum the uplink codes as integers on a cohort-shared scale (uniform, qsgd, terngrad)")
    g.add_argument("--downlink", default="none",
                   help="server->client model codec (applied to the broadcast model), e.g. none, uniform:8")
    g = p.add_argument_group("robust aggregation and attacks")
    g.add_argument("--aggregator", choices=AGGREGATORS, default="mean")
    g.add_argument("--trim-fraction", type=float, default=0.2,
                   help="fraction of rows a robust rule assumes adversarial (trimmed mean, Krum, Bulyan)")
    g.add_argument("--krum-m", type=_positive_int, default=None, help="Multi-Krum's m (default n - f)")
    g.add_argument("--clip-radius", type=_positive_float, default=1.0, help="norm-bound / centered-clip radius")
    g.add_argument("--attack", choices=ATTACK_NAMES, default="none")
    g.add_argument("--byzantine-fraction", type=float, default=0.2, help="malicious share of the population")
    g.add_argument("--attack-scale", type=float, default=None, help="attack strength (default: the attack's own)")
    g = p.add_argument_group("execution")
    g.add_argument("--devices", type=_positive_int, default=None, help="devices in the mesh (default: all)")
    g.add_argument("--chunk-size", type=_positive_int, default=None, help="clients per vmap (default: automatic)")
    g.add_argument("--client-state", choices=CLIENT_STATE_HOMES, default="auto",
                   help="where per-client states (error feedback, SCAFFOLD controls, ...) live: replicated on "
                        "every device, sharded over the devices, or on the host and streamed with the cohort "
                        "(default: auto, by size)")
    g.add_argument("--eval-every", type=_positive_int, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default=None, help="output folder (default: runs/<dataset>-<time>)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill dataset-dependent defaults and refuse inconsistent flags, before JAX starts."""
    d = DEFAULTS[args.dataset]
    if args.local_steps is not None and args.local_epochs is not None:
        parser.error(f"give --local-steps or --local-epochs, not both (got {args.local_steps} and {args.local_epochs})")
    if args.local_steps is None and args.local_epochs is None:
        args.local_steps, args.local_epochs = d.get("local_steps"), d.get("local_epochs")
    for name in ("model", "num_clients", "cohort_size", "rounds", "client_lr", "batch_size", "eval_every"):
        if getattr(args, name) is None:
            setattr(args, name, d[name])
    if args.cohort_size > args.num_clients:
        parser.error(f"--cohort-size {args.cohort_size} exceeds --num-clients {args.num_clients}")
    if args.dataset == "mnist":
        if args.data_path is None:
            parser.error("--dataset mnist needs --data-path PATH/mnist.npz (the Keras mnist.npz layout)")
        if not os.path.isfile(args.data_path):
            parser.error(f"--data-path {args.data_path!r}: no such file")
    elif args.data_path is not None:
        parser.error("--data-path applies to --dataset mnist; synthetic data is generated")
    if args.partition == "natural" and args.dataset != "synthetic":
        parser.error(f"--partition natural exists for synthetic only; for {args.dataset} choose one of "
                     f"{[p for p in PARTITIONS if p != 'natural']}")
    if not (args.sigma >= 0 and math.isfinite(args.sigma)):
        parser.error(f"--sigma must be a finite number >= 0, got {args.sigma}")
    if args.model == "cnn" and args.dataset != "mnist":
        parser.error("--model cnn is the MNIST CNN of McMahan et al. 2017; use it with --dataset mnist")
    from jaxqfl.quant.policy import PRESETS

    if args.quant not in PRESETS:
        parser.error(f"--quant {args.quant!r} is not a preset; choose one of {', '.join(PRESETS)}")
    from jaxqfl.compress import from_spec

    for flag in ("uplink", "downlink"):
        try:
            setattr(args, f"{flag}_codec", from_spec(getattr(args, flag)))
        except ValueError as e:
            parser.error(f"--{flag} {getattr(args, flag)!r}: {e}")
    if args.integer_aggregation and getattr(args.uplink_codec, "integer_sum", None) is None:
        parser.error(f"--integer-aggregation needs an --uplink codec whose codes can be summed as integers "
                     f"(uniform, qsgd, terngrad, without +ef or hadamard); got --uplink {args.uplink!r}")
    if args.aggregator != "mean" and args.integer_aggregation:
        parser.error(f"--integer-aggregation is a mean; it does not combine with --aggregator {args.aggregator}")
    high = 0.25 if args.aggregator == "bulyan" else 0.5
    if not 0.0 <= args.trim_fraction < high:
        parser.error(f"--trim-fraction must lie in [0, {high}) for --aggregator {args.aggregator}, "
                     f"got {args.trim_fraction}")
    if not 0.0 <= args.byzantine_fraction <= 1.0:
        parser.error(f"--byzantine-fraction must lie in [0, 1], got {args.byzantine_fraction}")
    if args.attack_scale is not None and not (0.0 <= args.attack_scale < math.inf):
        parser.error(f"--attack-scale must be a finite number >= 0, got {args.attack_scale}")
    if args.out is None:
        args.out = os.path.join("runs", f"{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")


def _model(args, population):
    from jaxqfl import models

    k = population.num_classes
    if args.model == "mlp":
        return models.mlp(hidden=args.hidden, num_outputs=k, policy=args.quant)
    if args.model == "cnn":
        return models.cnn(num_outputs=k, policy=args.quant)
    return models.logistic_regression(num_outputs=k, policy=args.quant)


def main(args: argparse.Namespace) -> int:
    import jax
    import optax

    from jaxqfl import aggregate, algorithms, data, engine

    t_start = time.perf_counter()
    population = data.build(
        args.dataset,
        num_clients=args.num_clients,
        partition=args.partition,
        alpha=args.alpha,
        shards_per_client=args.shards_per_client,
        sigma=args.sigma,
        data_path=args.data_path,
        seed=args.seed,
    )
    batch = None if args.batch_size == 0 else args.batch_size
    schedule = engine.LocalSchedule(local_steps=args.local_steps, local_epochs=args.local_epochs, batch_size=batch)
    algorithm = algorithms.fedavg(
        optax.sgd(args.client_lr),
        algorithms.server_optimizer(args.server_opt, args.server_lr),
        weighting=args.weighting,
    )
    uplink = None if args.uplink == "none" else args.uplink_codec
    agg = aggregate.integer_mean(uplink) if args.integer_aggregation else aggregate.aggregator_by_name(
        args.aggregator, trim_fraction=args.trim_fraction, krum_m=args.krum_m, clip_radius=args.clip_radius)
    agg, label_transform = aggregate.attacked(
        agg, args.attack, args.byzantine_fraction, num_clients=population.num_clients,
        num_classes=population.num_classes, seed=args.seed, scale=args.attack_scale)
    sim = engine.build(
        population,
        _model(args, population),
        algorithm,
        schedule,
        cohort_size=args.cohort_size,
        aggregator=agg,
        label_transform=label_transform,
        num_devices=args.devices,
        chunk_size=args.chunk_size,
        uplink=uplink,
        downlink=None if args.downlink == "none" else args.downlink_codec,
        client_state=args.client_state,
    )
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    setup_seconds = time.perf_counter() - t_start
    with open(out / "metrics.jsonl", "w") as f, _progress(args.rounds, not args.no_progress) as show:

        def on_eval(rec):
            f.write(json.dumps(rec) + "\n")
            f.flush()
            show(rec)

        result = engine.run(sim, rounds=args.rounds, eval_every=args.eval_every, seed=args.seed, on_eval=on_eval)
    final = result.final
    summary = {
        "dataset": args.dataset,
        "model": args.model,
        "quant": args.quant,
        "uplink": args.uplink,
        "downlink": args.downlink,
        "aggregator": args.aggregator,
        "attack": args.attack,
        "byzantine_fraction": args.byzantine_fraction if args.attack != "none" else 0.0,
        "malicious_in_cohort_at_evaluations": [r["server_malicious_in_cohort"] for r in result.records
                                if "server_malicious_in_cohort" in r],
        "final_accuracy": final.get("test_accuracy"),
        "final_loss": final.get("test_loss"),
        "final_train_loss": final.get("train_loss"),
        "rounds": result.rounds,
        "num_clients": population.num_clients,
        "num_examples": population.num_examples,
        "cohort_size": sim.cohort_size,
        "num_devices": sim.num_devices,
        "platform": jax.devices()[0].platform,
        "chunk_size": sim.chunk_size,
        "client_state_home": sim.client_state_home,
        "num_params": sim.num_params,
        "setup_seconds": setup_seconds,
        "compile_seconds": result.compile_seconds,
        "seconds_per_round": result.seconds_per_round,
        "rounds_per_second": 1.0 / max(result.seconds_per_round, 1e-12),
        "uplink_bits_total": result.uplink_bits_total,
        "downlink_bits_total": result.downlink_bits_total,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
                   if not k.endswith("_codec")},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(summary, out)
    return 0


@contextlib.contextmanager
def _progress(total_rounds: int, enabled: bool):
    """A tqdm bar over rounds (loss, accuracy, rounds/s) fed by ``engine.run``'s records; yields ``show(record)``."""
    if not enabled:
        yield lambda rec: None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total_rounds, unit="round", dynamic_ncols=True)
    def show(rec):
        post = {"loss": f"{rec['test_loss']:.4f}",
                "rounds/s": f"{rec['round'] / max(rec['seconds'], 1e-9):.2f}"}
        if "test_accuracy" in rec:
            post["acc"] = f"{rec['test_accuracy']:.4f}"
        bar.set_postfix(post)
        bar.update(rec["round"] - bar.n)

    try:
        yield show
    finally:
        bar.close()


def _print_summary(s: dict, out: pathlib.Path) -> None:
    acc = s["final_accuracy"]
    lines = [
        "",
        f"jaxqfl run: {s['dataset']} / {s['model']}  ({s['num_params']:,} parameters)",
        f"  clients          {s['num_clients']:,} ({s['num_examples']:,} examples), {s['cohort_size']} per round",
        f"  devices          {s['num_devices']} x {s['platform']}, chunk {s['chunk_size']} clients per vmap",
        f"  rounds           {s['rounds']}",
        f"  test accuracy    {acc:.4f}" if acc is not None else "",
        f"  test loss        {s['final_loss']:.4f}",
        f"  compile          {s['compile_seconds']:.2f} s",
        f"  time per round   {s['seconds_per_round'] * 1e3:.1f} ms ({s['rounds_per_second']:.1f} rounds/s)",
        f"  quantization     {s['quant']}; uplink {s['uplink']}; downlink {s['downlink']}",
        f"  uplink           {s['uplink_bits_total'] / 8e6:,.1f} MB in all ({s['uplink_bits_total']:,} bits)",
        f"  downlink         {s['downlink_bits_total'] / 8e6:,.1f} MB in all",
        f"  written          {out / 'metrics.jsonl'}, {out / 'summary.json'}",
    ]
    print("\n".join(line for line in lines if line))
