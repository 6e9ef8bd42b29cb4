"""Post-training quantization of a federated model to an integer model (int8 x int8 -> int32 inference).

FedAvg trains a float MLP; then, with no retraining: cross-layer equalization, a federated calibration round
(clients compute activation min/max and histograms on their own rows, the server picks MSE-optimal input
ranges), AdaRound and bias correction on a few calibration rows, int32 biases, and the export to an integer
model. It prints the float and integer models' test accuracy and sizes.

    python examples/ptq_integer.py --data-path ../shared/data/mnist/mnist.npz
    python examples/ptq_integer.py --policy full --adaround-steps 0
"""
import argparse

import jax
import numpy as np
import optax

from jaxqfl import algorithms, data, engine, models, quant
from jaxqfl.ptq import federated_calibrate


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", default="../shared/data/mnist/mnist.npz", help="Keras mnist.npz")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--policy", default="w4a8", help="the integer model's preset: full (int8) or w4a8")
    p.add_argument("--calibration-clients", type=int, default=10)
    p.add_argument("--adaround-steps", type=int, default=200, help="0 skips AdaRound")
    args = p.parse_args()

    population = data.build("mnist", data_path=args.data_path, num_clients=100, seed=0)
    model, graph = models.mlp(hidden=(200,), num_outputs=10), models.mlp_graph(1)  # the model and its layer sequence
    sim = engine.build(population, model, algorithms.fedavg(optax.sgd(0.05)),
                       engine.LocalSchedule(local_steps=20, batch_size=32), cohort_size=10)
    params = engine.run(sim, rounds=args.rounds, eval_every=args.rounds, seed=0).state.params

    def accuracy(logits):
        return float(np.mean(np.argmax(np.asarray(logits), -1) == population.y_test))

    float_accuracy = accuracy(jax.jit(model.apply)(params, population.x_test))
    params = quant.equalize(params, graph)
    ranges = federated_calibrate(model, params, population, "mse",
                                 client_ids=np.arange(args.calibration_clients), rows_per_client=64)
    policy = quant.calibrated_policy(args.policy, params, ranges)
    inputs = models.layer_inputs(model, params, population.x[:640])  # every layer's input on 640 rows
    if args.adaround_steps:
        params = quant.adaround(params, policy, inputs, graph, steps=args.adaround_steps)
    params = quant.bias_correction(params, policy, inputs, graph)
    params = quant.bias_to_grid(params, policy, graph)
    int_model = quant.export_integer(params, policy, graph)
    int_accuracy = accuracy(quant.integer_apply(int_model, population.x_test))
    print(f"float model:   test accuracy {float_accuracy:.4f}, {int_model.float_bytes:,} bytes")
    print(f"integer model: test accuracy {int_accuracy:.4f}, {int_model.int_bytes:,} bytes ({args.policy})")


if __name__ == "__main__":
    main()
