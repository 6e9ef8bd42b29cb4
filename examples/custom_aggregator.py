"""A new aggregation rule written in the script, against the protocol of ``jaxqfl/aggregate/base.py``.

"Norm filter": the server keeps the clients whose update norm is at most ``factor`` times the cohort's median
norm and returns their weighted mean. It needs every client's update at once, so it is a ``"gather"`` rule:
``client`` (inside the vmap over clients) returns the summand to keep, ``server`` receives the stacked
``[M_pad, ...]`` summands with ``cohort.valid`` marking real clients. Under a model-replacement attack
(malicious clients send 10x their update, ``aggregate.attacks.scaling``) it is compared with the mean.

    python examples/custom_aggregator.py --data-path ../shared/data/mnist/mnist.npz
    python examples/custom_aggregator.py --factor 2 --fraction 0.3
"""
import argparse

import jax
import jax.numpy as jnp
import optax

from jaxqfl import aggregate, algorithms, data, engine, models
from jaxqfl.aggregate import Aggregator


def norm_filter(factor: float = 1.5) -> Aggregator:
    def client(update, weight, client_state, state, stats, info):
        norm = jnp.sqrt(sum(jnp.sum(u * u) for u in jax.tree.leaves(update)))
        return (update, weight, norm), client_state, {}

    def server(stacked, state, stats, cohort):
        updates, weights, norms = stacked  # [M_pad, ...]; padding slots hold garbage: mask them
        median = jnp.nanmedian(jnp.where(cohort.valid, norms, jnp.nan))
        keep = cohort.valid & (norms <= factor * median)
        w = jnp.where(keep, weights, 0.0)

        def mean(u):
            u = jnp.where(keep.reshape((-1,) + (1,) * (u.ndim - 1)), u, 0.0)
            return jnp.tensordot(w, u, 1) / jnp.maximum(w.sum(), 1e-30)

        kept = keep.sum() / jnp.maximum(cohort.valid.sum(), 1)
        return jax.tree.map(mean, updates), state, {"kept_fraction": kept.astype(jnp.float32)}

    return Aggregator(init=lambda params: (), client_state_init=lambda params: (), reduction="gather",
                      client=client, server=server)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", default="../shared/data/mnist/mnist.npz", help="Keras mnist.npz")
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--fraction", type=float, default=0.2, help="share of the population that is malicious")
    p.add_argument("--factor", type=float, default=1.5, help="keep norms <= factor x the cohort's median")
    args = p.parse_args()

    population = data.build("mnist", data_path=args.data_path, num_clients=200, seed=0)
    attack = aggregate.attacks.scaling(10.0)
    for name, rule in {"mean": aggregate.mean(), "norm filter": norm_filter(args.factor)}.items():
        aggregator = aggregate.with_attack(attack, args.fraction, rule, num_clients=population.num_clients)
        sim = engine.build(population, models.logistic_regression(num_outputs=10), algorithms.fedavg(optax.sgd(0.1)),
                           engine.LocalSchedule(local_steps=10, batch_size=16), cohort_size=20, aggregator=aggregator)
        result = engine.run(sim, rounds=args.rounds, eval_every=args.rounds, seed=0)
        kept = result.final.get("server_kept_fraction_per_round")
        print(f"{name:>11} under attack: test accuracy {result.final['test_accuracy']:.4f}"
              + (f", kept {sum(kept) / len(kept):.0%} of the cohort a round" if kept else ""))


if __name__ == "__main__":
    main()
