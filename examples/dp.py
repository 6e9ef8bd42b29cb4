"""DP-FedAvg (McMahan et al. 2018) with an (epsilon, delta) report, next to the same run without privacy.

Each sampled client's update is clipped to L2 norm ``--clip``; the server adds Gaussian noise of std
``z * clip`` to the sum once a round. Clients join each round by Poisson sampling (rate cohort / clients),
and z is calibrated with ``jaxqfl.privacy`` (dp-accounting) so that the whole run spends ``--epsilon`` at
delta = 1 / N^1.1 (user-level: all of one client's data). ``--noise-multiplier`` fixes z instead.

    python examples/dp.py --data-path ../shared/data/mnist/mnist.npz
    python examples/dp.py --epsilon 2 --rounds 100
"""
import argparse
import logging

import optax

from jaxqfl import aggregate, algorithms, data, engine, models, privacy


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", default="../shared/data/mnist/mnist.npz", help="Keras mnist.npz")
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--num-clients", type=int, default=1000)
    p.add_argument("--cohort-size", type=int, default=100, help="expected clients per round")
    p.add_argument("--epsilon", type=float, default=8.0, help="target epsilon of the whole run")
    p.add_argument("--noise-multiplier", type=float, help="z; default: calibrated to --epsilon")
    p.add_argument("--clip", type=float, default=1.0, help="L2 clip norm of a client's update")
    args = p.parse_args()
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's RDP convergence notes while calibrating

    population = data.build("mnist", data_path=args.data_path, num_clients=args.num_clients, seed=0)
    delta = args.num_clients ** -1.1
    accounting = dict(num_clients=args.num_clients, cohort_size=args.cohort_size, sampling="poisson")
    z = args.noise_multiplier
    if z is None:
        z = privacy.noise_for_epsilon(args.epsilon, delta, args.rounds, **accounting)

    aggregators = {
        "no privacy": aggregate.mean(),
        # Under Poisson sampling the noisy sum is divided by the EXPECTED cohort (a fixed denominator).
        "DP-FedAvg": aggregate.dp_mean(args.clip, z, denominator=args.cohort_size),
    }
    for name, aggregator in aggregators.items():
        sim = engine.build(population, models.logistic_regression(num_outputs=10),
                           algorithms.fedavg(optax.sgd(0.1), weighting="uniform"),  # DP weighs every client 1
                           engine.LocalSchedule(local_steps=10, batch_size=16),
                           cohort_size=args.cohort_size, sampling="poisson", aggregator=aggregator)
        result = engine.run(sim, rounds=args.rounds, eval_every=args.rounds, seed=0)
        print(f"{name:>10}: test accuracy {result.final['test_accuracy']:.4f}")

    eps = privacy.epsilon(z, delta, args.rounds, **accounting)
    print(f"epsilon {eps:.3f} at delta {delta:.2e} after {args.rounds} rounds (noise multiplier z = {z:.3f}, "
          f"clip {args.clip}, {privacy.accountant_name('poisson')} accountant)")


if __name__ == "__main__":
    main()
