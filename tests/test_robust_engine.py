"""Robust rules and threat models through the engine: device-count invariance, NumPy equality on the
engine's own stacks, the malicious set, attacks before the codec, label flipping."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import robust_reference as ref
from jaxqfl import aggregate, algorithms, engine, models
from jaxqfl.aggregate.base import Aggregator
from populations import classification_population

C, M = 21, 7


@pytest.fixture(scope="module")
def population():
    rng = np.random.default_rng(3)
    return classification_population(rng.integers(2, 15, size=C).tolist(), num_features=5, num_classes=3, seed=3)


def side_by_side(rules, m_pad):
    """One aggregator running several rules of one reduction on the same cohort; the first one's aggregate
    is used, every rule's aggregate is kept in the state (``outputs``), and a gather run also keeps the stack."""
    gather = rules[0].reduction == "gather"

    def init(params):
        zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
        state = {"inner": tuple(r.init(params) for r in rules), "outputs": tuple(zeros for _ in rules)}
        if gather:
            state["stack"] = jax.tree.map(lambda p: jnp.zeros((m_pad,) + jnp.shape(p), jnp.float32), params)
            state["valid"] = jnp.zeros((m_pad,), bool)
            state["ids"] = jnp.zeros((m_pad,), jnp.int32)
        return state

    def client(update, weight, client_state, state, stats, info):
        if gather:
            return (update, weight), client_state, {}
        return tuple(r.client(update, weight, (), s, stats, info)[0] for r, s in zip(rules, state["inner"])), \
            client_state, {}

    def server(reduced, state, stats, cohort):
        outs = [r.server(reduced if gather else reduced[k], state["inner"][k], stats, cohort)
                for k, r in enumerate(rules)]
        new = {"inner": tuple(o[1] for o in outs), "outputs": tuple(o[0] for o in outs)}
        if gather:
            new.update(stack=reduced[0], valid=cohort.valid, ids=cohort.ids)
        return outs[0][0], new, dict(outs[0][2])

    return Aggregator(init=init, client_state_init=lambda p: (), reduction=rules[0].reduction, client=client,
                      server=server)


GATHER = {"median": (aggregate.median(), lambda x, w: ref.median(x)),
          "trimmed-mean": (aggregate.trimmed_mean(0.2), lambda x, w: ref.trimmed_mean(x, 0.2)),
          "krum": (aggregate.krum(0.2), lambda x, w: ref.multi_krum(x, 0.2, m=1)),
          "multi-krum": (aggregate.multi_krum(0.2), lambda x, w: ref.multi_krum(x, 0.2)),
          "bulyan": (aggregate.bulyan(0.2), lambda x, w: ref.bulyan(x, 0.2)),
          "geomed": (aggregate.geometric_median(), lambda x, w: ref.geometric_median(x, w))}
SUM = {"norm-bound": (aggregate.norm_bound(0.05), lambda x, w: ref.norm_bound(x, w, 0.05)),
       "centered-clip": (aggregate.centered_clip(0.05), lambda x, w: ref.centered_clip(x, w, 0.05, 0.0))}


def _run(population, aggregator, *, num_devices=2, rounds=1, label_transform=None):
    sim = engine.build(population, models.mlp(hidden=(6,), num_outputs=3),
                       algorithms.fedavg(optax.sgd(0.3), optax.sgd(1.0), weighting="examples"),
                       engine.LocalSchedule(local_steps=2, batch_size=4), cohort_size=M, num_devices=num_devices,
                       chunk_size=1, aggregator=aggregator, label_transform=label_transform)
    state, metrics = sim.run_block(sim.init(5), rounds)
    return jax.device_get(state), jax.device_get(metrics)


def _rows(tree):
    leaves = jax.tree.leaves(tree)
    return np.concatenate([np.asarray(a, np.float64).reshape(a.shape[0], -1) for a in leaves], 1)


def _vec(tree):
    return np.concatenate([np.asarray(a, np.float64).reshape(-1) for a in jax.tree.leaves(tree)])


