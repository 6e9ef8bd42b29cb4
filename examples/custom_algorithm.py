"""A new FL algorithm written in the script, against the protocol of ``jaxqfl/algorithms/base.py``.

"Persistent local momentum": each client runs heavy-ball SGD, ``m_i <- beta m_i + g``, ``y <- y - eta m_i``,
and KEEPS its momentum buffer m_i between the rounds it is sampled in (a per-client state the engine stores
for the whole population and gathers for each cohort); the server moves ``x <- x + eta_g mean_i(y_i - x)``.
The seven functions are pure jnp and run inside the engine's vmap over clients; the engine never knows which
algorithm it runs. Compared with FedAvg (plain local SGD) at the same step size.

    python examples/custom_algorithm.py --data-path ../shared/data/mnist/mnist.npz
    python examples/custom_algorithm.py --beta 0.5 --rounds 60
"""
import argparse
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxqfl import algorithms, data, engine, models
from jaxqfl.algorithms import Algorithm, ClientOutput, ServerMessage


class LocalState(NamedTuple):
    params: Any  # the engine takes the task loss's gradient at local.params
    momentum: Any


def persistent_momentum(lr: float, beta: float = 0.9, server_lr: float = 1.0) -> Algorithm:
    def client_step(local, grads, message, info):
        momentum = jax.tree.map(lambda m, g: beta * m + g, local.momentum, grads)
        return LocalState(jax.tree.map(lambda p, m: p - lr * m, local.params, momentum), momentum)

    def client_final(local, message, client_state, info):
        delta = jax.tree.map(jnp.subtract, local.params, message.params)  # upload y_i - x, weight n_i, keep m_i
        return ClientOutput(delta, info.num_examples.astype(jnp.float32), local.momentum, {})

    return Algorithm(
        init=lambda params: (),  # no server state
        client_state_init=lambda params: jax.tree.map(jnp.zeros_like, params),  # ONE client's m_i
        broadcast=lambda params, state: ServerMessage(params),
        client_init=lambda message, momentum, info: LocalState(message.params, momentum),
        client_step=client_step,
        client_final=client_final,
        server_update=lambda params, state, mean_delta, info: (
            jax.tree.map(lambda p, d: p + server_lr * d, params, mean_delta), state, {}),
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", default="../shared/data/mnist/mnist.npz", help="Keras mnist.npz")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--beta", type=float, default=0.9, help="momentum coefficient")
    p.add_argument("--lr", type=float, default=0.01, help="the clients' step size")
    args = p.parse_args()

    population = data.build("mnist", data_path=args.data_path, num_clients=100, partition="dirichlet", alpha=0.5)
    for name, algorithm in {"FedAvg": algorithms.fedavg(optax.sgd(args.lr)),
                            "persistent momentum": persistent_momentum(args.lr, args.beta)}.items():
        sim = engine.build(population, models.mlp(hidden=(64,), num_outputs=10), algorithm,
                           engine.LocalSchedule(local_steps=10, batch_size=32), cohort_size=10)
        result = engine.run(sim, rounds=args.rounds, eval_every=args.rounds, seed=0)
        print(f"{name:>19}: test accuracy {result.final['test_accuracy']:.4f}")


if __name__ == "__main__":
    main()
