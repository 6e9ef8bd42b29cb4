"""FedBuff (issue 27, item 4): buffered asynchronous FL as an event program on the virtual clock.

Checked against synchronous FedAvg (K = C, constant weight, equal speeds), an independent NumPy event
simulation written from the semantics in ``jaxqfl/engine/fedbuff.py``'s docstring, and across device counts.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cli_refusals import assert_refused_before_any_work
from jaxqfl import algorithms, compress, engine, keys, models, systems
from jaxqfl.cli.main import main
from populations import classification_population

N, F, L = 10, 4, 3  # clients, features, classes
SIZES = [3, 5, 4, 6, 2, 7, 3, 5, 4, 6]


def _population():
    return classification_population(SIZES, num_features=F, num_classes=L, seed=5)


def _logreg():
    def init(key, x):
        return {"b": jnp.zeros((L,), jnp.float32), "w": 0.3 * jax.random.normal(key, (x.shape[-1], L), jnp.float32)}

    return models.from_functions(init, lambda p, x: x @ p["w"] + p["b"])


# ---------------------------------------------------------------------------------------------------------------
# 1. K = C, constant staleness weight, equal speeds: synchronous FedAvg with cohort C


@pytest.mark.slow  # CI time (~19 s): the model stays checked by default against the NumPy event simulation
def test_buffer_equal_to_concurrency_with_equal_speeds_is_synchronous_fedavg():
    """Same cohorts, keys and models: flush r = round r. Tolerance, not bits: the fill trains in the init program
    and the buffer's sum is not inside a shard_map, so XLA fuses (and rounds) the same float ops differently (we
    measured differences of one ulp, ~6e-8)."""
    pop, model = _population(), models.mlp(hidden=(5,), num_outputs=L)
    alg, schedule = algorithms.fedavg(optax.sgd(0.2)), engine.LocalSchedule(local_steps=3, batch_size=4)
    equal = systems.draw_lognormal_systems(jax.random.key(0), N, 0.0)
    fb = engine.build_fedbuff(pop, model, alg, schedule, concurrency=4, buffer=4, staleness="constant",
                              systems=equal, num_devices=1)
    sync = engine.build(pop, model, alg, schedule, cohort_size=4, num_devices=1, chunk_size=4)
    a = engine.run(fb, rounds=4, eval_every=4, seed=2, systems=equal)
    b = engine.run(sync, rounds=4, eval_every=4, seed=2, systems=equal)
    for x, y in zip(jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6)
    assert not np.allclose(jax.tree.leaves(a.state.params)[1], jax.tree.leaves(fb.init(2).params)[1])  # it trained
    # the cohorts, flush by flush (arrival order: equal times, so by id)
    _, m_fb = fb.run_block(fb.init(2), 4)
    _, m_sync = sync.run_block(sync.init(2), 4)
    np.testing.assert_array_equal(np.asarray(m_fb.cohort), np.sort(np.asarray(m_sync.cohort), axis=1))
    assert np.all(np.asarray(m_fb.clients["staleness"]) == 0)
    assert a.sim_time == pytest.approx(b.sim_time, rel=1e-6)  # the flush time is the synchronous round's


# ---------------------------------------------------------------------------------------------------------------
# 2 and 4. An independent NumPy event simulation: arrivals, staleness, flush times, the model after 6 flushes

def _numpy_fedbuff(pop, w0, b0, spc, bw, seed, C, K, flushes, steps, lr, f):
    """FedBuff written from the stated semantics: plain NumPy, float64, a Python loop over events."""
    run = jax.random.key(seed)

    def uniforms(r):  # the same cohort draws: the uniforms of purpose_key(round_key(run, r), COHORT)
        return np.asarray(jax.random.uniform(keys.purpose_key(keys.round_key(run, r), keys.COHORT), (N,)))

    x, y = np.asarray(pop.x, np.float64), np.asarray(pop.y)
    bits = 32 * (w0.size + b0.size)  # float32 download and upload

    def train(model, c):  # full-batch local SGD on softmax cross-entropy; returns the delta
        rows = slice(int(pop.offsets[c]), int(pop.offsets[c]) + int(pop.counts[c]))
        xc, onehot = x[rows], np.eye(L)[y[rows]]
        w, b = model[0].copy(), model[1].copy()
        for _ in range(steps):
            z = xc @ w + b
            p = np.exp(z - z.max(1, keepdims=True))
            g = p / p.sum(1, keepdims=True) - onehot
            w, b = w - lr * xc.T @ g / len(xc), b - lr * g.mean(0)
        return w - model[0], b - model[1]

    def start(model, version, c, t):
        return {"c": int(c), "finish": t + steps * spc[c] + 2 * bits / bw[c], "version": version,
                "delta": train(model, c)}

    model = (np.asarray(w0, np.float64), np.asarray(b0, np.float64))
    slots = [start(model, 0, c, 0.0) for c in np.argsort(-uniforms(0))[:C]]
    arrivals, stale, times = [], [], []
    for r in range(flushes):
        order = sorted(range(C), key=lambda j: (slots[j]["finish"], slots[j]["c"]))
        arrived = order[:K]
        T = slots[arrived[-1]]["finish"]
        arrivals.append([slots[j]["c"] for j in arrived])
        stale.append([r - slots[j]["version"] for j in arrived])
        times.append(T)
        wts = [pop.counts[slots[j]["c"]] * f(r - slots[j]["version"]) for j in arrived]
        mean = [sum(w * slots[j]["delta"][i] for w, j in zip(wts, arrived)) / sum(wts) for i in (0, 1)]
        new_model = (model[0] + mean[0], model[1] + mean[1])
        busy = {slots[j]["c"] for j in range(C) if j not in arrived}
        drawn = [c for c in np.argsort(-uniforms(r + 1)) if c not in busy][:K]
        for j, c in zip(sorted(arrived), drawn):
            t = slots[j]["finish"]
            slots[j] = start(new_model, r + 1, c, t) if t == T else start(model, r, c, t)
        model = new_model
    return arrivals, stale, times, model


FLUSHES = 6


def test_arrivals_staleness_flush_times_and_model_equal_a_numpy_event_simulation():
    pop, model, seed, C, K, steps, lr = _population(), _logreg(), 3, 5, 2, 2, 0.3
    profile = systems.draw_lognormal_systems(jax.random.key(seed), N, 0.8, step_seconds=1.0, bandwidth_bps=2e3)
    sim = engine.build_fedbuff(pop, model, algorithms.fedavg(optax.sgd(lr)),
                               engine.LocalSchedule(local_steps=steps, batch_size=None),
                               concurrency=C, buffer=K, staleness="sqrt", systems=profile, num_devices=1)
    p0 = model.init(keys.purpose_key(jax.random.key(seed), keys.INIT), jnp.zeros((1, F)))
    arrivals, stale, times, (w, b) = _numpy_fedbuff(
        pop, np.asarray(p0["w"]), np.asarray(p0["b"]), np.asarray(profile.seconds_per_step, np.float64),
        np.asarray(profile.bandwidth, np.float64), seed, C, K, FLUSHES, steps, lr, lambda s: 1 / np.sqrt(1 + s))
    assert max(max(s) for s in stale) >= 1  # the case is asynchronous: some updates are stale
    state, m = sim.run_block(sim.init(seed), FLUSHES)
    np.testing.assert_array_equal(np.asarray(m.cohort), arrivals)
    np.testing.assert_array_equal(np.asarray(m.clients["staleness"]), stale)
    np.testing.assert_allclose(np.cumsum(np.asarray(m.server["round_sim_seconds"], np.float64)), times, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(state.params["w"]), w, atol=2e-5)
    np.testing.assert_allclose(np.asarray(state.params["b"]), b, atol=2e-5)
    # 4. the driver's clock: a record's sim_time is its flush's K-th arrival time
    result = engine.run(sim, rounds=FLUSHES, eval_every=3, seed=seed, systems=profile)
    np.testing.assert_allclose([r["sim_time"] for r in result.records], [times[2], times[5]], rtol=1e-5)
    assert [x for r in result.records for x in r["server_staleness_mean_per_round"]] == pytest.approx(
        [np.mean(s) for s in stale])
    # 5. the driver counts the staleness of every applied update (RunResult.counts: the summary's histogram)
    values, n = np.unique(np.concatenate(stale), return_counts=True)
    assert result.counts == {"staleness": dict(zip(values.astype(int).tolist(), n.tolist()))}


# ---------------------------------------------------------------------------------------------------------------
# 3. Same results on 1 and 4 devices


def _flushes_on(num_devices):
    profile = systems.draw_lognormal_systems(jax.random.key(1), N, 0.5)
    sim = engine.build_fedbuff(_population(), _logreg(), algorithms.fedavg(optax.sgd(0.2)),
                               engine.LocalSchedule(local_steps=2, batch_size=3), concurrency=6, buffer=3,
                               staleness="poly:0.5", systems=profile, uplink=compress.from_spec("qsgd:4"),
                               num_devices=num_devices)
    assert sim.num_devices == num_devices
    state, m = jax.device_get(sim.run_block(sim.init(4), 3))
    return state.params, (state.in_flight.ids, state.in_flight.version, state.in_flight.finish, m)


@pytest.mark.slow
def test_one_and_four_devices_give_the_same_flushes():
    """The same events (arrivals, staleness, clock, bits sent, replacements) and the same model to float tolerance:
    XLA compiles a one-device program without its SPMD partitioner and fuses the server step's float ops
    differently there (we measured one ulp, ~3e-8); 2 and 4 devices give the same bits (the slow test below)."""
    (p1, e1), (p4, e4) = _flushes_on(1), _flushes_on(4)
    for a, b in zip(jax.tree.leaves(e1), jax.tree.leaves(e4)):
        np.testing.assert_array_equal(a, b) if a.dtype.kind in "iub" else np.testing.assert_allclose(a, b, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_two_and_four_devices_give_the_same_bits():
    for a, b in zip(jax.tree.leaves(_flushes_on(2)), jax.tree.leaves(_flushes_on(4))):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------------------------
# Refusals of the Python API


@pytest.mark.parametrize("kwargs, message", [
    (dict(concurrency=4, buffer=5), "buffer 5 exceeds concurrency 4"),
    (dict(concurrency=11, buffer=2), "concurrency 11 exceeds the 10 clients"),
    (dict(concurrency=4, buffer=0), "buffer must be a positive integer"),
    (dict(concurrency=4, buffer=2, staleness="poly:-1"), "A in poly:A must be a finite number > 0"),
    (dict(concurrency=4, buffer=2, staleness="hinge"), "staleness must be one of"),
    (dict(concurrency=4, buffer=2, algorithm=algorithms.scaffold(0.1)), r"keeps some per client \(in its algorithm"),
    (dict(concurrency=4, buffer=2, uplink=compress.from_spec("topk:0.5+ef")), r"keeps some per client \(in its uplink"),
    (dict(concurrency=4, buffer=2, systems=None), "FedBuff runs on the virtual clock"),
])
def test_bad_fedbuff_arguments_are_refused(kwargs, message):
    args = dict(staleness="constant", systems=systems.draw_lognormal_systems(jax.random.key(0), N, 0.0),
                algorithm=algorithms.fedavg(optax.sgd(0.1)))
    args.update(kwargs)
    alg = args.pop("algorithm")
    with pytest.raises(ValueError, match=message):
        engine.build_fedbuff(_population(), _logreg(), alg, engine.LocalSchedule(local_steps=1), **args)


# ---------------------------------------------------------------------------------------------------------------
# 5. The CLI

SYNTH = ["--dataset", "synthetic", "--num-clients", "20", "--rounds", "4", "--eval-every", "2", "--local-steps", "2",
         "--devices", "2", "--no-progress"]


def test_a_fedbuff_run_writes_its_clock_and_staleness_histogram(tmp_path, capsys):
    out = tmp_path / "fb"
    assert main(["run", *SYNTH, "--async", "fedbuff", "--concurrency", "6", "--buffer", "3", "--staleness", "sqrt",
                 "--speeds", "lognormal:0.8", "--target-accuracy", "0.01", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [2, 4] and 0 < records[0]["sim_time"] < records[1]["sim_time"]
    assert s["sim_time_total"] == records[-1]["sim_time"] and s["time_to_target"] == records[0]["sim_time"]
    hist = s["staleness_histogram"]
    assert sum(hist.values()) == 4 * 3  # every applied update, once
    mean = sum(int(k) * v for k, v in hist.items()) / 12
    assert s["staleness_mean"] == pytest.approx(mean)
    per_flush = [x for r in records for x in r["server_staleness_mean_per_round"]]
    assert mean == pytest.approx(np.mean(per_flush))
    assert s["async"] == "fedbuff" and s["concurrency"] == 6 and s["buffer"] == 3
    config = (out / "config.toml").read_text()  # repeatable: the flags' own names, no --cohort-size
    assert 'async = "fedbuff"' in config and "cohort-size" not in config
    capsys.readouterr()
    assert main(["run", "--config", str(out / "config.toml"), "--print-config"]) == 0
    assert capsys.readouterr().out == config


@pytest.mark.parametrize("argv, message", [
    (["--async", "fedbuff", "--concurrency", "4", "--buffer", "2"], "--async fedbuff needs --speeds"),
    (["--async", "fedbuff", "--speeds", "lognormal:1", "--concurrency", "4", "--buffer", "5"],
     "--buffer 5 exceeds --concurrency 4"),
    (["--async", "fedbuff", "--speeds", "lognormal:1", "--concurrency", "30", "--buffer", "5"],
     "--concurrency 30 exceeds --num-clients 20"),
    (["--async", "fedbuff", "--speeds", "lognormal:1", "--concurrency", "4", "--buffer", "2",
      "--staleness", "poly:0"], "--staleness 'poly:0'"),
    (["--async", "fedbuff", "--speeds", "lognormal:1", "--concurrency", "4", "--buffer", "2",
      "--cohort-size", "4"], "--cohort-size does not apply to --async fedbuff"),
    (["--async", "fedbuff", "--speeds", "lognormal:1", "--concurrency", "4", "--buffer", "2", "--seeds", "0,1"],
     "--async fedbuff runs one config at a time"),
    (["--async", "fedbuff", "--speeds", "lognormal:1", "--concurrency", "4", "--buffer", "2",
      "--algorithm", "scaffold"], "--algorithm scaffold keeps per-client state"),
    (["--concurrency", "4"], "--concurrency applies to --async fedbuff"),
    (["--async", "fedbuff", "--speeds", "lognormal:1", "--concurrency", "4", "--buffer", "2",
      "--selection", "oort"], "--selection oort: --async fedbuff draws each replacement uniformly"),
    (["--async", "fedbuff", "--speeds", "lognormal:1", "--concurrency", "4", "--buffer", "2",
      "--deadline", "5", "--stragglers", "drop"], "--deadline 5.0: --async fedbuff has no rounds"),
])
def test_bad_async_flags_are_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    import jaxqfl.engine

    monkeypatch.setattr(jaxqfl.engine, "build_fedbuff", lambda *a, **k: (_ for _ in ()).throw(AssertionError()))
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch, [*SYNTH, *argv], message)
