"""Deadlines inside the round program (issue 27, item 2): stragglers dropped or cut to partial work before they
train, from their speeds and exact bits; each round timed as min(D, the slowest sampled client's time)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cli_refusals import assert_refused_before_any_work
from jaxqfl import aggregate, algorithms, compress, engine, keys, models, systems
from jaxqfl.cli.main import main
from jaxqfl.engine.client_update import make_train_client
from jaxqfl.engine.simulation import device_data
from jaxqfl.systems.clock import ROUND_SECONDS
from jaxqfl.tasks import default_for
from populations import classification_population

C, M, ROUNDS = 12, 6, 3
MODEL = models.mlp(hidden=(6,), num_outputs=3)


@pytest.fixture(scope="module")
def population():
    rng = np.random.default_rng(7)
    return classification_population(rng.integers(3, 20, size=C).tolist(), num_features=5, num_classes=3, seed=7)


@pytest.fixture(scope="module")
def profile():
    return systems.draw_lognormal_systems(jax.random.key(0), C, 1.0, step_seconds=0.5, bandwidth_bps=2e4)


def _build(population, *, schedule=None, algorithm=None, num_devices=2, chunk_size=3, **kw):
    """Local epochs: each client's scheduled steps K_c follow its size; QSGD up, uniform down: real bit counts."""
    kw.setdefault("uplink", compress.from_spec("qsgd:4"))
    return engine.build(population, MODEL, algorithm or algorithms.fedavg(optax.sgd(0.2)),
                        schedule or engine.LocalSchedule(local_epochs=1, batch_size=4), cohort_size=M,
                        num_devices=num_devices, chunk_size=chunk_size, downlink=compress.from_spec("uniform:8"), **kw)


def _rounds(sim, rounds=ROUNDS):
    state, metrics = sim.run_block(sim.init(0), rounds)
    return jax.device_get(state), jax.device_get(metrics)


@pytest.fixture(scope="module")
def waited(population):
    """The run without a deadline: its cohorts, scheduled steps and exact bits are the references' inputs."""
    return _rounds(_build(population))


def _times(profile, m):
    """[R, M] float64: t_c = K_c * spc_c + (up_c + down_c) / bw_c of a waited run's metrics (NumPy)."""
    spc, bw = (np.asarray(a, np.float64) for a in profile)
    return (m.local_steps * spc[m.cohort] + (m.uplink_bits.astype(np.float64) + m.downlink_bits) / bw[m.cohort])


@pytest.mark.parametrize("stragglers", [pytest.param("drop", marks=pytest.mark.slow), "partial"])
def test_a_deadline_nobody_misses_changes_nothing(population, profile, waited, stragglers):
    """Bit for bit the parameters of the run without a deadline; the round's seconds are the host clock's."""
    w_state, w = waited
    D = float(np.max(_times(profile, w))) * 1.01
    state, m = _rounds(_build(population, systems=profile, deadline=D, stragglers=stragglers))
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(w_state.params)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(m.cohort, w.cohort)
    np.testing.assert_array_equal(m.uplink_bits, w.uplink_bits)  # the bits the round reports
    np.testing.assert_array_equal(m.local_steps, w.local_steps)
    host = systems.block_seconds(profile, w._replace(server={}), ROUNDS)  # the host clock on the waited run
    np.testing.assert_array_equal(np.asarray(m.server[ROUND_SECONDS], np.float64), host)
    np.testing.assert_array_equal(m.server["stragglers_dropped"], 0.0)
    np.testing.assert_array_equal(m.server["partial_work"], 1.0)


