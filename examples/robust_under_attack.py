"""A robust aggregation rule against the plain mean, under a Byzantine attack.

A fixed ``--fraction`` of the clients is malicious (drawn once from the seed) and sends ``-scale x`` its
honest update (sign flipping). The weighted mean follows them; the coordinate-wise median and trimmed mean
(Yin et al. 2018) and Krum (Blanchard et al. 2017) do not. The attack wraps any rule
(``aggregate.with_attack``) and runs before the uplink codec, so it composes with every codec.

    python examples/robust_under_attack.py --data-path ../shared/data/mnist/mnist.npz
    python examples/robust_under_attack.py --fraction 0.3 --scale 2
"""
import argparse

import optax

from jaxqfl import aggregate, algorithms, data, engine, models


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", default="../shared/data/mnist/mnist.npz", help="Keras mnist.npz")
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--num-clients", type=int, default=200)
    p.add_argument("--cohort-size", type=int, default=20)
    p.add_argument("--fraction", type=float, default=0.2, help="share of the population that is malicious")
    p.add_argument("--scale", type=float, default=5.0, help="malicious clients send -scale x their update")
    args = p.parse_args()

    population = data.build("mnist", data_path=args.data_path, num_clients=args.num_clients, seed=0)
    attack = aggregate.attacks.sign_flip(args.scale)
    rules = {
        "mean, no attack": aggregate.mean(),
        "mean": aggregate.with_attack(attack, args.fraction, aggregate.mean(), num_clients=args.num_clients),
        "median": aggregate.with_attack(attack, args.fraction, aggregate.median(), num_clients=args.num_clients),
        "trimmed mean": aggregate.with_attack(attack, args.fraction, aggregate.trimmed_mean(args.fraction),
                                              num_clients=args.num_clients),
        "krum": aggregate.with_attack(attack, args.fraction, aggregate.krum(args.fraction),
                                      num_clients=args.num_clients),
    }
    for name, aggregator in rules.items():
        sim = engine.build(population, models.logistic_regression(num_outputs=10),
                           algorithms.fedavg(optax.sgd(0.1), weighting="uniform"),
                           engine.LocalSchedule(local_steps=10, batch_size=16), cohort_size=args.cohort_size,
                           aggregator=aggregator)
        result = engine.run(sim, rounds=args.rounds, eval_every=args.rounds, seed=0)
        malicious = result.final.get("server_malicious_in_cohort_per_round")  # the threat model's count
        print(f"{name:>16}: test accuracy {result.final['test_accuracy']:.4f}"
              + (f" ({sum(malicious) / len(malicious):.1f} malicious clients a round)" if malicious else ""))


if __name__ == "__main__":
    main()
