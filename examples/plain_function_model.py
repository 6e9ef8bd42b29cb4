"""The engine takes any (init, apply) pair: here a hand-written two-layer network, no Flax.

    python examples/plain_function_model.py
    python examples/plain_function_model.py --rounds 300
"""
import argparse

import jax
import jax.numpy as jnp
import optax

from jaxqfl import algorithms, data, engine, models


def init(key, sample_x):
    k1, k2 = jax.random.split(key)
    d = sample_x.shape[-1]
    return {
        "w1": jax.random.normal(k1, (d, 32)) / jnp.sqrt(d),
        "b1": jnp.zeros(32),
        "w2": jax.random.normal(k2, (32, 10)) / jnp.sqrt(32.0),
        "b2": jnp.zeros(10),
    }


def apply(params, x, *, key=None):
    h = jax.nn.relu(x @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=100)
    args = p.parse_args()
    population = data.build("synthetic", num_clients=200, seed=0)
    sim = engine.build(
        population,
        models.from_functions(init, apply),
        algorithms.fedavg(optax.sgd(0.01)),
        engine.LocalSchedule(local_steps=20, batch_size=10),
        cohort_size=20,
    )
    result = engine.run(sim, rounds=args.rounds, eval_every=args.rounds, seed=0)
    print(f"test accuracy {result.final['test_accuracy']:.4f}, test loss {result.final['test_loss']:.4f}")


if __name__ == "__main__":
    main()
