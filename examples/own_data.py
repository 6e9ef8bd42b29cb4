"""Your own numpy arrays as a federated population: rows, labels and the client each row belongs to.

``data.from_arrays(x, y, client_ids=...)`` makes each distinct id a client (natural partition) and holds out
10% of every client's rows as its test rows; ``partition="dirichlet", num_clients=...`` would re-split pooled
rows instead. Here the arrays are generated: each client's label rule is shifted by its own offset, so the
clients disagree a little. It prints the test accuracy on the held-out rows, against always guessing the
most frequent class.

    python examples/own_data.py
    python examples/own_data.py --num-clients 500 --rows 100000 --rounds 100
"""
import argparse

import numpy as np
import optax

from jaxqfl import algorithms, data, engine, models


def make_arrays(rows: int, num_clients: int, features: int, seed: int = 0):
    """Stand-in for loading your own data: x [N, d] float32, y [N] int labels, client [N] ids."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    client = rng.integers(0, num_clients, rows)
    shift = rng.normal(scale=0.5, size=num_clients)[client]  # each client's own bias
    y = np.digitize(x[:, 0] + 0.5 * x[:, 1] + shift, [-1.0, 0.0, 1.0])  # 4 classes
    return x, y, client


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--num-clients", type=int, default=200)
    p.add_argument("--rows", type=int, default=40000)
    p.add_argument("--cohort-size", type=int, default=20)
    args = p.parse_args()

    x, y, client = make_arrays(args.rows, args.num_clients, features=16)
    population = data.from_arrays(x, y, client_ids=client)
    print(f"{population.num_clients} clients, {population.num_examples} training rows, "
          f"{population.num_classes} classes, task {population.task}")
    sim = engine.build(population, models.mlp(hidden=(32,), num_outputs=population.num_classes),
                       algorithms.fedavg(optax.sgd(0.1)), engine.LocalSchedule(local_steps=10, batch_size=16),
                       cohort_size=min(args.cohort_size, population.num_clients))
    result = engine.run(sim, rounds=args.rounds, eval_every=args.rounds, seed=0)
    majority = np.bincount(population.y_test).max() / len(population.y_test)
    print(f"test accuracy {result.final['test_accuracy']:.4f} on {len(population.y_test)} held-out rows "
          f"(majority class {majority:.4f}), {result.seconds_per_round * 1e3:.1f} ms/round")


if __name__ == "__main__":
    main()
