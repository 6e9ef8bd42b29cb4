"""Codecs fused into the round program: equality with references, exact bits, per-client EF state."""
import jax
import numpy as np
import optax
import pytest

from jaxqfl import aggregate, algorithms, compress, engine, keys, models
from populations import regression_population


def _regression_population(sizes, seed=1):
    return regression_population(sizes, num_features=12, seed=seed)


def _build(pop, *, uplink=None, downlink=None, cohort=None, num_devices=1, chunk_size=None, K=2, lr=0.05):
    return engine.build(
        pop, models.linear_regression(1), algorithms.fedavg(optax.sgd(lr)),
        engine.LocalSchedule(local_steps=K, batch_size=None), cohort_size=cohort or pop.num_clients,
        num_devices=num_devices, chunk_size=chunk_size, uplink=uplink, downlink=downlink,
    )


def _numpy_client_deltas(pop, w0, b0, K, lr):
    """Each client's K full-batch GD steps on mean squared error, in float64 NumPy."""
    deltas = []
    for i in range(pop.num_clients):
        x, y = (a.astype(np.float64) for a in pop.client(i))
        w, b = w0.copy(), b0
        for _ in range(K):
            r = x @ w + b - y
            w, b = w - lr * 2 * x.T @ r / len(y), b - lr * 2 * r.mean()
        deltas.append((w - w0, np.array([b - b0])))
    return deltas


def _topk_numpy(v, k):
    out = np.zeros_like(v)
    keep = np.argsort(-np.abs(v), kind="stable")[:k]
    out[keep] = v[keep]
    return out


def test_identity_codec_equals_no_codec_and_counts_float_bits():
    pop = _regression_population([4, 9, 6, 11])
    a = _build(pop)
    b = _build(pop, uplink=compress.identity(), downlink=compress.identity())
    sa, ma = a.run_block(a.init(0), 3)
    sb, mb = b.run_block(b.init(0), 3)
    for u, v in zip(jax.tree.leaves(sa.params), jax.tree.leaves(sb.params)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    n_params = 12 + 1
    assert np.all(np.asarray(mb.uplink_bits) == 32 * n_params)
    assert np.all(np.asarray(mb.downlink_bits) == 32 * n_params)
    np.testing.assert_array_equal(np.asarray(ma.uplink_bits), np.asarray(mb.uplink_bits))


def test_topk_with_error_feedback_matches_numpy_reference():
    """One round, all clients: the server applies the weighted mean of top-k(delta_i); each
    client's residual becomes delta_i - top-k(delta_i); the bits are top-k's formula."""
    sizes = [5, 12, 3, 9, 20, 7]
    pop = _regression_population(sizes)
    K, lr, k = 2, 0.05, 3
    codec = compress.from_spec("topk:0.25+ef")  # k = ceil(0.25 n): 3 of the kernel, 1 of the bias
    sim = _build(pop, uplink=codec, num_devices=2, chunk_size=2, K=K, lr=lr)
    state = sim.init(4)
    w0 = np.asarray(state.params["Dense_0"]["kernel"], np.float64)[:, 0]
    b0 = float(state.params["Dense_0"]["bias"][0])
    state, metrics = sim.run_block(state, 1)

    deltas = _numpy_client_deltas(pop, w0, b0, K, lr)
    sent = [(_topk_numpy(dw, k), _topk_numpy(db, 1)) for dw, db in deltas]
    mean_w = np.average([s[0] for s in sent], axis=0, weights=sizes)
    mean_b = np.average([s[1] for s in sent], axis=0, weights=sizes)
    np.testing.assert_allclose(np.asarray(state.params["Dense_0"]["kernel"])[:, 0] - w0, mean_w, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.params["Dense_0"]["bias"]) - b0, mean_b, atol=1e-6)

    residual = state.client_states["uplink"].residual["Dense_0"]
    for i, (dw, db) in enumerate(deltas):
        np.testing.assert_allclose(np.asarray(residual["kernel"][i])[:, 0], dw - sent[i][0], atol=1e-6)
        np.testing.assert_allclose(np.asarray(residual["bias"][i]), db - sent[i][1], atol=1e-6)
    # bits: per tensor 32 k + min(k ceil(log2 n), n): kernel n=12 -> 96 + 12; bias n=1 (k capped at 1) -> 32 + 0
    expected_bits = compress.bits_per_message(codec, jax.tree.map(np.asarray, sim.init(0).params))
    assert expected_bits == 32 * 3 + min(3 * 4, 12) + 32 * 1 + 0
    assert np.all(np.asarray(metrics.uplink_bits) == expected_bits)


def test_error_feedback_state_only_changes_for_the_cohort():
    pop = _regression_population([6] * 10)
    sim = _build(pop, uplink=compress.from_spec("sign+ef"), cohort=3)
    state = sim.init(1)
    state, metrics = sim.run_block(state, 1)
    cohort = set(np.asarray(metrics.cohort[0]).tolist())
    res = np.asarray(state.client_states["uplink"].residual["Dense_0"]["kernel"])
    touched = {i for i in range(10) if np.any(res[i] != 0)}
    assert touched == cohort


def _stateful_stochastic_run(num_devices, chunk_size):
    pop = _regression_population([3, 8, 5, 12, 7, 9, 4, 6, 10, 5, 8, 6])
    sim = _build(pop, uplink=compress.from_spec("qsgd:4:bucket=4+ef"), downlink=compress.from_spec("uniform:8"),
                 cohort=7, num_devices=num_devices, chunk_size=chunk_size)
    return sim.run_block(sim.init(2), 3)


@pytest.fixture(scope="module")
def stateful_stochastic_reference():
    return _stateful_stochastic_run(1, 1)


