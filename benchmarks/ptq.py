"""Post-training quantization (issue 13): calibrate -> adjust -> integer inference, against QAT.

For the MLP (784-200-200-10) and the CNN of McMahan et al. (2017), each trained
with FedAvg on MNIST (Dirichlet split over clients, short schedules so the whole
script runs in minutes on two CPU cores), and for the policies ``full`` (int8
weights and inputs) and ``w4a8`` (4-bit weights, 8-bit inputs), it reports test
accuracy of:

* float: the FedAvg model;
* PTQ minmax / percentile / mse: static input ranges from federated calibration
  (``jaxqfl.ptq.federated_calibrate`` over ``--calibration-clients`` clients, their
  first ``--rows-per-client`` rows) and round-to-nearest weights;
* + bias: MSE calibration, then bias correction (Nagel et al. 2019);
* + equalize: cross-layer equalization (Nagel et al. 2019), then MSE calibration and
  bias correction;
* + AdaRound: equalization, MSE calibration, AdaRound (Nagel et al. 2020), bias correction;
* QAT: FedAvg trained with the policy's fake quantization (dynamic per-example input
  ranges), same schedule.

Bias correction and AdaRound read layer inputs on the pooled calibration rows
(``--calibration-clients x --rows-per-client``). Every PTQ row is evaluated with
the integer path (``quant.integer_apply``; int8 x int8 -> int32, fixed-point
requantization) and with fake quantization; the script checks that their argmax
agree on every test image and reports both. Sizes: float32 bytes and the bytes of
the integer model (4-bit codes packed two per byte). Inference time: median of
``--timing-repeats`` passes over the 10,000 test images (batches of 1,000), integer
path vs float, jitted, after compilation.

    python benchmarks/ptq.py --data-path ../shared/data/mnist/mnist.npz
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxqfl import algorithms, data, engine, models, quant
from jaxqfl.ptq import federated_calibrate

POLICIES = ("full", "w4a8")


def make(kind, policy=None):
    return models.cnn(policy=policy) if kind == "cnn" else models.mlp((200, 200), policy=policy)


def graph_of(kind):
    return models.cnn_graph() if kind == "cnn" else models.mlp_graph(2)


def train(kind, policy, population, args):
    sched = engine.LocalSchedule(local_steps=args.local_steps, batch_size=args.batch_size) if kind == "cnn" else \
        engine.LocalSchedule(local_epochs=1, batch_size=args.batch_size)
    sim = engine.build(population, make(kind, policy), algorithms.fedavg(optax.sgd(args.client_lr)), sched,
                       cohort_size=args.cohort_size)
    rounds = args.cnn_rounds if kind == "cnn" else args.mlp_rounds
    t0 = time.perf_counter()
    result = engine.run(sim, rounds=rounds, eval_every=rounds, seed=args.seed)
    return jax.tree_util.tree_map(jnp.copy, result.state.params), time.perf_counter() - t0


def batched(fn, x, batch=1000):
    return np.concatenate([np.asarray(fn(x[i:i + batch])) for i in range(0, x.shape[0], batch)])


def predict_fn(model, params):
    f = jax.jit(model.apply)
    return lambda xb: f(params, xb)


def median_time(fn, x, repeats):
    batched(fn, x)  # compile
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(batched(fn, x))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def ptq_row(kind, policy, params, method, population, calib_x, x_test, y_test, args, *, bias=False, eq=False,
            ada=False):
    graph = graph_of(kind)
    fm = make(kind)
    if eq:
        params = quant.equalize(params, graph)
    ids = np.arange(args.calibration_clients)
    ranges = federated_calibrate(fm, params, population, method, client_ids=ids, rows_per_client=args.rows_per_client,
                                 bits=8)
    cp = quant.calibrated_policy(policy, params, ranges)
    inputs = None
    if ada or bias:
        inputs = models.layer_inputs(fm, params, calib_x)
    if ada:
        steps = args.cnn_adaround_steps if kind == "cnn" else args.adaround_steps
        params = quant.adaround(params, cp, inputs, graph, steps=steps, batch_size=32 if kind == "cnn" else 64)
    if bias:
        params = quant.bias_correction(params, cp, inputs, graph)
    params = quant.bias_to_grid(params, cp, graph)
    im = quant.export_integer(params, cp, graph)
    fake = batched(predict_fn(make(kind, cp), params), x_test)
    ints = batched(lambda xb: quant.integer_apply(im, xb), x_test)
    agree = int(np.sum(fake.argmax(1) == ints.argmax(1)))
    if agree != x_test.shape[0]:
        raise AssertionError(f"{kind}/{policy}/{method}: integer and fake-quant argmax differ on "
                             f"{x_test.shape[0] - agree} test images")
    return {"accuracy": float(np.mean(ints.argmax(1) == y_test)),
            "fake_quant_accuracy": float(np.mean(fake.argmax(1) == y_test)),
            "max_logit_diff": float(np.max(np.abs(fake - ints))),
            "int_bytes": im.int_bytes, "float_bytes": im.float_bytes}, im


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", default="../shared/data/mnist/mnist.npz")
    p.add_argument("--models", default="mlp,cnn")
    p.add_argument("--num-clients", type=int, default=100)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--cohort-size", type=int, default=10)
    p.add_argument("--mlp-rounds", type=int, default=30)
    p.add_argument("--cnn-rounds", type=int, default=10)
    p.add_argument("--local-steps", type=int, default=5, help="CNN local steps (the MLP runs one local epoch)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--client-lr", type=float, default=0.05)
    p.add_argument("--calibration-clients", type=int, default=10)
    p.add_argument("--rows-per-client", type=int, default=64)
    p.add_argument("--adaround-steps", type=int, default=300, help="AdaRound Adam steps per MLP layer (batch 64)")
    p.add_argument("--cnn-adaround-steps", type=int, default=100, help="AdaRound Adam steps per CNN layer (batch 32)")
    p.add_argument("--timing-repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    p.add_argument("--merge", default=None,
                   help="comma-separated ptq.json files of runs with different --models (same other flags): "
                        "write their union instead of running")
    args = p.parse_args()
    if args.merge:
        results = {}
        for f in args.merge.split(","):
            results.update(json.loads(pathlib.Path(f).read_text())["results"])
        args.models = ",".join(results)
        args.merged_from = len(args.merge.split(","))
        write(results, args)
        return

    _, _, x_test, y_test = data.load_mnist(args.data_path)
    population = data.build("mnist", data_path=args.data_path, num_clients=args.num_clients,
                            partition="dirichlet", alpha=args.alpha, seed=args.seed)
    calib_x = np.concatenate([population.client(i)[0][:args.rows_per_client] for i in range(args.calibration_clients)])
    y_test = np.asarray(y_test)
    results = {}
    for kind in args.models.split(","):
        params, train_s = train(kind, None, population, args)
        fm = make(kind)
        float_acc = float(np.mean(batched(predict_fn(fm, params), x_test).argmax(1) == y_test))
        t_float = median_time(predict_fn(fm, params), x_test, args.timing_repeats)
        res = {"float_accuracy": float_acc, "train_seconds": train_s, "float_seconds": t_float, "policies": {}}
        print(kind, "float", float_acc, f"train {train_s:.0f}s", flush=True)
        for policy in POLICIES:
            rows = {}
            for method in ("minmax", "percentile", "mse"):
                rows[f"PTQ {method}"], im = ptq_row(kind, policy, params, method, population, calib_x, x_test, y_test, args)
                if method == "minmax":
                    rows["int_seconds"] = median_time(lambda xb: quant.integer_apply(im, xb), x_test, args.timing_repeats)
            rows["+ bias correction"], _ = ptq_row(kind, policy, params, "mse", population, calib_x, x_test, y_test, args,
                                                   bias=True)
            rows["+ equalization"], _ = ptq_row(kind, policy, params, "mse", population, calib_x, x_test, y_test, args,
                                                bias=True, eq=True)
            rows["+ AdaRound"], _ = ptq_row(kind, policy, params, "mse", population, calib_x, x_test, y_test, args,
                                            bias=True, eq=True, ada=True)
            qparams, qat_s = train(kind, policy, population, args)
            rows["QAT"] = {"accuracy": float(np.mean(batched(predict_fn(make(kind, policy), qparams), x_test).argmax(1)
                                                     == y_test)), "train_seconds": qat_s}
            res["policies"][policy] = rows
            print(kind, policy, {k: (v["accuracy"] if isinstance(v, dict) else v) for k, v in rows.items()}, flush=True)
        results[kind] = res
        write(results, args)  # after each model, so a long run leaves its finished part


def write(results, args):
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = jax.devices()[0]
    meta = {
        "benchmark": "ptq",
        "training": f"FedAvg on MNIST, Dirichlet({args.alpha}) over {args.num_clients} clients, {args.cohort_size} per "
                    f"round, client SGD lr {args.client_lr}, batch {args.batch_size}; MLP 784-200-200-10: "
                    f"{args.mlp_rounds} rounds of 1 local epoch; CNN (McMahan et al. 2017): {args.cnn_rounds} rounds of "
                    f"{args.local_steps} local steps; server SGD lr 1; QAT rows: the same schedule with the policy",
        "calibration": f"federated, clients 0..{args.calibration_clients - 1}, first {args.rows_per_client} rows each; "
                       f"bias correction and AdaRound (Adam, {args.adaround_steps} steps of 64 rows per MLP layer, "
                       f"{args.cnn_adaround_steps} steps of 32 rows per CNN layer) on those pooled rows",
        "seed": args.seed,
        "machine": {"platform": dev.platform, "num_devices": jax.device_count(),
                    "cpu": platform.processor() or platform.machine()},
        "jax": jax.__version__,
        "command": "python benchmarks/ptq.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
            if k not in ("out", "merge", "merged_from") and v is not None),
    }
    if getattr(args, "merged_from", 0):
        meta["command"] += (f" (run as {args.merged_from} processes, one per --models entry, in parallel, "
                            "then merged with --merge)")
    (out / "ptq.json").write_text(json.dumps({**meta, "results": results}, indent=2, allow_nan=False) + "\n")
    lines = ["# Post-training quantization: calibrate, adjust, integer inference", "",
             f"Training: {meta['training']}.", "", f"Calibration: {meta['calibration']}.", "",
             "Accuracy on the 10,000 MNIST test images. PTQ rows are the integer path "
             "(`quant.integer_apply`: int8 x int8 -> int32, fixed-point requantization); its argmax equals the "
             "fake-quant model's on every test image (checked by the script). `+` rows accumulate: "
             "`+ bias correction` = MSE calibration + bias correction; `+ equalization` adds cross-layer "
             "equalization before calibration; `+ AdaRound` adds AdaRound before bias correction. QAT = FedAvg with "
             "the policy's fake quantization (dynamic per-example input ranges), evaluated in fake quantization.", "",
             f"Machine: {meta['machine']}, jax {meta['jax']}; timings on a shared 2-core machine are noisy "
             "(other jobs kept the load average at 12-20 during the recorded run). XLA's CPU backend has no "
             "fast int8 convolution: the CNN's integer path is far slower than float there.", "",
             f"Command: `{meta['command']}`", ""]
    for kind, res in results.items():
        lines += [f"## {'MLP 784-200-200-10' if kind == 'mlp' else 'CNN (McMahan et al. 2017)'}", "",
                  f"Float accuracy {res['float_accuracy']:.4f}; float inference {res['float_seconds'] * 1e3:.0f} ms "
                  f"per 10,000 images.", "",
                  "| variant | " + " | ".join(f"`{p}` acc" for p in res["policies"]) + " |",
                  "| --- | " + " | ".join("---" for _ in res["policies"]) + " |"]
        names = [k for k in next(iter(res["policies"].values())) if k != "int_seconds"]
        lines.append("| float | " + " | ".join(f"{res['float_accuracy']:.4f}" for _ in res["policies"]) + " |")
        for name in names:
            lines.append(f"| {name} | " + " | ".join(f"{rows[name]['accuracy']:.4f}" for rows in res["policies"].values())
                         + " |")
        lines += ["", "| policy | float bytes | integer model bytes | smaller | float ms / 10k | integer ms / 10k |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for policy, rows in res["policies"].items():
            r = rows["PTQ minmax"]
            lines.append(f"| `{policy}` | {r['float_bytes']:,} | {r['int_bytes']:,} | "
                         f"{r['float_bytes'] / r['int_bytes']:.1f}x | {res['float_seconds'] * 1e3:.0f} | "
                         f"{rows['int_seconds'] * 1e3:.0f} |")
        lines.append("")
    (out / "ptq.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'ptq.json'} and .md")


if __name__ == "__main__":
    main()
