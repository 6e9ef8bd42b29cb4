"""FedAvg vs FedAdam on non-IID MNIST (Dirichlet alpha = 0.5), 100 clients, MLP.

    python examples/mnist_fedavg.py --data-path ../shared/data/mnist/mnist.npz
"""
import argparse

import optax

from jaxqfl import algorithms, data, engine, models


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-path", default="../shared/data/mnist/mnist.npz", help="Keras mnist.npz")
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()

    population = data.build("mnist", data_path=args.data_path, num_clients=100, partition="dirichlet", alpha=0.5)
    for name, server in [("FedAvg", algorithms.server_optimizer("sgd", 1.0)),
                         ("FedAdam", algorithms.server_optimizer("adam", 3e-3))]:
        sim = engine.build(
            population,
            models.mlp(hidden=(200, 200), num_outputs=10),
            algorithms.fedavg(optax.sgd(0.05), server),
            engine.LocalSchedule(local_epochs=1, batch_size=32),
            cohort_size=10,
        )
        result = engine.run(sim, rounds=args.rounds, eval_every=min(10, args.rounds), seed=0)
        print(f"{name}: test accuracy {result.final['test_accuracy']:.4f}, "
              f"{result.seconds_per_round * 1e3:.1f} ms/round, compile {result.compile_seconds:.1f} s")


if __name__ == "__main__":
    main()