@pytest.mark.parametrize("num_devices,chunk_size", [(8, 1), (2, 3), (4, None)])
def test_stochastic_codecs_with_state_are_invariant_to_devices_and_chunks(
    stateful_stochastic_reference, num_devices, chunk_size
):
    s_ref, m_ref = stateful_stochastic_reference
    s, m = _stateful_stochastic_run(num_devices, chunk_size)
    np.testing.assert_array_equal(np.asarray(m.cohort), np.asarray(m_ref.cohort))
    for u, v in zip(jax.tree.leaves((s.params, s.client_states)), jax.tree.leaves((s_ref.params, s_ref.client_states))):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(m.uplink_bits), np.asarray(m_ref.uplink_bits))


def test_one_bit_downlink_round_matches_numpy_reference():
    """With a downlink codec, client i trains from the model it *received*,
    ``v_i = decode(encode(w_t, key_i))`` with ``key_i = purpose_key(client_key(round_key(run, t), i),
    DOWNLINK)``, and its delta is relative to that model: ``Delta_i = w_i - v_i``. The server adds
    the weighted mean of the deltas to its own model: ``w_{t+1} = w_t + sum_i n_i Delta_i / sum_i n_i``.
    The downlink bits are the codec's."""
    sizes = [5, 9, 7, 12]
    pop = _regression_population(sizes)
    K, lr, seed = 2, 0.05, 3
    codec = compress.from_spec("uniform:1")
    sim = _build(pop, downlink=codec, num_devices=2, chunk_size=1, K=K, lr=lr)
    state = sim.init(seed)
    p0 = jax.tree.map(np.asarray, state.params)
    w0 = p0["Dense_0"]["kernel"].astype(np.float64)[:, 0]
    b0 = float(p0["Dense_0"]["bias"][0])
    state, metrics = sim.run_block(state, 1)

    rkey = keys.round_key(jax.random.key(seed), 0)
    deltas, received = [], []
    for i in range(len(sizes)):
        message, _ = codec.encode(p0, codec.init(p0), keys.purpose_key(keys.client_key(rkey, i), keys.DOWNLINK))
        v = jax.tree.map(np.asarray, codec.decode(message))["Dense_0"]
        v_w, v_b = v["kernel"].astype(np.float64)[:, 0], float(v["bias"][0])
        received.append(np.concatenate([v_w, [v_b]]))
        x, y = (a.astype(np.float64) for a in pop.client(i))
        w, b = v_w.copy(), v_b
        for _ in range(K):
            r = x @ w + b - y
            w, b = w - lr * 2 * x.T @ r / len(y), b - lr * 2 * r.mean()
        deltas.append(np.concatenate([w - v_w, [b - v_b]]))
    start = np.concatenate([w0, [b0]])
    expected = start + np.average(deltas, axis=0, weights=sizes)
    got = np.concatenate([np.asarray(state.params["Dense_0"]["kernel"])[:, 0], np.asarray(state.params["Dense_0"]["bias"])])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # the 1-bit models are far from w_t: a delta taken against w_t would miss by about this much
    assert np.max(np.abs(np.average(received, axis=0, weights=sizes) - start)) > 1e-2
    assert np.all(np.asarray(metrics.downlink_bits) == compress.bits_per_message(codec, p0))


def _integer_run(num_devices, chunk_size, spec="uniform:16:bucket=4", integer=True, rounds=2):
    pop = _regression_population([3, 8, 5, 12, 7, 9, 4, 6, 10, 5])
    sim = _build(pop, uplink=compress.from_spec(spec), cohort=6, num_devices=num_devices,
                 chunk_size=chunk_size) if not integer else engine.build(
        pop, models.linear_regression(1), algorithms.fedavg(optax.sgd(0.05)),
        engine.LocalSchedule(local_steps=2, batch_size=None), cohort_size=6, num_devices=num_devices,
        chunk_size=chunk_size, aggregator=aggregate.integer_mean(compress.from_spec(spec)))
    return sim, sim.run_block(sim.init(3), rounds)


def test_integer_domain_aggregation_matches_float_round_within_the_grid_step():
    """16-bit codes on a shared scale: the integer-domain mean is the float mean up to ~one step."""
    _, (s_float, _) = _integer_run(1, None, spec="none", integer=False)
    sim, (s_int, m_int) = _integer_run(1, None)
    for u, v in zip(jax.tree.leaves(s_int.params), jax.tree.leaves(s_float.params)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=1e-3)
    codec = compress.from_spec("uniform:16:bucket=4")
    assert np.all(np.asarray(m_int.uplink_bits) == compress.bits_per_message(codec, jax.tree.map(np.asarray, s_int.params)))


@pytest.mark.parametrize("num_devices,chunk_size", [(4, 1), (2, 3)])
def test_integer_domain_aggregation_is_invariant_to_devices_and_chunks(num_devices, chunk_size):
    """Integer sums are exact and the shared scale is a max, so the device split cannot matter."""
    _, (s_ref, m_ref) = _integer_run(1, 1, spec="qsgd:4:bucket=4")
    _, (s, m) = _integer_run(num_devices, chunk_size, spec="qsgd:4:bucket=4")
    np.testing.assert_array_equal(np.asarray(m.cohort), np.asarray(m_ref.cohort))
    for u, v in zip(jax.tree.leaves(s.params), jax.tree.leaves(s_ref.params)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=1e-6)


@pytest.mark.parametrize("spec", [None, "sign", "qsgd:4+ef"])
def test_integer_aggregation_refuses_codecs_that_cannot_sum_codes(spec):
    pop = _regression_population([4, 4])
    del pop
    with pytest.raises(ValueError, match="integer aggregation needs an uplink codec"):
        aggregate.integer_mean(None if spec is None else compress.from_spec(spec))