def _m_pad(d):
    return d * -(-M // d)


_CACHE = {}


def _gather_run(population, d):
    if d not in _CACHE:
        _CACHE[d] = _run(population, side_by_side([r for r, _ in GATHER.values()], _m_pad(d)), num_devices=d)
    return _CACHE[d]


@pytest.mark.parametrize("num_devices", [1, pytest.param(2, marks=pytest.mark.slow),
                                         pytest.param(4, marks=pytest.mark.slow), 8])
def test_rules_through_the_engine_equal_numpy_and_ignore_the_device_count(population, num_devices):
    """Cohort 7 on D devices, one client per chunk: D * ceil(7 / D) slots, the tail padding (on 8 devices
    the last device holds padding only). 2 and 4 devices run with ``-m slow`` (about 15 s each on 2 cores)."""
    state, _ = _gather_run(population, num_devices)
    agg_state = state.aggregator_state
    valid = np.asarray(agg_state["valid"])
    assert valid.sum() == M and len(valid) == _m_pad(num_devices)
    x = _rows(agg_state["stack"])[valid]
    counts = np.asarray(population.counts)[np.asarray(agg_state["ids"])[valid]].astype(np.float64)
    base, _ = _gather_run(population, 1)
    for k, (name, (_, reference)) in enumerate(GATHER.items()):
        got = _vec(agg_state["outputs"][k])
        np.testing.assert_allclose(got, reference(x, counts), rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(got, _vec(base.aggregator_state["outputs"][k]), rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    sum_state, _ = _run(population, side_by_side([r for r, _ in SUM.values()], 0), num_devices=num_devices)
    for k, (name, (_, reference)) in enumerate(SUM.items()):
        np.testing.assert_allclose(_vec(sum_state.aggregator_state["outputs"][k]), reference(x, counts),
                                   rtol=1e-4, atol=1e-6, err_msg=name)


def test_malicious_set_has_exactly_the_fraction_and_depends_on_the_seed_only():
    for fraction, num_clients in [(0.2, 100), (0.1, 1000), (0.3, 7), (0.0, 10), (1.0, 10)]:
        mask = aggregate.malicious_mask(fraction, num_clients, seed=4)
        assert mask.sum() == round(fraction * num_clients)
        np.testing.assert_array_equal(mask, aggregate.malicious_mask(fraction, num_clients, seed=4))
    assert not np.array_equal(aggregate.malicious_mask(0.2, 100, 1), aggregate.malicious_mask(0.2, 100, 2))
    with pytest.raises(ValueError, match="fraction"):
        aggregate.malicious_mask(1.5, 10, 0)


def test_malicious_count_metric_follows_one_fixed_set_over_rounds(population):
    attacked = aggregate.with_attack(aggregate.attacks.sign_flip(), 0.3, aggregate.mean(), num_clients=C, seed=2)
    _, metrics = _run(population, attacked, rounds=4)
    mask = aggregate.malicious_mask(0.3, C, seed=2)
    expected = mask[np.asarray(metrics.cohort)].sum(axis=1)
    np.testing.assert_array_equal(np.asarray(metrics.server["malicious_in_cohort"]), expected)
    assert len(set(map(tuple, np.asarray(metrics.cohort)))) > 1 and expected.max() > 0


def _recorded(population, attack=None, label_transform=None):
    recorder = side_by_side([aggregate.gather_mean()], _m_pad(2))
    if attack is not None:
        recorder = aggregate.with_attack(attack, 0.3, recorder, num_clients=C, seed=2)
    state, _ = _run(population, recorder, label_transform=label_transform)
    s = state.aggregator_state
    valid = np.asarray(s["valid"])
    return np.asarray(s["ids"])[valid], _rows(s["stack"])[valid]


@pytest.mark.slow
def test_attacks_replace_only_the_malicious_rows(population):
    """Sign flip: malicious rows are the negated clean rows; ALIE: they are mu_h - z sigma_h of the clean
    honest rows of the same round (z = Phi^-1((n - s) / n), s = floor(n / 2 + 1) - f, the ratio clamped to
    [0.5, 1 - 1e-6]); honest rows unchanged."""
    from scipy.stats import norm

    ids, clean = _recorded(population)
    bad = aggregate.malicious_mask(0.3, C, seed=2)[ids]
    assert 0 < bad.sum() < M
    _, flipped = _recorded(population, aggregate.attacks.sign_flip())
    np.testing.assert_allclose(flipped[~bad], clean[~bad], atol=1e-7)
    np.testing.assert_allclose(flipped[bad], -clean[bad], atol=1e-7)
    _, alie = _recorded(population, aggregate.attacks.alie())
    n, f = M, bad.sum()
    ratio = np.clip((n - (np.floor(n / 2 + 1) - f)) / n, 0.5, float(np.float32(1 - 1e-6)))  # clamped when f >= n/2
    z = norm.ppf(ratio)
    honest = clean[~bad]
    want = honest.mean(0) - z * honest.std(0)
    np.testing.assert_allclose(alie[~bad], clean[~bad], atol=1e-7)
    np.testing.assert_allclose(alie[bad], np.broadcast_to(want, alie[bad].shape), rtol=1e-4, atol=1e-5)


def test_label_flipping_changes_only_the_malicious_clients_labels(population):
    transform = aggregate.label_flip_transform(0.3, num_clients=C, num_classes=3, seed=2)
    mask = aggregate.malicious_mask(0.3, C, seed=2)
    y = jnp.array([0, 1, 2, 2, 0])
    info = lambda cid: aggregate.base.ClientInfo(jnp.int32(cid), 0, 0, jax.random.key(0), 0)
    for cid in range(C):
        want = 2 - np.asarray(y) if mask[cid] else np.asarray(y)
        np.testing.assert_array_equal(np.asarray(transform(y, info(cid))), want)
    ids, clean = _recorded(population)
    ids2, relabelled = _recorded(population, label_transform=transform)
    np.testing.assert_array_equal(ids, ids2)
    bad = mask[ids]
    np.testing.assert_array_equal(relabelled[~bad], clean[~bad])  # honest clients: bit for bit
    assert np.all(np.abs(relabelled[bad] - clean[bad]).max(axis=1) > 1e-4)
