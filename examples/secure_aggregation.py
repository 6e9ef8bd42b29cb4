"""Secure aggregation (SecAgg+, Bell et al. 2020) of 8-bit updates, with clients dropping out mid-round.

Clients quantize their update on a cohort-shared 8-bit grid, mask it with pairwise and self masks mod 2^b,
and some drop out after masking; the server unmasks with Shamir shares of the survivors and learns only the
survivors' (example-weighted) sum. The result equals the plain integer-domain mean of the survivors; the
script trains the same model with the float mean, the integer mean and the secure sum and prints accuracy
and what each client sends (the protocol's keys and shares included).

    python examples/secure_aggregation.py --data-path ../shared/data/mnist/mnist.npz
    python examples/secure_aggregation.py --dropout 0.3 --rounds 20
"""
import argparse

import numpy as np
import optax

from jaxqfl import aggregate, algorithms, compress, data, engine, models


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", default="../shared/data/mnist/mnist.npz", help="Keras mnist.npz")
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--num-clients", type=int, default=500)
    p.add_argument("--cohort-size", type=int, default=50)
    p.add_argument("--dropout", type=float, default=0.1, help="probability a client drops out after masking")
    args = p.parse_args()

    population = data.build("mnist", data_path=args.data_path, num_clients=args.num_clients, seed=0)
    codec = compress.from_spec("uniform:8")
    largest_weight = int(population.counts.max())  # example weighting: the largest weight is the largest client
    aggregators = {
        "float mean": aggregate.mean(),
        "integer mean": aggregate.integer_mean(codec),
        f"SecAgg+, {args.dropout:.0%} dropout": aggregate.secure_sum(
            codec, num_clients=args.num_clients, cohort_size=args.cohort_size, protocol="secagg+",
            dropout=args.dropout, max_weight=largest_weight),
    }
    for name, aggregator in aggregators.items():
        sim = engine.build(population, models.logistic_regression(num_outputs=10), algorithms.fedavg(optax.sgd(0.1)),
                           engine.LocalSchedule(local_steps=10, batch_size=16), cohort_size=args.cohort_size,
                           aggregator=aggregator)
        result = engine.run(sim, rounds=args.rounds, eval_every=args.rounds, seed=0)
        kbits = result.uplink_bits_total / (args.rounds * args.cohort_size) / 1e3
        line = f"{name:>22}: test accuracy {result.final['test_accuracy']:.4f}, uplink {kbits:.1f} kbit/client/round"
        survivors = result.final.get("server_secagg_survivors_per_round")
        if survivors is not None:
            failed = int(result.final["server_secagg_failed_rounds"])
            line += f", survivors {np.mean(survivors):.1f}/{args.cohort_size} a round, {failed} failed rounds"
        print(line)


if __name__ == "__main__":
    main()
