"""Accuracy and model size under quantization-aware training (issue 3).

The same model and seed trained with each quantization policy of
``jaxqfl.quant`` (fake quantization with straight-through estimators in every
forward/backward pass; round-to-nearest at evaluation):

    float (none) | int8 weights + activations (full) | w4a8 | mixed (first/last 8-bit,
    the rest 4-bit) | bf16 (half) | 4-bit power-of-two weights (log4)

two ways:

* centralized: minibatch SGD with momentum on the whole MNIST training set;
* federated: FedAvg (``jaxqfl.engine``), MNIST split Dirichlet(alpha) over
  100 clients, 10 per round, one local epoch of SGD, server SGD lr 1.

For each policy it reports test accuracy (fake-quant inference), the accuracy of
inference from the exported integer form (``jaxqfl.quant.export``; it must be
identical, and the script checks it), the model bytes before and after export
(codes packed at their bit width, plus scales), and the QAT round-time overhead
against the float round: ``t_policy / t_float - 1`` with round (epoch) times
measured after compilation, in the same process, as the median of
``--timing-repeats`` blocks of ``--eval-every`` rounds (one epoch). The timing
passes visit the policies round-robin after all training is done, so a load
change on a shared machine hits every policy alike.

Writes benchmarks/results/quant_accuracy.{json,md}.

    python benchmarks/quant_accuracy.py --data-path ../shared/data/mnist/mnist.npz
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

from jaxqfl import algorithms, data, engine, keys, models, quant

POLICIES = [
    ("float", "none"),
    ("int8 (full)", "full"),
    ("w4a8", "w4a8"),
    ("mixed 8/4", "mixed"),
    ("bf16 (half)", "half"),
    ("log4 weights", "log4"),
]


def make_model(name: str, policy: str):
    if name == "cnn":
        return models.cnn(num_outputs=10, policy=policy)
    return models.mlp(hidden=(200, 200), num_outputs=10, policy=policy)


def accuracy_fn(model, batch: int = 2000):
    """Jitted test accuracy (round-to-nearest inference, ``key=None``) over fixed-size batches."""

    @jax.jit
    def correct(params, x, y):
        return jnp.sum(jnp.argmax(model.apply(params, x), -1) == y)

    def accuracy(params, x, y) -> float:
        n = (x.shape[0] // batch) * batch  # MNIST's 10,000 test images divide evenly
        hits = sum(int(correct(params, x[i : i + batch], y[i : i + batch])) for i in range(0, n, batch))
        return hits / n

    return accuracy


def export_report(model, policy, params, x_test, y_test, fake_acc: float) -> dict:
    ex = quant.export(params, policy)
    int_acc = accuracy_fn(model)(ex.params, x_test, y_test)
    if int_acc != fake_acc:
        raise AssertionError(f"{policy}: integer inference accuracy {int_acc} != fake-quant accuracy {fake_acc}")
    return {
        "int_accuracy": int_acc,
        "float_bytes": ex.float_bytes,
        "model_bytes": ex.quantized_bytes,
        "stored_bytes": ex.stored_bytes,
        "size_ratio": ex.float_bytes / ex.quantized_bytes,
    }


def centralized(model_name, policy, x, y, x_test, y_test, args) -> dict:
    model = make_model(model_name, policy)
    run_key = jax.random.key(args.seed)
    params = model.init(keys.purpose_key(run_key, keys.INIT), x[:1])
    opt = optax.sgd(args.central_lr, momentum=0.9)
    n, b = x.shape[0], args.batch_size
    steps = n // b

    def loss_fn(p, xb, yb, k):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xb, key=k), yb).mean()

    @jax.jit
    def epoch(params, opt_state, ekey):
        order = jax.random.permutation(keys.purpose_key(ekey, keys.BATCH), n)[: steps * b].reshape(steps, b)

        def step(carry, inp):
            p, s = carry
            idx, i = inp
            qkey = keys.purpose_key(keys.step_key(ekey, i), keys.QUANT)
            loss, g = jax.value_and_grad(loss_fn)(p, x[idx], y[idx], qkey)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (order, jnp.arange(steps)))
        return params, opt_state, losses.mean()

    opt_state = opt.init(params)
    t_compile = time.perf_counter()
    jax.block_until_ready(epoch.lower(params, opt_state, run_key).compile())
    t_compile = time.perf_counter() - t_compile
    for e in range(args.epochs):
        params, opt_state, loss = epoch(params, opt_state, keys.round_key(run_key, e))
    acc = accuracy_fn(model)(params, x_test, y_test)
    row = {
        "accuracy": acc,
        "final_train_loss": float(loss),
        "compile_seconds": t_compile,
        **export_report(model, policy, params, x_test, y_test, acc),
    }
    state = [params, opt_state, args.epochs]

    def time_one_epoch() -> float:
        t0 = time.perf_counter()
        p_, s_, l_ = epoch(state[0], state[1], keys.round_key(run_key, state[2]))
        jax.block_until_ready(l_)
        state[:] = [p_, s_, state[2] + 1]
        return time.perf_counter() - t0

    return row, time_one_epoch


def federated(model_name, policy, population, x_test, y_test, args) -> dict:
    model = make_model(model_name, policy)
    sim = engine.build(
        population,
        model,
        algorithms.fedavg(optax.sgd(args.client_lr)),
        engine.LocalSchedule(local_epochs=1, batch_size=args.batch_size),
        cohort_size=args.cohort_size,
    )
    result = engine.run(sim, rounds=args.rounds, eval_every=args.eval_every, seed=args.seed)
    params = jax.tree_util.tree_map(jnp.copy, result.state.params)  # run_block donates the state
    acc = accuracy_fn(model)(params, x_test, y_test)
    row = {
        "accuracy": acc,
        "engine_test_accuracy": result.final["test_accuracy"],
        "compile_seconds": result.compile_seconds,
        "curve": [(r["round"], r["test_accuracy"]) for r in result.records],
        **export_report(model, policy, params, x_test, y_test, acc),
    }
    state = [result.state]

    def time_one_round() -> float:
        t0 = time.perf_counter()
        state[0], m = sim.run_block(state[0], args.eval_every)
        jax.block_until_ready(m)
        return (time.perf_counter() - t0) / args.eval_every

    return row, time_one_round


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", default="../shared/data/mnist/mnist.npz")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    p.add_argument("--epochs", type=int, default=3, help="centralized epochs")
    p.add_argument("--central-lr", type=float, default=0.01)
    p.add_argument("--rounds", type=int, default=100, help="federated rounds")
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--cohort-size", type=int, default=10)
    p.add_argument("--num-clients", type=int, default=100)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--client-lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timing-repeats", type=int, default=7)
    p.add_argument("--only", default=None, help="comma-separated subset of policies, e.g. none,full")
    p.add_argument("--skip", default="", help="'centralized' or 'federated' to run one setting only")
    p.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    args = p.parse_args()

    x, y, x_test, y_test = data.load_mnist(args.data_path)
    x, y = jax.device_put(x), jax.device_put(y.astype(np.int32))
    x_test, y_test = jax.device_put(x_test), jax.device_put(y_test.astype(np.int32))
    population = data.build("mnist", data_path=args.data_path, num_clients=args.num_clients,
                            partition="dirichlet", alpha=args.alpha, seed=args.seed)
    chosen = POLICIES if args.only is None else [c for c in POLICIES if c[1] in args.only.split(",")]

    rows, timers = [], []
    for name, policy in chosen:
        row = {"name": name, "policy": policy}
        if args.skip != "centralized":
            row["centralized"], t = centralized(args.model, policy, x, y, x_test, y_test, args)
            timers.append((row, "centralized", "seconds_per_epoch", t))
        if args.skip != "federated":
            row["federated"], t = federated(args.model, policy, population, x_test, y_test, args)
            timers.append((row, "federated", "seconds_per_round", t))
        rows.append(row)
        print(name, {k: {kk: vv for kk, vv in v.items() if kk != "curve"} if isinstance(v, dict) else v
                     for k, v in row.items()}, flush=True)

    samples = {id(t): [] for *_, t in timers}
    for _ in range(args.timing_repeats):  # round-robin over policies
        for *_, t in timers:
            samples[id(t)].append(t())
    for row, setting, tkey, t in timers:
        row[setting][tkey] = float(np.median(samples[id(t)]))
        row[setting][tkey + "_samples"] = samples[id(t)]

    base = next((r for r in rows if r["policy"] == "none"), None)
    for r in rows:
        for setting, tkey in (("centralized", "seconds_per_epoch"), ("federated", "seconds_per_round")):
            if base is not None and setting in r and setting in base:
                r[setting]["time_overhead"] = r[setting][tkey] / base[setting][tkey] - 1.0
                r[setting]["accuracy_drop_pp"] = 100 * (base[setting]["accuracy"] - r[setting]["accuracy"])

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = jax.devices()[0]
    arch = "MLP 784-200-200-10" if args.model == "mlp" else "CNN (McMahan et al. 2017)"
    meta = {
        "benchmark": "quant_accuracy",
        "model": arch,
        "centralized": f"{args.epochs} epochs of SGD (momentum 0.9, lr {args.central_lr}, batch {args.batch_size}) "
                       "on the 24,345 training images of the shared MNIST file",
        "federated": f"FedAvg, MNIST Dirichlet({args.alpha}) over {args.num_clients} clients, {args.cohort_size} "
                     f"per round, {args.rounds} rounds, 1 local epoch (batch {args.batch_size}, lr {args.client_lr}), "
                     "server SGD lr 1",
        "seed": args.seed,
        "machine": {"platform": dev.platform, "device": str(dev.device_kind), "num_devices": jax.device_count(),
                    "cpu": platform.processor() or platform.machine()},
        "jax": jax.__version__,
        "command": "python benchmarks/quant_accuracy.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out",) and v not in (None, "")),
    }
    (out / "quant_accuracy.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")

    lines = ["# Quantization-aware training: accuracy, model size, round-time overhead", "",
             f"Model: {meta['model']}. Seed {args.seed}. Evaluation on the 10,000 MNIST test images with "
             "round-to-nearest fake quantization; `int acc` is inference from the exported integer tensors "
             "(identical by construction, checked). Model bytes count codes packed at their bit width plus "
             "float32 scales and the float biases.", "",
             f"Machine: {meta['machine']}, jax {meta['jax']}.", "", f"Command: `{meta['command']}`", ""]
    for setting, desc, tkey, unit in (("centralized", meta["centralized"], "seconds_per_epoch", "s/epoch"),
                                      ("federated", meta["federated"], "seconds_per_round", "ms/round")):
        if not any(setting in r for r in rows):
            continue
        scale = 1e3 if unit == "ms/round" else 1.0
        lines += [f"## {setting.capitalize()}", "", desc + ".", "",
                  f"| policy | preset | test acc | drop (pp) | int acc | model bytes | vs float32 | {unit} | QAT overhead |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            s = r.get(setting)
            if s is None:
                continue
            lines.append(
                f"| {r['name']} | `{r['policy']}` | {s['accuracy']:.4f} | {s.get('accuracy_drop_pp', 0):+.2f} | "
                f"{s['int_accuracy']:.4f} | {s['model_bytes']:,} | {s['size_ratio']:.1f}x smaller | "
                f"{s[tkey] * scale:.{1 if scale > 1 else 2}f} | {100 * s.get('time_overhead', 0):+.0f}% |"
            )
        lines.append("")
    (out / "quant_accuracy.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'quant_accuracy.json'} and .md")


if __name__ == "__main__":
    main()
