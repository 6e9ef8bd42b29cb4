"""Per-client evaluation of the models clients use, and per-client test rows for pooled test sets.

* ``data.split_test_by_labels``: every pooled test row goes to one client, in
  proportion to the clients' training counts of its label; pooled metrics do
  not change.
* ``Simulation.evaluate_clients`` equals a NumPy loop over clients: with Ditto's
  personal models, and with the global model fine-tuned K full-batch steps on
  each client's training rows (TFF's personalization evaluation); with neither,
  it equals the pooled program's per-client numbers (two independent programs).
* Its numbers do not depend on the device count, the chunk size or the home.
* On MNIST with 2 label shards per client, Ditto's and FedRep's clients do
  better on their own test rows than FedAvg's global model (the papers' headline,
  in direction).
"""
import jax
import numpy as np
import optax
import pytest

from jaxqfl import algorithms, data, engine, models
from jaxqfl.engine.client_evaluation import FineTune, build_client_evaluate
from jaxqfl.engine.schedule import LocalSchedule
from populations import regression_population

from conftest import MNIST_PATH as MNIST


@pytest.fixture(scope="module")
def population():
    return data.build("synthetic", num_clients=12, seed=3, max_size=80)


def _softmax_ce_grad(w, b, x, y):
    z = x @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return x.T @ p / len(y), p.mean(0)


def _numpy_client_accuracy(pop, params_of_client, fine_tune_steps=0, lr=0.0):
    """A loop over clients: client c's model (fine-tuned full batch on its training rows), accuracy on its rows."""
    acc, at = [], 0
    for c, n in enumerate(pop.test_counts):
        w, b = (np.asarray(params_of_client(c)["Dense_0"][k], np.float64) for k in ("kernel", "bias"))
        xs, ys = pop.client(c)
        xs = np.asarray(xs, np.float64).reshape(len(ys), -1)
        for _ in range(fine_tune_steps):
            gw, gb = _softmax_ce_grad(w, b, xs, np.asarray(ys))
            w, b = w - lr * gw, b - lr * gb
        x, y = pop.x_test[at:at + n].astype(np.float64).reshape(n, -1), pop.y_test[at:at + n]
        at += n
        if n:
            acc.append(np.mean((x @ w + b).argmax(1) == y))
    return np.array(acc)


def _sim(pop, algorithm, devices=1, chunk=2, home="auto", personal_eval=None):
    return engine.build(pop, models.logistic_regression(pop.num_classes), algorithm,
                        LocalSchedule(local_steps=3, batch_size=8), cohort_size=6, num_devices=devices,
                        chunk_size=chunk, client_state=home, personal_eval=personal_eval, eval_batch_size=32)


def test_ditto_personal_models_are_evaluated_per_client_as_a_numpy_loop(population):
    sim = _sim(population, algorithms.ditto(optax.sgd(0.3), 0.3, 0.05))
    state, _ = sim.run_block(sim.init(0), 4)
    state = jax.device_get(state)
    ev = sim.evaluate_clients(state)
    personal = state.client_states["algorithm"]
    acc = _numpy_client_accuracy(population, lambda c: jax.tree.map(lambda a: a[c], personal))
    assert np.ptp(acc) > 0.1
    np.testing.assert_allclose(ev["client_accuracy_mean"], acc.mean(), atol=1e-6)
    np.testing.assert_allclose(ev["client_accuracy_p10"], np.percentile(acc, 10), atol=1e-6)
    np.testing.assert_allclose(ev["client_accuracy_p90"], np.percentile(acc, 90), atol=1e-6)
    np.testing.assert_allclose(ev["client_accuracy_min"], acc.min(), atol=1e-6)


def test_fine_tuned_global_model_per_client_equals_numpy(population):
    steps, lr = 3, 0.5
    sim = _sim(population, algorithms.fedavg(optax.sgd(0.3)), personal_eval=FineTune(steps, lr, None))
    state, _ = sim.run_block(sim.init(0), 2)
    params = jax.device_get(state.params)
    ev = sim.evaluate_clients(state)
    acc = _numpy_client_accuracy(population, lambda c: params, steps, lr)
    base = _numpy_client_accuracy(population, lambda c: params)
    assert acc.mean() != base.mean()  # the fine-tuning changed the models
    np.testing.assert_allclose(ev["client_accuracy_mean"], acc.mean(), atol=1e-6)
    np.testing.assert_allclose(ev["client_accuracy_min"], acc.min(), atol=1e-6)


