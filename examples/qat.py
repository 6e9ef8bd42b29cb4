"""Quantization-aware training (QAT) of the clients: every local step runs the model fake-quantized.

Clients train an MLP whose weights and activations are fake-quantized in the forward pass (straight-through
gradients), under a preset policy per run: float, ``full`` (int8 weights and activations), ``w4a8`` (4-bit
weights, 8-bit activations) and ``mixed`` (8-bit first and last layers, 4-bit elsewhere). For each, the
script prints test accuracy (of the fake-quantized model), the model's size at its quantized widths and
its BOPs (MACs x weight bits x activation bits, van Baalen et al. 2020).

    python examples/qat.py --data-path ../shared/data/mnist/mnist.npz
    python examples/qat.py --presets none,w4a8,nf4 --rounds 50
"""
import argparse

import jax.numpy as jnp
import optax

from jaxqfl import algorithms, data, engine, models, quant
from jaxqfl.models.cost import model_cost


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", default="../shared/data/mnist/mnist.npz", help="Keras mnist.npz")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--num-clients", type=int, default=100)
    p.add_argument("--cohort-size", type=int, default=10)
    p.add_argument("--presets", default="none,full,w4a8,mixed", help=f"comma-separated, of {', '.join(quant.PRESETS)}")
    args = p.parse_args()

    population = data.build("mnist", data_path=args.data_path, num_clients=args.num_clients, partition="dirichlet",
                            alpha=0.5, seed=0)
    one_example = jnp.zeros((1,) + population.feature_shape)
    for preset in args.presets.split(","):
        policy = None if preset == "none" else quant.preset(preset)
        model = models.mlp(hidden=(200, 200), num_outputs=10, policy=policy)
        sim = engine.build(population, model, algorithms.fedavg(optax.sgd(0.05)),
                           engine.LocalSchedule(local_steps=20, batch_size=32), cohort_size=args.cohort_size)
        result = engine.run(sim, rounds=args.rounds, eval_every=args.rounds, seed=0)
        cost = model_cost(models.mlp(hidden=(200, 200), num_outputs=10), policy, one_example)
        print(f"{preset:>6}: test accuracy {result.final['test_accuracy']:.4f}, model {cost.model_bytes / 1e3:.0f} kB "
              f"(float {cost.float_bytes / 1e3:.0f} kB), {cost.bops / 1e6:.1f} MBOPs an example")


if __name__ == "__main__":
    main()
