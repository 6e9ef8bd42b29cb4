"""SCAFFOLD (Karimireddy et al. 2020) against FedAvg on pathologically non-IID MNIST (2 label shards a client).

With few labels per client, local steps drift toward each client's own optimum (client drift). SCAFFOLD's
control variates c_i and c correct each local step, ``y <- y - eta (g_i - c_i + c)``; both runs use the same
local learning rate, steps and cohorts. SCAFFOLD keeps one params-sized control variate per client, stored
for the whole population by the engine.

    python examples/scaffold_vs_fedavg.py --data-path ../shared/data/mnist/mnist.npz
    python examples/scaffold_vs_fedavg.py --rounds 100 --local-steps 20
"""
import argparse

import optax

from jaxqfl import algorithms, data, engine, models


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", default="../shared/data/mnist/mnist.npz", help="Keras mnist.npz")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--num-clients", type=int, default=100)
    p.add_argument("--cohort-size", type=int, default=10)
    p.add_argument("--local-steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.05, help="the clients' SGD step size")
    args = p.parse_args()

    population = data.build("mnist", data_path=args.data_path, num_clients=args.num_clients, partition="shards",
                            shards_per_client=2, seed=0)
    candidates = {
        "FedAvg": algorithms.fedavg(optax.sgd(args.lr), weighting="uniform"),  # SCAFFOLD weighs clients 1 too
        "SCAFFOLD": algorithms.scaffold(local_lr=args.lr, global_lr=1.0),
    }
    for name, algorithm in candidates.items():
        sim = engine.build(population, models.mlp(hidden=(64,), num_outputs=10), algorithm,
                           engine.LocalSchedule(local_steps=args.local_steps, batch_size=32),
                           cohort_size=args.cohort_size)
        result = engine.run(sim, rounds=args.rounds, eval_every=max(1, args.rounds // 4), seed=0)
        curve = ", ".join(f"{r['round']}: {r['test_accuracy']:.3f}" for r in result.records)
        print(f"{name:>8}: test accuracy by round  {curve}  "
              f"(final {result.final['test_accuracy']:.4f}, {result.seconds_per_round * 1e3:.0f} ms/round)")


if __name__ == "__main__":
    main()
