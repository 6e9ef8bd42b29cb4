"""Privacy benchmark: accuracy of DP-FedAvg at several epsilons, and the cost of secure aggregation.

Part 1 (DP-FedAvg, user-level): MNIST split over ``--num-clients`` clients (IID and
Dirichlet(0.5)), ``--cohort-size`` per round (fixed size, without replacement),
multinomial logistic regression, one local epoch of SGD (batch 16), an 8-bit
QSGD uplink (``qsgd:127``) applied AFTER clipping; uniform weights. For each
epsilon (delta 1e-5, accounted over the whole run by dp-accounting: RDP,
sampled without replacement, replace-one) the noise multiplier is calibrated
with ``privacy.noise_for_epsilon``; epsilon = inf means clipping without noise.
Fixed clip C, and adaptive clipping (Andrew et al. 2021, median, count noise
std M / 20, raised where the count alone would spend more than epsilon / 4;
its privacy cost included in the calibration). Poisson rows
(``--poisson-epsilons``, IID, fixed clip): each client joins with probability
q = M / N into the default M_max slots (``engine.sampling.default_max_cohort``),
DP-FedAvg's fixed denominator is the expected cohort M, accounted with
``PoissonSampledDpEvent`` under PLD (add/remove-one).

Part 2 (secure aggregation): round time and uplink bits of SecAgg+ (k = 2
ceil(log2 M) neighbours, t = k/2 + 1) against plain integer aggregation on the
same 8-bit codes, at 0 %, 10 % and 30 % dropouts, cohorts ``--secagg-cohorts``;
SecAgg (all pairs) at the smallest cohort only (its masks cost O(M^2 P)).

Writes OUT/privacy.{json,md,png} (OUT: --out, default a fresh runs/privacy-<time>). ``--skip-secagg`` runs
the accuracy part alone and keeps the secure-aggregation rows (and their note)
already stored in ``OUT/privacy.json``. The default scale is
the issue's (1,000 clients, cohort 100); the committed results may come from a
smaller run, stated in their header.

    python benchmarks/privacy.py --data-path ../shared/data/mnist/mnist.npz
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import time

import jax
import optax

from jaxqfl import aggregate, algorithms, compress, data, engine, models, privacy

UPLINK = "qsgd:127"


def _sim(population, aggregator, args, cohort, uplink, **sampling):
    return engine.build(
        population, models.logistic_regression(num_outputs=10),
        algorithms.fedavg(optax.sgd(args.client_lr), weighting="uniform"),
        engine.LocalSchedule(local_epochs=1, batch_size=16), cohort_size=cohort, aggregator=aggregator,
        uplink=uplink, **sampling,
    )


def _count_noise(eps, args, N, M, sampling):
    """Adaptive clipping's count noise std: M / 20 (Andrew et al. 2021), raised where that alone would spend
    more than a quarter of the budget (small epsilon, many rounds) to the std whose count alone spends eps / 4."""
    if not math.isfinite(eps):
        return 0.0
    kw = dict(num_clients=N, cohort_size=M, sampling=sampling)
    # the count's multiplier is sigma_b (replace-one) or 2 sigma_b (add/remove): half of the update's z either way
    quarter = privacy.noise_for_epsilon(eps / 4, args.delta, args.rounds, **kw) / 2.0
    return max(M / 20.0, quarter)


def _grid(args):
    """(partition, clip mode, sampling, epsilon) of every DP row."""
    for partition in args.partitions:
        for mode in args.clip_modes:
            for eps in args.epsilons:
                yield partition, mode, "fixed", eps
    for eps in args.poisson_epsilons:
        yield "iid", "fixed", "poisson", eps


def dp_runs(args, log):
    uplink = compress.from_spec(UPLINK)
    rows, populations = [], {}
    for partition, mode, sampling, eps in _grid(args):
        if partition not in populations:
            populations[partition] = data.build("mnist", num_clients=args.num_clients, partition=partition,
                                                alpha=0.5, data_path=args.data_path, seed=args.seed)
        population = populations[partition]
        N, M = population.num_clients, args.cohort_size
        poisson = sampling == "poisson"
        count_std = _count_noise(eps, args, N, M, sampling) if mode == "adaptive" else 0.0
        kw = dict(num_clients=N, cohort_size=M, count_noise_std=count_std, sampling=sampling)
        z = 0.0 if not math.isfinite(eps) else privacy.noise_for_epsilon(eps, args.delta, args.rounds, **kw)
        agg = aggregate.dp_mean(args.clip, z, target_quantile=0.5 if mode == "adaptive" else None,
                                count_noise_std=count_std, denominator=float(M) if poisson else None)
        t0 = time.perf_counter()
        sim = _sim(population, agg, args, M, uplink, **({"sampling": "poisson"} if poisson else {}))
        result = engine.run(sim, rounds=args.rounds, eval_every=args.rounds, seed=args.seed)
        spent = privacy.epsilon(z, args.delta, args.rounds, **kw) if z > 0 else math.inf
        row = {"partition": partition, "clip_mode": mode, "sampling": sampling, "count_noise_std": count_std,
               "target_epsilon": eps if math.isfinite(eps) else None,
               "epsilon_spent": spent if math.isfinite(spent) else None, "noise_multiplier": z,
               "final_clip": result.final.get("server_dp_clip"),
               "test_accuracy": result.final["test_accuracy"], "seconds": time.perf_counter() - t0,
               "seconds_per_round": result.seconds_per_round, "compile_seconds": result.compile_seconds}
        if poisson:
            joined = [x for r in result.records for x in r["server_cohort_joined_per_round"]]
            row.update(max_cohort=sim.max_cohort, mean_joined=sum(joined) / len(joined),
                       overflow_rounds=sum(x > 0 for r in result.records
                                           for x in r["server_cohort_overflow_per_round"]))
        rows.append(row)
        log(row)
    return rows


def secagg_runs(args, log):
    uplink = compress.from_spec(UPLINK)
    population = data.build("mnist", num_clients=args.secagg_clients, partition="iid", data_path=args.data_path,
                            seed=args.seed)
    rows = []
    for M in args.secagg_cohorts:
        configs = [("integer", None, 0.0)] + [("secagg+", "secagg+", p) for p in (0.0, 0.1, 0.3)]
        if M == min(args.secagg_cohorts):
            configs.append(("secagg", "secagg", 0.1))
        for name, protocol, p in configs:
            if protocol is None:
                agg = aggregate.integer_mean(uplink)
            else:
                agg = aggregate.secure_sum(uplink, num_clients=population.num_clients, cohort_size=M,
                                           protocol=protocol, dropout=p)
            sim = _sim(population, agg, args, M, uplink)
            result = engine.run(sim, rounds=args.secagg_rounds, eval_every=args.secagg_rounds, seed=args.seed)
            row = {"cohort": M, "aggregation": name, "dropout": p,
                   "seconds_per_round": result.seconds_per_round, "compile_seconds": result.compile_seconds,
                   "uplink_bits_per_client": result.uplink_bits_total / (args.secagg_rounds * M),
                   "failed_rounds": result.final.get("server_secagg_failed_rounds", 0.0),
                   "test_accuracy": result.final["test_accuracy"]}
            rows.append(row)
            log(row)
    return rows


def write(out: pathlib.Path, meta, dp_rows, sa_rows):
    out.mkdir(parents=True, exist_ok=True)
    (out / "privacy.json").write_text(json.dumps({"meta": meta, "dp": dp_rows, "secagg": sa_rows}, indent=2) + "\n")
    fmt = lambda v: "inf" if v is None else f"{v:.3g}"
    lines = ["# Privacy benchmark", "", meta["scale_note"], "",
             f"Machine: {meta['machine']}; 1-minute load average {meta.get('load', 'not recorded')} (at the start "
             f"and the end of the run: times taken beside other jobs are noisy).", "",
             "## DP-FedAvg: test accuracy after the run", "",
             "| partition | clip | sampling | target eps | eps spent | z | final C | accuracy |",
             "|---|---|---|---|---|---|---|---|"]
    for r in dp_rows:
        lines.append(f"| {r['partition']} | {r['clip_mode']} | {r.get('sampling', 'fixed')} "
                     f"| {fmt(r['target_epsilon'])} | {fmt(r['epsilon_spent'])} | {r['noise_multiplier']:.3f} | {fmt(r['final_clip'])} "
                     f"| {r['test_accuracy']:.4f} |")
    poisson = [r for r in dp_rows if r.get("sampling") == "poisson"]
    if poisson:
        lines += ["", "Sampling: fixed = a cohort of exactly M clients without replacement (RDP, replace-one); "
                  "poisson = each client joins with probability q = M / N (PLD, add/remove-one; the noisy sum is "
                  "divided by the expected cohort M). The two samplings' epsilons use different neighbouring "
                  "relations: replacing a client moves the sum by up to 2C, adding/removing one by C, and PLD "
                  "is tighter than RDP's bound, so the Poisson rows need much less noise at the same epsilon: they "
                  "are not a like-for-like comparison of the two samplings. Poisson rounds: "
                  + "; ".join(f"eps {fmt(r['target_epsilon'])}: M_max {r['max_cohort']} slots, {r['mean_joined']:.1f} "
                              f"joiners a round on average, {r['overflow_rounds']} overflowing round(s)"
                              for r in poisson) + "."]
    adaptive = [r for r in dp_rows if r["clip_mode"] == "adaptive" and r.get("count_noise_std")]
    if adaptive:
        lines += ["", "Adaptive clipping (target quantile 0.5, learning rate 0.2): the unclipped count's noise std is "
                  "M/20 (Andrew et al. 2021) unless that alone would spend more than epsilon/4, then raised until "
                  "it spends epsilon/4: " + ", ".join(f"eps {fmt(r['target_epsilon'])}: {r['count_noise_std']:.3g}"
                                                      for r in adaptive if r["sampling"] == "fixed"
                                                      and r["partition"] == adaptive[0]["partition"]) + "."]
    if meta.get("secagg_note"):
        lines += ["", meta["secagg_note"]]
    lines += ["", "## Secure aggregation against plain integer aggregation", "",
              "| cohort | aggregation | dropout | s/round | uplink bits/client/round | failed rounds |",
              "|---|---|---|---|---|---|"]
    for r in sa_rows:
        lines.append(f"| {r['cohort']} | {r['aggregation']} | {r['dropout']:.0%} | {r['seconds_per_round']:.3f} "
                     f"| {r['uplink_bits_per_client']:,.0f} | {int(r['failed_rounds'])} |")
    lines += ["", "Uplink bits average over the cohort, dropped clients included (they send keys and shares "
              "only). SecAgg+ takes the smallest even degree k >= 2 ceil(log2 M) whose union bound on a failed "
              "round, M P(Bin(k, 1 - p) < t) with t = floor(k/2) + 1, is <= 1e-6 at the dropout rate p "
              "(`jaxqfl.aggregate.secagg_graph.choose_neighbours`): k = 14 / 34 / 99 (all pairs) for a cohort "
              "of 100 at 0 / 10 / 30% and 20 / 38 / 212 for 1,000, so the 30% rows cost more masks and shares "
              "but no round fails (with the old k = 2 ceil(log2 M) they did). The integer rows and the "
              "SecAgg+ rows reach the same accuracy: the secure sum equals the integer sum."]
    (out / "privacy.md").write_text("\n".join(lines) + "\n")
    if dp_rows:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        curves = sorted({(r["partition"], r["clip_mode"], r.get("sampling", "fixed")) for r in dp_rows})
        for part, mode, sampling in curves:
            pts = [r for r in dp_rows if (r["partition"], r["clip_mode"], r.get("sampling", "fixed"))
                   == (part, mode, sampling)]
            xs = [r["target_epsilon"] or 32.0 for r in pts]
            style = "o--" if sampling == "poisson" else "o-"
            ax.plot(xs, [r["test_accuracy"] for r in pts], style, label=f"{part}, {mode} clip, {sampling} sampling")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("epsilon (delta 1e-5; rightmost point: no noise)")
        ax.set_ylabel("test accuracy")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "privacy.png", dpi=120)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", required=True)
    p.add_argument("--out", default=None,
                   help="output folder (default: a fresh runs/privacy-<time>; --out benchmarks/results updates the "
                        "stored results, and --skip-dp / --skip-secagg keep the rows stored there)")
    p.add_argument("--num-clients", type=int, default=1000)
    p.add_argument("--cohort-size", type=int, default=100)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--client-lr", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=0.5)
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--epsilons", type=float, nargs="+", default=[1, 2, 4, 8, math.inf])
    p.add_argument("--partitions", nargs="+", default=["iid", "dirichlet"])
    p.add_argument("--poisson-epsilons", type=float, nargs="*", default=[2, 8],
                   help="Poisson-sampling rows (IID, fixed clip) at these epsilons")
    p.add_argument("--clip-modes", nargs="+", default=["fixed", "adaptive"])
    p.add_argument("--secagg-clients", type=int, default=2000)
    p.add_argument("--secagg-cohorts", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--secagg-rounds", type=int, default=3)
    p.add_argument("--skip-dp", action="store_true")
    p.add_argument("--skip-secagg", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale-note", default="Scale: as the defaults of benchmarks/privacy.py.")
    args = p.parse_args()
    load_start = os.getloadavg()[0]
    log = lambda row: print(json.dumps(row), flush=True)
    out = pathlib.Path(args.out or f"runs/privacy-{time.strftime('%Y%m%d-%H%M%S')}")
    stored = json.loads((out / "privacy.json").read_text()) if (out / "privacy.json").exists() else {}
    dp_rows = stored.get("dp", []) if args.skip_dp else dp_runs(args, log)
    sa_rows = stored.get("secagg", []) if args.skip_secagg else secagg_runs(args, log)
    secagg_note = None
    if args.skip_secagg and sa_rows:
        old = stored.get("meta", {}).get("args", {})
        secagg_note = (stored.get("meta", {}).get("secagg_note")
                       or f"The secure-aggregation table below is kept from an earlier run (not rerun here): "
                          f"{old.get('secagg_clients')} clients, {old.get('secagg_rounds')} timed rounds per "
                          f"configuration, on {stored.get('meta', {}).get('machine')}.")
    meta = {"args": {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in vars(args).items()
                     if k not in ("epsilons", "poisson_epsilons")},
            "epsilons": [e if math.isfinite(e) else None for e in args.epsilons],
            "poisson_epsilons": [e if math.isfinite(e) else None for e in args.poisson_epsilons],
            "secagg_note": secagg_note,
            "machine": f"{platform.processor() or platform.machine()}, {jax.device_count()} x {jax.devices()[0].platform}",
            "load": f"{load_start:.2f} / {os.getloadavg()[0]:.2f}",
            "scale_note": args.scale_note, "uplink": UPLINK, "model": "logistic regression (7,850 parameters)"}
    write(out, meta, dp_rows, sa_rows)


if __name__ == "__main__":
    main()
