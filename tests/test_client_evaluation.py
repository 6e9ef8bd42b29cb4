"""Per-client evaluation: the spread of accuracy and loss over clients, against a NumPy loop over clients.

Generated populations hold out the last rows of every client as its test rows
(``Population.test_counts``); the evaluation program sums each metric per client
and reports mean, std, 10th percentile and worst over the clients.
"""
import jax
import numpy as np
import optax
import pytest

from jaxqfl import algorithms, data, engine, models
from jaxqfl.engine.schedule import LocalSchedule


@pytest.fixture(scope="module")
def population():
    return data.build("synthetic", num_clients=12, seed=3, max_size=80)


def _evaluate(pop, num_devices):
    sim = engine.build(pop, models.logistic_regression(pop.num_classes), algorithms.fedavg(optax.sgd(0.1)),
                       LocalSchedule(local_steps=1, batch_size=8), cohort_size=4, num_devices=num_devices,
                       chunk_size=1, autotune=False, eval_batch_size=16)
    params = jax.tree.map(lambda a: a + 0.3 * np.random.default_rng(0).standard_normal(a.shape).astype(np.float32),
                          sim.init(0).params)  # a model whose clients differ
    return sim.evaluate(params), jax.device_get(params)


def _numpy_reference(pop, params):
    """A loop over clients: each client's accuracy and cross-entropy on its own held-out rows."""
    w, b = (np.asarray(params["Dense_0"][k], np.float64) for k in ("kernel", "bias"))
    acc, loss, at = [], [], 0
    for c, n in enumerate(pop.test_counts):
        x, y = pop.x_test[at:at + n].astype(np.float64), pop.y_test[at:at + n]
        at += n
        if n == 0:
            continue
        z = x.reshape(n, -1) @ w + b
        logp = z - z.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        acc.append(np.mean(z.argmax(1) == y))
        loss.append(-np.mean(logp[np.arange(n), y]))
    return np.array(acc), np.array(loss)


def test_generated_clients_hold_out_their_last_rows(population):
    sizes = population.counts + population.test_counts
    np.testing.assert_array_equal(population.test_counts, np.floor(0.1 * sizes).astype(int))


@pytest.mark.parametrize("num_devices", [1, 4])
def test_per_client_metrics_equal_a_loop_over_clients(population, num_devices):
    ev, params = _evaluate(population, num_devices)
    acc, loss = _numpy_reference(population, params)
    assert np.ptp(acc) > 0.1  # the clients do differ
    np.testing.assert_allclose(ev["client_accuracy_mean"], acc.mean(), atol=1e-6)
    np.testing.assert_allclose(ev["client_accuracy_p10"], np.percentile(acc, 10), atol=1e-6)
    np.testing.assert_allclose(ev["client_accuracy_min"], acc.min(), atol=1e-6)
    np.testing.assert_allclose(ev["client_accuracy_std"], acc.std(), atol=1e-6)
    np.testing.assert_allclose(ev["client_loss_mean"], loss.mean(), rtol=1e-5)
    np.testing.assert_allclose(ev["client_loss_max"], loss.max(), rtol=1e-5)
    np.testing.assert_allclose(ev["client_loss_p90"], np.percentile(loss, 90), rtol=1e-5)
    # the pooled numbers are unchanged: the example-weighted mean over all test rows
    n = population.test_counts
    np.testing.assert_allclose(ev["accuracy"], np.sum(acc * n[n > 0]) / n.sum(), atol=1e-6)


def test_clients_with_a_non_finite_mean_are_counted_and_only_then():
    """A diverged client model (NaN or inf loss) made every loss statistic NaN, written as null, with nothing
    saying why: the count of such clients is reported (a client with no held-out rows is not one)."""
    from jaxqfl.engine.client_metrics import spread

    counts = np.array([2, 3, 0, 1])
    loss = np.array([1.0, np.nan, 5.0, np.inf])  # client 2 holds no rows: not counted
    out = spread({"loss": loss, "accuracy": np.array([1.0, 2.0, 0.0, 1.0])}, counts)
    assert out["client_loss_nonfinite"] == 2 and "client_accuracy_nonfinite" not in out
    assert "client_loss_nonfinite" not in spread({"loss": np.array([1.0, 2.0])}, np.array([1, 1]))
