"""DP-FedAvg (McMahan et al. 2018) with an (epsilon, delta) report, next to the same run without privacy.

Each sampled client's update is clipped to L2 norm ``--clip``; the server adds Gaussian noise of std
``z * clip`` to the sum. Clients join each round by Poisson sampling (rate cohort / clients), and z is
calibrated with ``jaxqfl.privacy`` so that the whole run spends ``--epsilon`` at delta = 1 / N^1.1.

    python examples/dp.py                      # Synthetic(1,1), 2000 clients, epsilon 8
    python examples/dp.py --epsilon 2 --rounds 100
"""
import argparse

import optax

from jaxqfl import aggregate, algorithms, data, engine, models, privacy


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--num-clients", type=int, default=2000)
    p.add_argument("--cohort-size", type=int, default=100, help="expected clients per round")
    p.add_argument("--epsilon", type=float, default=8.0, help="target epsilon of the whole run")
    p.add_argument("--clip", type=float, default=0.5, help="L2 clip norm of a client's update")
    args = p.parse_args()

    population = data.build("synthetic", num_clients=args.num_clients, seed=0)
    delta = args.num_clients ** -1.1
    accounting = dict(num_clients=args.num_clients, cohort_size=args.cohort_size, sampling="poisson")
    z = privacy.noise_for_epsilon(args.epsilon, delta, args.rounds, **accounting)

    aggregators = {
        "no privacy": aggregate.mean(),
        # Under Poisson sampling the noisy sum is divided by the EXPECTED cohort (a fixed denominator).
        "DP-FedAvg": aggregate.dp_mean(args.clip, z, denominator=args.cohort_size),
    }
    for name, aggregator in aggregators.items():
        sim = engine.build(population, models.logistic_regression(num_outputs=population.num_classes),
                           algorithms.fedavg(optax.sgd(0.05), algorithms.server_optimizer("sgd", 1.0),
                                             weighting="uniform"),
                           engine.LocalSchedule(local_steps=10, batch_size=10),
                           cohort_size=args.cohort_size, sampling="poisson", aggregator=aggregator)
        result = engine.run(sim, rounds=args.rounds, eval_every=args.rounds, seed=0)
        print(f"{name:>10}: test accuracy {result.final['test_accuracy']:.4f}")

    eps = privacy.epsilon(z, delta, args.rounds, **accounting)
    print(f"epsilon {eps:.3f} at delta {delta:.2e} after {args.rounds} rounds "
          f"(noise multiplier z = {z:.3f}, clip {args.clip}, {privacy.accountant_name('poisson')} accountant)")


if __name__ == "__main__":
    main()