@pytest.mark.parametrize("stragglers", ["drop", "partial"])
def test_round_seconds_steps_and_fractions_equal_numpy(population, profile, waited, stragglers):
    """Several rounds: who is kept, its steps k_c = min(K_c, floor((D - comm_c) / spc_c)), the round's
    min(D, max t_c), the dropped fraction and the mean partial work, from the speeds, the exact bits and D."""
    _, w = waited
    t = _times(profile, w)
    D = float(np.median(t))  # about half the clients miss it
    sim = _build(population, systems=profile, deadline=D, stragglers=stragglers)
    _, m = _rounds(sim)
    spc, bw = (np.asarray(a, np.float64) for a in profile)
    K = w.local_steps
    if stragglers == "drop":
        keep, k = t <= D, K
    else:
        comm = (w.uplink_bits.astype(np.float64) + w.downlink_bits) / bw[w.cohort]
        k = np.minimum(K, np.floor((D - comm) / spc[w.cohort])).astype(np.int64)
        keep = k >= 1
        assert np.any(keep & (k < K))  # some clients are cut, not dropped
    assert np.any(~keep) or stragglers == "partial"
    np.testing.assert_array_equal(m.cohort, np.where(keep, w.cohort, -1))
    np.testing.assert_array_equal(m.local_steps, np.where(keep, k, 0))
    np.testing.assert_array_equal(m.uplink_bits, np.where(keep, w.uplink_bits, 0))
    np.testing.assert_array_equal(m.downlink_bits, np.where(keep, w.downlink_bits, 0))
    np.testing.assert_allclose(m.server[ROUND_SECONDS], np.minimum(D, t.max(1)), rtol=1e-6)
    np.testing.assert_allclose(m.server["stragglers_dropped"], (~keep).mean(1), rtol=1e-6)
    work = np.where(keep, k / K, 0.0).sum(1) / np.maximum(keep.sum(1), 1)
    np.testing.assert_allclose(m.server["partial_work"], work, rtol=1e-6)
    result = engine.run(sim, rounds=ROUNDS, eval_every=ROUNDS)  # the clock of the systems it was built with
    assert result.sim_time == pytest.approx(float(np.sum(np.minimum(D, t.max(1)))), rel=1e-6)  # the driver's clock


def _hand_systems(seconds_per_step, bandwidth=1e30):
    """A profile written by hand (a CSV's rows): a link so fast that traffic takes ~0 s."""
    spc = np.asarray(seconds_per_step, np.float32)
    return systems.ClientSystems(jnp.asarray(spc), jnp.full((C,), bandwidth, jnp.float32))


