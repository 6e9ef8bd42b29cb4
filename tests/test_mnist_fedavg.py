"""End to end on real data: FedAvg on MNIST, 100 IID clients, MLP, reaches >= 95% test accuracy."""
import optax
import pytest

from jaxqfl import algorithms, data, engine, models


@pytest.mark.slow  # 100 rounds of 20 MNIST clients x 2 epochs: minutes on a 2-core CPU
def test_fedavg_mnist_iid_mlp_reaches_95_percent(mnist_path):
    population = data.build("mnist", data_path=mnist_path, num_clients=100, partition="iid", seed=0)
    sim = engine.build(
        population,
        models.mlp(hidden=(200, 200), num_outputs=10),
        algorithms.fedavg(optax.sgd(0.1)),
        engine.LocalSchedule(local_epochs=2, batch_size=32),
        cohort_size=20,
    )
    result = engine.run(sim, rounds=100, eval_every=50, seed=0)
    assert result.final["test_accuracy"] >= 0.95, result.records
    assert result.records[0]["test_accuracy"] < result.final["test_accuracy"]
