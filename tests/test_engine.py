"""Properties of the round program (jaxqfl.engine) against independent references."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxqfl import algorithms, engine, models
from jaxqfl.engine.schedule import LocalSchedule, make_batch_fn
from populations import classification_population as _classification_population
from populations import regression_population as _regression_population


def _max_abs_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_one_client_full_batch_step_equals_centralized_sgd():
    pop = _classification_population([37], num_features=8, num_classes=4)
    model = models.mlp(hidden=(16,), num_outputs=4)
    lr = 0.3
    sim = engine.build(
        pop, model, algorithms.fedsgd(lr), LocalSchedule(local_steps=1, batch_size=None), cohort_size=1, num_devices=1
    )
    state = sim.init(0)
    params0 = jax.tree.map(np.asarray, state.params)
    state, _ = sim.run_block(state, 1)

    def loss(p):
        logits = model.apply(p, jnp.asarray(pop.x))
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(pop.y)).mean()

    grads = jax.grad(loss)(params0)
    expected = jax.tree.map(lambda p, g: p - lr * g, params0, grads)
    assert _max_abs_diff(state.params, expected) < 1e-6


def test_aggregate_equals_numpy_weighted_mean_of_client_deltas():
    """Linear regression, K full-batch GD steps per client, all clients in the cohort."""
    sizes = [5, 12, 3, 9, 20, 7]
    pop = _regression_population(sizes)
    lr, K = 0.05, 3
    model = models.linear_regression(1)
    sim = engine.build(
        pop, model, algorithms.fedavg(optax.sgd(lr)), LocalSchedule(local_steps=K, batch_size=None),
        cohort_size=len(sizes), num_devices=2, chunk_size=2,
    )
    state = sim.init(3)
    w0 = np.asarray(state.params["Dense_0"]["kernel"], np.float64)[:, 0]
    b0 = float(state.params["Dense_0"]["bias"][0])
    state, metrics = sim.run_block(state, 1)

    deltas, weights = [], []
    for i in range(len(sizes)):
        x, y = (a.astype(np.float64) for a in pop.client(i))
        w, b = w0.copy(), b0
        for _ in range(K):  # loss = mean (x w + b - y)^2
            r = x @ w + b - y
            w, b = w - lr * 2 * x.T @ r / len(y), b - lr * 2 * r.mean()
        deltas.append(np.concatenate([w - w0, [b - b0]]))
        weights.append(len(y))
    mean = np.average(np.array(deltas), axis=0, weights=weights)
    got = np.concatenate([np.asarray(state.params["Dense_0"]["kernel"])[:, 0] - w0,
                          np.asarray(state.params["Dense_0"]["bias"]) - b0])
    np.testing.assert_allclose(got, mean, atol=1e-6)
    assert sorted(np.asarray(metrics.cohort[0]).tolist()) == list(range(len(sizes)))
    assert float(metrics.total_weight[0]) == sum(sizes)


def test_uniform_weighting_gives_plain_mean():
    """weighting="uniform" moves the model by the plain mean of the client deltas,
    weighting="examples" by their mean weighted by example counts (NumPy references)."""
    sizes = [2, 30]
    lr = 0.1
    pop = _regression_population(sizes, seed=4)
    make = lambda weighting: engine.build(
        pop, models.linear_regression(1), algorithms.fedavg(optax.sgd(lr), weighting=weighting),
        LocalSchedule(local_steps=1, batch_size=None), cohort_size=2, num_devices=1,
    )
    for weighting, weights in (("examples", sizes), ("uniform", [1, 1])):
        sim = make(weighting)
        s0 = sim.init(0)
        w0 = np.asarray(s0.params["Dense_0"]["kernel"], np.float64)[:, 0]
        b0 = float(s0.params["Dense_0"]["bias"][0])
        s1, m = sim.run_block(s0, 1)
        deltas = []
        for i in range(len(sizes)):  # one full-batch GD step on mean (x w + b - y)^2
            x, y = (a.astype(np.float64) for a in pop.client(i))
            r = x @ w0 + b0 - y
            deltas.append(np.concatenate([-lr * 2 * x.T @ r / len(y), [-lr * 2 * r.mean()]]))
        expected = np.average(deltas, axis=0, weights=weights)
        got = np.concatenate([np.asarray(s1.params["Dense_0"]["kernel"])[:, 0] - w0,
                              np.asarray(s1.params["Dense_0"]["bias"]) - b0])
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert float(m.total_weight[0]) == sum(weights)
        # the two weightings are far apart here, so the check above tells them apart
        assert np.max(np.abs(np.mean(deltas, axis=0) - np.average(deltas, axis=0, weights=sizes))) > 1e-3


@pytest.fixture(scope="module")
def invariance_population():
    rng = np.random.default_rng(7)
    sizes = rng.integers(3, 25, size=24).tolist()
    return _classification_population(sizes, num_features=10, num_classes=5, seed=7)


@pytest.fixture(scope="module")
def invariance_reference(invariance_population):
    return _run_params(invariance_population, 1, 1)


def _run_params(pop, num_devices, chunk_size, rounds=3):
    sim = engine.build(
        pop, models.mlp(hidden=(8,), num_outputs=5), algorithms.fedavg(optax.sgd(0.2), optax.sgd(1.0, momentum=0.5)),
        LocalSchedule(local_epochs=2, batch_size=4), cohort_size=9, num_devices=num_devices, chunk_size=chunk_size,
    )
    state, metrics = sim.run_block(sim.init(11), rounds)
    return state, metrics, sim


@pytest.mark.parametrize("num_devices,chunk_size", [(2, 1), (4, 3), (8, None), (1, 3), (1, 9), (8, 1)])
def test_results_invariant_to_device_count_and_chunk_size(invariance_population, invariance_reference, num_devices, chunk_size):
    ref_state, ref_metrics, _ = invariance_reference
    state, metrics, sim = _run_params(invariance_population, num_devices, chunk_size)
    assert sim.num_devices == num_devices
    np.testing.assert_array_equal(np.asarray(metrics.cohort), np.asarray(ref_metrics.cohort))
    np.testing.assert_array_equal(np.asarray(metrics.local_steps), np.asarray(ref_metrics.local_steps))
    assert _max_abs_diff(state.params, ref_state.params) < 1e-5
    np.testing.assert_allclose(np.asarray(metrics.train_loss), np.asarray(ref_metrics.train_loss), atol=1e-5)


def test_many_rounds_trace_and_compile_once(invariance_population):
    sim = engine.build(
        invariance_population, models.logistic_regression(5), algorithms.fedavg(optax.sgd(0.1)),
        LocalSchedule(local_steps=2, batch_size=4), cohort_size=5, num_devices=2,
    )
    result = engine.run(sim, rounds=11, eval_every=3, seed=0)  # blocks 3+3+3+(2 of 3)
    assert sim.trace_count() == 1
    assert [r["round"] for r in result.records] == [3, 6, 9, 11]
    assert int(result.state.round) == 11
    # a new key (seed) and a new round number reuse the compiled program
    engine.run(sim, rounds=3, eval_every=3, seed=5, state=result.state)
    assert sim.trace_count() == 1


def test_partial_last_block_equals_uninterrupted_rounds(invariance_population):
    make = lambda: engine.build(
        invariance_population, models.logistic_regression(5), algorithms.fedavg(optax.sgd(0.1)),
        LocalSchedule(local_steps=2, batch_size=4), cohort_size=5, num_devices=1,
    )
    a = engine.run(make(), rounds=5, eval_every=5, seed=2)
    b = engine.run(make(), rounds=5, eval_every=3, seed=2)
    assert _max_abs_diff(a.state.params, b.state.params) < 1e-6
    assert a.uplink_bits_total == b.uplink_bits_total == 5 * 5 * 32 * (5 * 10 + 5)


def test_ragged_clients_match_unpadded_per_client_reference():
    """Epoch mode over clients of very different sizes equals a loop over each client's real batches."""
    sizes = [1, 4, 7, 18]
    pop = _classification_population(sizes, num_features=5, num_classes=3, seed=3)
    model = models.mlp(hidden=(6,), num_outputs=3)
    lr, B, E = 0.1, 4, 2
    schedule = LocalSchedule(local_epochs=E, batch_size=B)
    sim = engine.build(pop, model, algorithms.fedavg(optax.sgd(lr)), schedule, cohort_size=4, num_devices=2, chunk_size=1)
    state = sim.init(5)
    params0 = jax.tree.map(np.asarray, state.params)
    state, metrics = sim.run_block(state, 1)

    # reference: the same per-client data order, but each batch sliced to its real rows, no masks
    from jaxqfl import keys

    rkey = keys.round_key(jax.random.key(5), 0)
    prepare, batch = make_batch_fn(schedule, pop.max_count)

    def loss(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()

    grad = jax.jit(jax.grad(loss))
    deltas, steps_taken = [], []
    for cid in range(len(sizes)):
        x, y = pop.client(cid)
        ckey = keys.client_key(rkey, cid)
        plan = prepare(ckey, jnp.int32(sizes[cid]))
        p, steps = params0, 0
        for s in range(schedule.num_steps(pop.max_count)):
            sb = batch(plan, ckey, jnp.int32(sizes[cid]), jnp.int32(s))
            rows = np.asarray(sb.rows)[np.asarray(sb.mask)]
            if rows.size == 0:
                continue
            steps += 1
            g = grad(p, x[rows], y[rows])
            p = jax.tree.map(lambda a, b: a - lr * b, p, g)
        deltas.append(jax.tree.map(lambda a, b: np.asarray(a) - b, p, params0))
        steps_taken.append(steps)
    expected = jax.tree.map(lambda *d: np.average(np.stack(d), axis=0, weights=sizes), *deltas)
    got = jax.tree.map(lambda a, b: np.asarray(a) - b, state.params, params0)
    assert _max_abs_diff(got, expected) < 1e-6
    cohort = np.asarray(metrics.cohort[0])
    assert dict(zip(cohort.tolist(), np.asarray(metrics.local_steps[0]).tolist())) == dict(enumerate(steps_taken))
    assert steps_taken == [-(-E * n // B) for n in sizes]


def test_epoch_schedule_visits_every_example_once_per_epoch():
    schedule = LocalSchedule(local_epochs=3, batch_size=4)
    prepare, batch = make_batch_fn(schedule, 10)
    for count in (1, 6, 10):
        ckey = jax.random.key(count)
        plan = prepare(ckey, jnp.int32(count))
        seen = []
        for s in range(schedule.num_steps(10)):
            sb = batch(plan, ckey, jnp.int32(count), jnp.int32(s))
            seen.extend(np.asarray(sb.rows)[np.asarray(sb.mask)].tolist())
        assert len(seen) == 3 * count
        for e in range(3):
            assert sorted(seen[e * count:(e + 1) * count]) == list(range(count))


def test_server_optimizers_follow_optax_on_the_pseudo_gradient():
    """The engine's server step is the server optimizer's optax update applied to -mean_delta."""
    sizes = [6, 6, 6]
    pop = _regression_population(sizes, seed=9)
    opt = algorithms.server_optimizer("adam", 0.01)
    sim = engine.build(pop, models.linear_regression(1), algorithms.fedavg(optax.sgd(0.05), opt),
                       LocalSchedule(local_steps=1, batch_size=None), cohort_size=3, num_devices=1)
    sgd = engine.build(pop, models.linear_regression(1), algorithms.fedavg(optax.sgd(0.05)),
                       LocalSchedule(local_steps=1, batch_size=None), cohort_size=3, num_devices=1)
    s0 = sim.init(0)
    p0 = jax.tree.map(np.asarray, s0.params)
    fedavg_state, _ = sgd.run_block(sgd.init(0), 1)
    mean_delta = jax.tree.map(lambda a, b: np.asarray(a) - b, fedavg_state.params, p0)
    updates, _ = opt.update(jax.tree.map(lambda d: -d, mean_delta), opt.init(p0), p0)
    expected = optax.apply_updates(p0, updates)
    s1, _ = sim.run_block(s0, 1)
    assert _max_abs_diff(s1.params, expected) < 1e-6


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"cohort_size": 0}, "cohort_size"),
        ({"cohort_size": 99}, "cohort_size"),
        ({"cohort_size": 2, "chunk_size": 0}, "chunk_size"),
        ({"cohort_size": 2, "num_devices": 9}, "num_devices"),
    ],
)
def test_bad_build_arguments_are_refused(kwargs, match):
    pop = _regression_population([3, 3, 3])
    with pytest.raises(ValueError, match=match):
        engine.build(pop, models.linear_regression(1), algorithms.fedavg(optax.sgd(0.1)),
                     LocalSchedule(local_steps=1), **kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [({}, "exactly one"), ({"local_steps": 2, "local_epochs": 1}, "exactly one"),
     ({"local_steps": 0}, "local_steps"), ({"local_epochs": 1, "batch_size": -2}, "batch_size")],
)
def test_bad_schedule_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LocalSchedule(**kwargs)


def test_cohort_sampling_is_uniform_without_replacement():
    """Every client is included with probability M / C; ids are distinct and in range."""
    from jaxqfl.engine import sample_cohort

    C, M, R = 50, 10, 4000
    cohorts = np.asarray(jax.jit(jax.vmap(lambda r: sample_cohort(jax.random.fold_in(jax.random.key(0), r), C, M)))(
        jnp.arange(R)))
    assert cohorts.min() >= 0 and cohorts.max() < C
    assert all(len(set(row)) == M for row in cohorts[:200])
    counts = np.bincount(cohorts.ravel(), minlength=C)
    p = M / C
    sd = np.sqrt(R * p * (1 - p))  # inclusion counts are Binomial(R, M/C) per client
    assert np.max(np.abs(counts - R * p)) < 5 * sd