def test_without_fine_tuning_the_client_program_equals_the_pooled_programs_per_client_numbers(population):
    sim = _sim(population, algorithms.fedavg(optax.sgd(0.3)))
    assert sim.evaluate_clients is None  # nothing personal: the pooled program alone
    state, _ = sim.run_block(sim.init(0), 2)
    pooled = sim.evaluate(state.params)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("clients",))
    model = models.logistic_regression(population.num_classes)
    from jaxqfl.engine.simulation import device_data
    from jaxqfl.tasks import default_for

    own = build_client_evaluate(population, model, default_for(population), mesh, algorithms.fedavg(optax.sgd(0.1)),
                                device_data(population, mesh), fine_tune=FineTune(), chunk_size=2)(state)
    assert own and set(own) <= set(pooled)
    for k, v in own.items():
        np.testing.assert_allclose(v, pooled[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.slow
def test_per_client_evaluation_does_not_depend_on_devices_chunks_or_home(population):
    results = []
    for devices, chunk, home in [(1, 6, "replicated"), (4, 1, "sharded"), (2, 3, "host")]:
        sim = _sim(population, algorithms.ditto(optax.sgd(0.3), 0.3, 0.1), devices, chunk, home,
                   personal_eval=FineTune(2, 0.2, 4))  # minibatch fine-tuning: keys by client id
        state, _ = sim.run_block(sim.init(0), 3)
        results.append(sim.evaluate_clients(state))
    for other in results[1:]:
        assert other.keys() == results[0].keys()
        for k in results[0]:
            np.testing.assert_allclose(other[k], results[0][k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_engine_run_reports_personal_and_global_per_client_numbers(population):
    res = engine.run(_sim(population, algorithms.fedrep(optax.sgd(0.3), "bias")), rounds=2, eval_every=2)
    rec = res.records[-1]
    for k in ("test_client_accuracy_mean", "test_client_accuracy_p10", "test_global_client_accuracy_mean"):
        assert k in rec
    assert rec["test_client_accuracy_mean"] != rec["test_global_client_accuracy_mean"]


def test_split_test_by_labels_partitions_the_pooled_rows_by_the_clients_labels():
    pop = data.build("mnist", data_path=MNIST, num_clients=20, partition="shards", seed=1)
    split = data.split_test_by_labels(pop, seed=0)
    assert split.test_counts.sum() == pop.x_test.shape[0]  # every label is trained on by someone: all rows owned
    # the same rows, reordered (row sums as fingerprints)
    np.testing.assert_allclose(np.sort(split.x_test.reshape(len(split.x_test), -1).sum(1)),
                               np.sort(pop.x_test.reshape(len(pop.x_test), -1).sum(1)), rtol=1e-6)
    at = 0
    for c, n in enumerate(split.test_counts):
        _, y_train = pop.client(c)
        train = np.bincount(y_train, minlength=10)
        test = np.bincount(split.y_test[at:at + n], minlength=10)
        at += n
        assert set(np.flatnonzero(test)) <= set(np.flatnonzero(train))  # only the client's own labels
    # per label: the rows go to the clients in proportion to their training counts (largest remainder: within 1)
    label_rows = np.bincount(pop.y_test, minlength=10)
    owners = np.repeat(np.arange(20), split.test_counts)
    totals = np.zeros((20, 10))
    np.add.at(totals, (np.repeat(np.arange(20), pop.counts), pop.y), 1)
    got = np.zeros((20, 10))
    np.add.at(got, (owners, split.y_test), 1)
    want = label_rows * totals / totals.sum(0)
    assert np.abs(got - want).max() < 1.0 and (got.sum(0) == label_rows).all()


def test_split_is_invariant_to_an_increasing_relabelling_however_many_classes_it_implies():
    """The split depends on the classes' order only: labels l -> 10**8 l (a population of ~10**9 classes) split
    as the original does, in the memory of the rows (no clients x classes table: 134 GiB here)."""
    import dataclasses

    pop = data.build("mnist", data_path=MNIST, num_clients=20, partition="shards", seed=1)
    big = dataclasses.replace(pop, y=pop.y.astype(np.int64) * 10**8, y_test=pop.y_test.astype(np.int64) * 10**8,
                              num_classes=9 * 10**8 + 1)
    a, b = data.split_test_by_labels(pop, seed=4), data.split_test_by_labels(big, seed=4)
    np.testing.assert_array_equal(a.test_counts, b.test_counts)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    np.testing.assert_array_equal(a.y_test.astype(np.int64) * 10**8, b.y_test)


@pytest.mark.slow
def test_split_keeps_the_pooled_metrics_and_refuses_what_it_cannot_split():
    pop = data.build("mnist", data_path=MNIST, num_clients=10, partition="dirichlet", alpha=0.5, seed=2)
    split = data.split_test_by_labels(pop, seed=3)
    algorithm, schedule = algorithms.fedavg(optax.sgd(0.1)), LocalSchedule(local_steps=1, batch_size=8)
    evs = [engine.build(p, models.logistic_regression(10), algorithm, schedule, cohort_size=5, num_devices=2,
                        chunk_size=1).evaluate for p in (pop, split)]
    params = models.logistic_regression(10).init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))
    a, b = evs[0](params), evs[1](params)
    assert a["accuracy"] == b["accuracy"] and "client_accuracy_mean" in b and "client_accuracy_mean" not in a
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    with pytest.raises(ValueError, match="already gives each client its own test rows"):
        data.split_test_by_labels(split)
    with pytest.raises(ValueError, match="needs class labels"):
        data.split_test_by_labels(regression_population([5, 6, 7]))


def test_fine_tuning_needs_client_test_rows_and_sane_settings():
    pop = data.build("mnist", data_path=MNIST, num_clients=10, partition="iid", seed=0)
    with pytest.raises(ValueError, match="split_test_by_labels"):
        engine.build(pop, models.logistic_regression(10), algorithms.fedavg(optax.sgd(0.1)),
                     LocalSchedule(local_steps=1, batch_size=8), cohort_size=5, num_devices=1, chunk_size=1,
                     personal_eval=FineTune(2, 0.1, 8))
    for bad, message in [(FineTune(-1), "steps must be a non-negative integer"),
                         (FineTune(1, float("nan")), "learning rate must be a finite number > 0"),
                         (FineTune(1, 0.1, 0), "batch size must be a positive integer")]:
        with pytest.raises(ValueError, match=message):
            bad.check()
    with pytest.warns(UserWarning, match="personal models are not evaluated"):
        engine.build(pop, models.logistic_regression(10), algorithms.ditto(optax.sgd(0.1), 0.1),
                     LocalSchedule(local_steps=1, batch_size=8), cohort_size=5, num_devices=1, chunk_size=1)


@pytest.mark.slow  # a quality check on real data (35 s): benchmarks/personalization.py measures it in full
def test_on_mnist_shards_personalized_clients_beat_the_global_model_on_their_own_rows():
    pop = data.split_test_by_labels(
        data.build("mnist", data_path=MNIST, num_clients=50, partition="shards", seed=0), seed=0)
    model = models.mlp((64,), 10)
    means = {}
    for name, algorithm in [("fedavg", algorithms.fedavg(optax.sgd(0.05))),
                            ("ditto", algorithms.ditto(optax.sgd(0.05), 0.05, 0.1)),
                            ("fedrep", algorithms.fedrep(optax.sgd(0.05), "Dense_1"))]:
        sim = engine.build(pop, model, algorithm, LocalSchedule(local_steps=10, batch_size=32), cohort_size=10,
                           num_devices=2, chunk_size=5)
        means[name] = engine.run(sim, rounds=30, eval_every=30).records[-1]["test_client_accuracy_mean"]
    assert means["ditto"] > means["fedavg"] + 0.05 and means["fedrep"] > means["fedavg"] + 0.05, means
