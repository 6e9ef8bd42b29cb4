"""Regression as a task: the FedSGD round is the centralised least-squares step, R^2 is NumPy's, the generator's law."""
import jax
import numpy as np
import pytest

from jaxqfl import algorithms, data, engine, models, tasks
from jaxqfl.engine import LocalSchedule


def _population(num_outputs, sizes=(5, 9, 3, 7), d=4, seed=0):
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=(d, num_outputs))
    y = x @ w + 0.3 * rng.normal(size=(n, num_outputs)) + 2.0
    y = (y[:, 0] if num_outputs == 1 else y).astype(np.float32)
    ids = np.repeat(np.arange(len(sizes)), sizes)
    x_test = rng.normal(size=(23, d)).astype(np.float32)
    y_test = (x_test @ w + 0.3 * rng.normal(size=(23, num_outputs)) + 2.0).astype(np.float32)
    y_test = y_test[:, 0] if num_outputs == 1 else y_test
    return data.from_arrays(x, y, client_ids=ids, x_test=x_test, y_test=y_test, task="regression")


@pytest.mark.parametrize("num_outputs", [1, 3])
def test_full_batch_fedsgd_round_is_the_least_squares_step_and_r2_is_numpys(num_outputs):
    pop = _population(num_outputs)
    lr = 0.05
    model = models.linear_regression(num_outputs)
    sim = engine.build(pop, model, algorithms.fedsgd(lr), LocalSchedule(local_steps=1, batch_size=None),
                       cohort_size=pop.num_clients, num_devices=2, eval_batch_size=4)  # 23 test rows: padded
    state = sim.init(1)
    w0 = np.asarray(state.params["Dense_0"]["kernel"], np.float64)  # [d, k]
    b0 = np.asarray(state.params["Dense_0"]["bias"], np.float64)  # [k]
    state, _ = sim.run_block(state, 1)
    # Centralised: loss = (1/N) sum_i ||W^T x_i + b - y_i||^2 over every client's rows.
    x = pop.x.astype(np.float64)
    y = pop.y.astype(np.float64).reshape(len(x), -1)
    residual = x @ w0 + b0 - y  # [N, k]
    grad_w = 2 * x.T @ residual / len(x)
    grad_b = 2 * residual.sum(0) / len(x)
    np.testing.assert_allclose(state.params["Dense_0"]["kernel"], w0 - lr * grad_w, atol=2e-5)
    np.testing.assert_allclose(state.params["Dense_0"]["bias"], b0 - lr * grad_b, atol=2e-5)

    # Test metrics against NumPy (and scikit-learn's variance-weighted R^2).
    ev = sim.evaluate(state.params)
    pred = np.asarray(model.apply(state.params, pop.x_test), np.float64).reshape(len(pop.x_test), -1)
    yt = pop.y_test.astype(np.float64).reshape(len(pop.x_test), -1)
    sse, sst = np.sum((pred - yt) ** 2), np.sum((yt - yt.mean(0)) ** 2)
    np.testing.assert_allclose(ev["mse"], np.mean((pred - yt) ** 2), rtol=1e-5)
    np.testing.assert_allclose(ev["rmse"], np.sqrt(np.mean((pred - yt) ** 2)), rtol=1e-5)
    np.testing.assert_allclose(ev["r2"], 1 - sse / sst, rtol=1e-5)
    from sklearn.metrics import r2_score

    np.testing.assert_allclose(ev["r2"], r2_score(yt, pred, multioutput="variance_weighted"), rtol=1e-5)
    assert -5 < ev["r2"] < 1


def test_r2_is_none_for_constant_test_targets_and_sst_is_exact():
    finish = tasks.regression().finish(np.full(5, 3.0))
    assert finish({"loss": 1.0})["r2"] is None
    # float64 two-pass SST: a large offset does not swamp the spread.
    y = 1e6 + np.array([0.0, 1.0, 2.0])
    assert tasks.r2_denominator(y) == 2.0


def test_synthetic_regression_targets_follow_each_clients_linear_model():
    alpha, beta = 1.0, 0.5
    kw = dict(size_mean=5.0, size_sigma=0.0, min_size=400, num_features=8)
    pop = data.synthetic_regression(alpha, beta, 3, seed=2, noise=0.25, num_outputs=2, **kw)
    params = data.synthetic_parameters(alpha, beta, 3, seed=2, num_classes=2, **kw)
    assert pop.task == "regression" and pop.num_classes == 0 and pop.y.shape[1:] == (2,) and pop.y.dtype == np.float32
    for k in range(3):
        x, y = pop.client(k)
        residual = y - (x.astype(np.float64) @ params.weights[k] + params.biases[k])
        # the residual is the noise: mean 0, std 0.25, independent of x
        assert abs(residual.std() - 0.25) < 0.02 and abs(residual.mean()) < 0.03
        assert np.all(np.abs(np.corrcoef(np.c_[x, residual[:, 0]], rowvar=False)[-1, :-1]) < 0.15)
    one = data.synthetic_regression(alpha, beta, 3, seed=2, **kw)
    assert one.y.ndim == 1


@pytest.mark.slow
def test_cli_streamed_regression_with_two_outputs_writes_mse_rmse_r2(tmp_path):
    """``--stream`` (engine.build_streaming) with [N, 2] targets; summary.json gets final_mse / rmse / r2."""
    import json

    from jaxqfl.cli.main import main

    out = tmp_path / "reg"
    rc = main(["run", "--dataset", "synthetic-regression", "--num-outputs", "2", "--stream", "--num-clients", "40",
               "--cohort-size", "10", "--rounds", "3", "--eval-every", "2", "--local-steps", "2", "--devices", "2",
               "--max-client-size", "60", "--out", str(out), "--no-progress"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [2, 3]
    assert summary["task"] == "regression" and summary["stream"] and summary["final_accuracy"] is None
    assert summary["num_params"] == 60 * 2 + 2
    assert summary["uplink_bits_total"] == 3 * 10 * 32 * summary["num_params"]
    assert summary["final_mse"] == records[-1]["test_mse"]
    assert summary["final_mse"] == pytest.approx(summary["final_loss"] / 2)  # loss sums the 2 outputs
    assert summary["final_rmse"] == pytest.approx(np.sqrt(summary["final_mse"]))
    assert summary["final_r2"] == records[-1]["test_r2"] and summary["final_r2"] < 1