def test_partial_work_equals_a_run_with_that_many_steps(population):
    """1 s a step, D = 3.5 s: every client does 3 of its 5 steps, which is the run with local_steps=3 (FedNova
    normalises by info.num_steps, so it must be the steps done)."""
    nova = algorithms.fednova(0.2)
    steps = lambda k: engine.LocalSchedule(local_steps=k, batch_size=4)
    cut_state, cut = _rounds(_build(population, schedule=steps(5), algorithm=nova, systems=_hand_systems([1.0] * C),
                                    deadline=3.5, stragglers="partial"))
    three_state, three = _rounds(_build(population, schedule=steps(3), algorithm=nova))
    np.testing.assert_array_equal(cut.local_steps, 3)
    np.testing.assert_allclose(cut.server["partial_work"], 0.6, rtol=1e-6)
    np.testing.assert_allclose(cut.server[ROUND_SECONDS], 3.5)  # everyone was cut: the deadline
    for a, b in zip(jax.tree.leaves(cut_state.params), jax.tree.leaves(three_state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(cut.train_loss, three.train_loss, rtol=1e-6)


def test_dropped_clients_leave_the_weighted_mean_of_the_kept_ones(population):
    """Odd clients take 10 s a step, even ones 0.1 s; D = 1 s drops the odd ones. The new global model is the old
    one plus the example-weighted mean of the kept clients' deltas, each trained alone here."""
    sim = _build(population, schedule=engine.LocalSchedule(local_steps=2, batch_size=4), uplink=None,
                 systems=_hand_systems([10.0 if c % 2 else 0.1 for c in range(C)]), deadline=1.0, stragglers="drop")
    state0 = sim.init(0)
    start = jax.device_get(state0.params)
    state, m = jax.device_get(sim.run_block(state0, 1))
    rkey = keys.round_key(jax.random.key(0), 0)
    cohort = np.asarray(engine.sample_cohort(rkey, C, M))
    kept = cohort[cohort % 2 == 0]
    assert 0 < len(kept) < M
    np.testing.assert_array_equal(m.cohort[0], np.where(cohort % 2 == 0, cohort, -1))
    np.testing.assert_array_equal(m.uplink_bits[0] == 0, cohort % 2 == 1)  # dropped: no bits either way
    np.testing.assert_array_equal(m.downlink_bits[0] == 0, cohort % 2 == 1)
    np.testing.assert_allclose(m.server["stragglers_dropped"][0], np.mean(cohort % 2 == 1))
    np.testing.assert_allclose(m.server[ROUND_SECONDS][0], 1.0)
    np.testing.assert_allclose(m.total_weight[0], population.counts[kept].sum())

    algorithm = algorithms.fedavg(optax.sgd(0.2))
    train = jax.jit(make_train_client(MODEL, algorithm, engine.LocalSchedule(local_steps=2, batch_size=4),
                                      default_for(population), max_count=population.max_count,
                                      downlink=compress.from_spec("uniform:8"), platform="cpu"))
    data = device_data(population, engine.client_mesh(1))
    fresh = sim.init(0)
    message = jax.device_get(algorithm.broadcast(fresh.params, fresh.algorithm_state))
    deltas, weights = [], []
    for c in kept:  # each kept client alone: no vmap, no chunk, no mask
        cs = jax.tree.map(lambda s: np.asarray(s[int(c)]), jax.device_get(fresh.client_states))
        t = train(message, jnp.int32(c), jnp.int32(c), jnp.asarray(True), cs, data, rkey, jnp.int32(0))
        deltas.append([np.asarray(x, np.float64) for x in jax.tree.leaves(t.update)])
        weights.append(float(t.weight))
    w = np.asarray(weights) / np.sum(weights)
    for i, (new, old) in enumerate(zip(jax.tree.leaves(state.params), jax.tree.leaves(start))):
        want = np.asarray(old, np.float64) + sum(wi * d[i] for wi, d in zip(w, deltas))
        np.testing.assert_allclose(new, want, rtol=1e-5, atol=1e-6)


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow
@pytest.mark.parametrize("stragglers", ["drop", "partial"])
def test_the_same_on_one_and_four_devices_any_chunk_and_home(population, profile, waited, stragglers):
    """A client's speeds, bits and keys come from its id: the layout changes only the summation order."""
    D = float(np.median(_times(profile, waited[1])))
    deadline = dict(systems=profile, deadline=D, stragglers=stragglers)
    ref_state, ref = _rounds(_build(population, num_devices=1, chunk_size=M, **deadline))
    assert np.any(ref.cohort < 0) or np.any(ref.server["partial_work"] < 1)
    for devices, chunk, home in ((4, 1, "sharded"), (2, 2, "host")):
        state, m = _rounds(_build(population, num_devices=devices, chunk_size=chunk, client_state=home, **deadline))
        for name in ("cohort", "local_steps", "uplink_bits", "downlink_bits"):
            np.testing.assert_array_equal(getattr(m, name), getattr(ref, name), err_msg=f"{name} {devices} {chunk}")
        for name, v in ref.server.items():
            if name in (ROUND_SECONDS, "stragglers_dropped", "partial_work"):
                np.testing.assert_array_equal(m.server[name], v)
        assert _max_diff(state.params, ref_state.params) < 1e-5, (devices, chunk, home)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["secure", "tiers"])
def test_planned_bits_are_the_bits_the_round_reports(population, case):
    """Secure aggregation adds protocol bits that depend on each client's dropout draw; tiers send with their own
    codecs. With a deadline nobody misses, the round's own seconds equal the host clock on the bits it reported."""
    prof = systems.draw_lognormal_systems(jax.random.key(1), C, 0.5, step_seconds=0.5, bandwidth_bps=1e5)
    steps = engine.LocalSchedule(local_steps=2, batch_size=4)
    if case == "tiers":
        tiers = engine.Tiers(engine.draw_tiers([0.5, 0.5], C, 3), (MODEL, MODEL),
                             (None, compress.from_spec("qsgd:4")))
        kw = dict(tiers=tiers, uplink=None)
    else:
        agg = aggregate.secure_sum(compress.from_spec("qsgd:8"), num_clients=C, cohort_size=M, dropout=0.4,
                                   max_weight=int(population.counts.max()))
        kw = dict(aggregator=agg, uplink=None)  # fixed-size cohorts: Poisson sampling is refused with its masks
    _, m = _rounds(_build(population, schedule=steps, systems=prof, deadline=1e6, stragglers="partial", **kw), 4)
    took = m.cohort >= 0
    assert len(set(m.uplink_bits[took].tolist())) > 1  # the clients' bits differ
    host = systems.block_seconds(prof, m._replace(server={}), 4)
    np.testing.assert_array_equal(np.asarray(m.server[ROUND_SECONDS], np.float64), host)


SYNTH = ["--dataset", "synthetic", "--num-clients", "20", "--cohort-size", "5", "--rounds", "4", "--eval-every", "2",
         "--local-steps", "4", "--devices", "2", "--chunk-size", "5", "--no-progress"]


def test_a_cli_run_with_a_deadline_records_its_clock_and_fractions(tmp_path):
    out = tmp_path / "deadline"
    assert main(["run", *SYNTH, "--uplink", "qsgd:4", "--speeds", "lognormal:1", "--deadline", "5",
                 "--stragglers", "partial", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = [x for r in records for x in r["server_round_sim_seconds_per_round"]]
    work = [x for r in records for x in r["server_partial_work_per_round"]]
    dropped = [x for r in records for x in r["server_stragglers_dropped_per_round"]]
    assert len(seconds) == len(work) == len(dropped) == 4 and max(seconds) <= 5.0
    assert min(work) < 1.0  # lognormal:1 around 1 s a step: some client is cut at 5 s
    assert records[-1]["sim_time"] == pytest.approx(sum(seconds))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sim_time_total"] == records[-1]["sim_time"]
    assert summary["partial_work_mean"] == pytest.approx(np.mean(work))
    assert summary["stragglers_dropped_mean"] == pytest.approx(np.mean(dropped))


@pytest.mark.parametrize("argv,message", [
    (["--speeds", "lognormal:1", "--stragglers", "drop"], "--stragglers drop needs --deadline SECONDS"),
    (["--speeds", "lognormal:1", "--deadline", "5"], "--deadline with --stragglers wait waits for every client"),
    (["--deadline", "5", "--stragglers", "partial"], "--deadline needs the clients' speeds"),
    (["--speeds", "lognormal:1", "--deadline", "-1", "--stragglers", "drop"], "must be a finite number > 0"),
    (["--speeds", "lognormal:1", "--deadline", "inf", "--stragglers", "drop"], "must be a finite number > 0"),
    (["--speeds", "lognormal:1", "--deadline", "5", "--stragglers", "late"], "invalid choice: 'late'"),
    (["--speeds", "lognormal:1", "--deadline", "5", "--stragglers", "drop", "--seeds", "0-1"],
     "--deadline is not available in a sweep"),
    (["--speeds", "lognormal:1", "--deadline", "5", "--stragglers", "drop", "--stream"],
     "--deadline is not available with --stream"),
    # a dropped straggler's masks stayed in the secure sum: test loss 10 -> 114,397 with exit 0
    (["--speeds", "lognormal:1", "--deadline", "5", "--stragglers", "drop", "--uplink", "qsgd:4",
      "--secure-aggregation", "secagg"], "--stragglers drop does not combine with --secure-aggregation"),
    (["--speeds", "lognormal:1", "--deadline", "5", "--stragglers", "drop", "--dp-distributed", "skellam",
      "--dp-clip", "1", "--dp-noise", "0.01"], "--stragglers drop does not combine with --dp-distributed"),
])
def test_bad_deadlines_are_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch, [*SYNTH, *argv], message)


def test_the_python_api_refuses_what_it_does_not_support(population, profile):
    for kw, message in ((dict(deadline=5.0), "stragglers='wait' waits for every client"),
                        (dict(stragglers="drop"), "needs a deadline"),
                        (dict(deadline=0.0, stragglers="drop"), "deadline must be a finite number"),
                        (dict(deadline=5.0, stragglers="soon"), "stragglers must be one of"),
                        (dict(deadline=5.0, stragglers="drop", systems=None), "needs the clients' systems")):
        with pytest.raises(ValueError, match=message):
            _build(population, **{"systems": profile, **kw})
    for build in (engine.build_streaming, lambda *a, **k: engine.build_sweep(
            population, MODEL, lambda hp: algorithms.fedavg(optax.sgd(0.2)), engine.LocalSchedule(local_steps=1),
            configs=[{"seed": 0}], cohort_size=M, systems=profile, deadline=5.0, stragglers="drop")):
        with pytest.raises(ValueError, match="deadline=5.0, stragglers='drop'.* is not available"):
            build(population, MODEL, algorithms.fedavg(optax.sgd(0.2)), engine.LocalSchedule(local_steps=1),
                  cohort_size=M, systems=profile, deadline=5.0, stragglers="drop")
    short = systems.ClientSystems(profile.seconds_per_step[:3], profile.bandwidth[:3])
    with pytest.raises(ValueError, match=r"must have shape \(12,\)"):
        _build(population, systems=short, deadline=5.0, stragglers="drop")


def test_the_engine_refuses_to_leave_sampled_clients_out_of_a_secure_sum(population, profile):
    """A dropped straggler's masked words were left out of the sum, so its pairwise masks never cancelled (a CLI run:
    test loss 10 -> 114,397, exit 0). The secure aggregator says it needs the whole cohort (``whole_cohort``); the
    engine refuses what leaves a sampled client out; partial stragglers stay in the sum and run."""
    codec = compress.from_spec("qsgd:4")
    secure = aggregate.secure_sum(codec, num_clients=population.num_clients, cohort_size=M)
    assert secure.whole_cohort and not aggregate.mean().whole_cohort
    for kw, what in ((dict(deadline=5.0, stragglers="drop", systems=profile), "stragglers='drop'"),
                     (dict(sampling="poisson"), "Poisson sampling")):
        with pytest.raises(ValueError, match=f"whole sampled cohort .*; {what} leaves sampled clients out"):
            _build(population, aggregator=secure, uplink=codec, **kw)
    _build(population, aggregator=secure, uplink=codec, deadline=5.0, stragglers="partial", systems=profile)
