"""``jaxqfl run --sampling poisson --dp-*`` divides by the fixed expected cohort qN, not the realised one (issue 21).

McMahan et al. 2018 (DP-FedAvg, the fixed-denominator estimator): with Poisson sampling the
sensitivity bound and the accounting assume the sum of clipped updates is divided by the
constant qN; dividing by the realised cohort size makes the sensitivity data-dependent.
The aggregator is taken from the CLI (the flags' configuration), then run on a FedSGD round
whose NumPy reference is the old model plus (sum of the joined clients' deltas) / qN.
"""
import jax
import numpy as np
import optax
import pytest

from jaxqfl import algorithms, engine, keys, models
from populations import regression_population

SIZES = [5, 9, 7, 12, 6, 8, 10, 4, 11, 7, 9, 5]


class _Captured(BaseException):
    pass


def _cli_aggregator(monkeypatch, tmp_path, argv):
    import jaxqfl.engine
    from jaxqfl.cli.main import main

    def capture(*a, **k):
        raise _Captured(k["aggregator"])

    monkeypatch.setattr(jaxqfl.engine, "build", capture)
    with pytest.raises(_Captured) as got:
        main(["run", "--out", str(tmp_path / "o"), *argv])
    return got.value.args[0]


def _wb(params):
    d = params["Dense_0"]
    return np.asarray(d["kernel"], np.float64)[:, 0], np.asarray(d["bias"], np.float64)


def test_cli_poisson_dp_mean_divides_by_expected_cohort(monkeypatch, tmp_path):
    expected, C, lr = 4, len(SIZES), 0.05
    aggregator = _cli_aggregator(monkeypatch, tmp_path, [
        "--num-clients", str(C), "--cohort-size", str(expected), "--sampling", "poisson", "--rounds", "3",
        "--dp-clip", "1e6", "--dp-noise", "0", "--dp-delta", "1e-3"])
    monkeypatch.undo()
    pop = regression_population(SIZES, num_features=5, seed=3)
    sim = engine.build(pop, models.linear_regression(1),
                       algorithms.fedavg(optax.sgd(lr), algorithms.server_optimizer("sgd", 1.0)),
                       engine.LocalSchedule(local_steps=1, batch_size=None), cohort_size=expected,
                       num_devices=2, sampling="poisson", max_cohort=10, aggregator=aggregator)
    state = sim.init(4)
    realised = []
    for r in range(3):
        w, b = _wb(state.params)
        state, metrics = sim.run_block(state, 1)
        u = np.asarray(jax.random.uniform(keys.purpose_key(keys.round_key(jax.random.key(4), r), keys.COHORT), (C,)))
        joined = np.flatnonzero(u < expected / C)
        realised.append(len(joined))
        dw, db = np.zeros_like(w), 0.0
        for i in joined:  # clip 1e6 never binds; no noise: the sum of deltas exactly
            x, y = (a.astype(np.float64) for a in pop.client(int(i)))
            res = x @ w + b - y
            dw += -lr * 2 * x.T @ res / len(y)
            db += -lr * 2 * res.mean()
        got_w, got_b = _wb(state.params)
        np.testing.assert_allclose(got_w, w + dw / expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got_b, b + db / expected, rtol=1e-5, atol=1e-6)
    assert any(m != expected for m in realised), f"realised cohorts {realised}: the test must tell qN from them"
