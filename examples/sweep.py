"""A hyper-parameter and seed sweep as ONE compiled program: the round is vmapped over a config axis.

Every (client learning rate, seed) pair of the grid is a config with its own run key; the population is
shared. ``make_algorithm(hp)`` receives each config's values as traced scalars, so all configs share one
compilation. The script prints the mean and standard deviation over seeds of each learning rate's final
test accuracy, and the sweep's time.

    python examples/sweep.py --data-path ../shared/data/mnist/mnist.npz
    python examples/sweep.py --seeds 8 --lrs 0.01,0.1,1.0
"""
import argparse
import time

import numpy as np
import optax

from jaxqfl import algorithms, data, engine, models


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", default="../shared/data/mnist/mnist.npz", help="Keras mnist.npz")
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--seeds", type=int, default=4, help="seeds 0 .. N-1 per learning rate")
    p.add_argument("--lrs", default="0.003,0.03,0.3", help="client learning rates, comma-separated")
    args = p.parse_args()

    population = data.build("mnist", data_path=args.data_path, num_clients=100, partition="dirichlet", alpha=0.5)
    lrs = [float(v) for v in args.lrs.split(",")]
    configs = engine.grid(list(range(args.seeds)), client_lr=lrs)  # [{"client_lr": .., "seed": ..}, ...]
    sweep = engine.build_sweep(population, models.logistic_regression(num_outputs=10),
                               lambda hp: algorithms.fedavg(optax.sgd(hp["client_lr"])),
                               engine.LocalSchedule(local_steps=10, batch_size=32), configs=configs, cohort_size=10)
    start = time.perf_counter()
    results = engine.run_sweep(sweep, rounds=args.rounds, eval_every=args.rounds)
    seconds = time.perf_counter() - start

    print(f"{len(configs)} configs x {args.rounds} rounds in one program: {seconds:.1f} s")
    print("client_lr  seeds  test accuracy (mean +- std over seeds)")
    for lr in lrs:
        acc = [r.final["test_accuracy"] for c, r in zip(configs, results) if c["client_lr"] == lr]
        print(f"{lr:>9g}  {len(acc):>5}  {np.mean(acc):.4f} +- {np.std(acc, ddof=1) if len(acc) > 1 else 0.0:.4f}")


if __name__ == "__main__":
    main()
