"""Robust aggregation rules on stacks with padding: equality with NumPy, breakdown, closeness to the mean."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import robust_reference as ref
from jaxqfl import aggregate
from jaxqfl.aggregate.base import CohortInfo, CohortStatistics
from jaxqfl.algorithms.base import ClientInfo

SHAPES = {"b": (5,), "w": (3, 4)}  # an update pytree: 17 coordinates


def _stack(rng, m, scale=1.0, loc=0.0):
    return {k: (loc + scale * rng.normal(size=(m,) + s)).astype(np.float32) for k, s in SHAPES.items()}


def _flat(tree):
    return np.concatenate([np.asarray(tree[k], np.float64).reshape(tree[k].shape[0], -1) for k in sorted(SHAPES)], 1)


def _flat1(tree):
    return np.concatenate([np.asarray(tree[k], np.float64).reshape(-1) for k in sorted(SHAPES)])


def apply_rule(agg, updates, weights, valid, state=None):
    """What the engine does with a cohort's (already decoded) updates, on one device."""
    m = len(valid)
    valid = jnp.asarray(valid)
    params = jax.tree.map(lambda a: jnp.zeros(a.shape[1:], jnp.float32), updates)
    state = agg.init(params) if state is None else state
    cohort = CohortInfo(ids=jnp.arange(m, dtype=jnp.int32), valid=valid, key=jax.random.key(0), round=jnp.int32(0))
    infos = ClientInfo(jnp.arange(m, dtype=jnp.int32), jnp.ones(m, jnp.int32), jnp.ones(m, jnp.int32),
                       jax.random.split(jax.random.key(1), m), jnp.zeros(m, jnp.int32))

    @jax.jit
    def go(updates, weights, state):
        summands, _, _ = jax.vmap(lambda u, w, i: agg.client(u, w, (), state, CohortStatistics(), i))(
            updates, weights, infos)
        if agg.reduction == "sum":
            summands = jax.tree.map(
                lambda a: jnp.sum(jnp.where(valid.reshape((-1,) + (1,) * (a.ndim - 1)), a, 0), 0), summands)
        return agg.server(summands, state, CohortStatistics(), cohort)

    aggregate_, new_state, _ = go(updates, jnp.asarray(weights, jnp.float32), state)
    return _flat1(jax.device_get(aggregate_)), new_state


RULES = {
    "median": (aggregate.median(), lambda x, w: ref.median(x)),
    "trimmed-mean": (aggregate.trimmed_mean(0.2), lambda x, w: ref.trimmed_mean(x, 0.2)),
    "krum": (aggregate.krum(0.2), lambda x, w: ref.multi_krum(x, 0.2, m=1)),
    "multi-krum": (aggregate.multi_krum(0.2), lambda x, w: ref.multi_krum(x, 0.2)),
    "multi-krum-3": (aggregate.multi_krum(0.1, num_selected=3), lambda x, w: ref.multi_krum(x, 0.1, m=3)),
    "bulyan": (aggregate.bulyan(0.2), lambda x, w: ref.bulyan(x, 0.2)),
    "geomed": (aggregate.geometric_median(), lambda x, w: ref.geometric_median(x, w)),
    "norm-bound": (aggregate.norm_bound(3.0), lambda x, w: ref.norm_bound(x, w, 3.0)),
    "centered-clip": (aggregate.centered_clip(3.0), lambda x, w: ref.centered_clip(x, w, 3.0, 0.0)),
}


@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_equals_numpy_on_stacks_with_padding(name):
    """Random stacks of 12 slots, of which n are real (scattered among garbage padding rows)."""
    agg, reference = RULES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    for n in (1, 5, 8, 11):
        updates = _stack(rng, 12)
        valid = np.zeros(12, bool)
        valid[rng.choice(12, n, replace=False)] = True
        for k in updates:  # padding slots hold garbage: huge values and NaN must not leak in
            updates[k][~valid] = np.where(rng.random(updates[k][~valid].shape) < 0.5, 1e30, np.nan)
        weights = rng.integers(1, 9, size=12).astype(np.float64)
        weights[~valid] = 0.0
        got, _ = apply_rule(agg, updates, weights, valid)
        want = reference(_flat(updates)[valid], weights[valid])
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5, err_msg=f"{name}, n={n}")


def test_centered_clip_centres_on_the_previous_aggregate():
    agg = aggregate.centered_clip(0.5)
    rng = np.random.default_rng(0)
    valid = np.arange(8) < 6
    weights = np.where(valid, 1.0, 0.0)
    first, state = apply_rule(agg, _stack(rng, 8, loc=2.0), weights, valid)
    second_updates = _stack(rng, 8, loc=2.0)
    got, _ = apply_rule(agg, second_updates, weights, valid, state=state)
    want = ref.centered_clip(_flat(second_updates)[valid], weights[valid], 0.5, first)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.linalg.norm(got - first) <= 0.5 + 1e-5  # one step moves the centre by at most tau


@pytest.mark.parametrize("name", ["median", "trimmed-mean", "geomed"])
def test_breakdown_huge_adversarial_rows_stay_out(name):
    """3 of 10 rows are adversarial and huge (1e8): the median and the trimmed mean (beta = 0.3) stay
    inside each coordinate's honest range, the geometric median inside the ball of radius
    2 (1 - e) / (1 - 2 e) max_i ||x_i - mean_h|| around the honest mean (e = 0.3, Pillutla et al. 2022, Thm 1).
    """
    agg = {"median": aggregate.median(), "trimmed-mean": aggregate.trimmed_mean(0.3),
           "geomed": aggregate.geometric_median()}[name]
    rng = np.random.default_rng(1)
    updates = _stack(rng, 12)
    bad = np.array([1, 4, 7])
    for k in updates:
        updates[k][bad] = 1e8 * rng.choice([-1.0, 1.0], size=updates[k][bad].shape)
    valid = np.arange(12) < 10
    honest = _flat(updates)[[i for i in range(10) if i not in bad]]
    got, _ = apply_rule(agg, updates, np.where(valid, 1.0, 0.0), valid)
    if name == "geomed":
        mu = honest.mean(0)
        radius = 2 * 0.7 / 0.4 * np.linalg.norm(honest - mu, axis=1).max()
        assert np.linalg.norm(got - mu) <= radius
    else:
        assert np.all(got >= honest.min(0) - 1e-6) and np.all(got <= honest.max(0) + 1e-6)


def test_krum_selects_an_honest_row():
    """7 honest rows near 0 (std 0.1), 3 identical attackers at distance 3: Krum returns an honest row."""
    rng = np.random.default_rng(2)
    updates = _stack(rng, 10, scale=0.1)
    for k in updates:
        updates[k][7:] = 3.0 / np.sqrt(17)
    valid = np.ones(10, bool)
    got, _ = apply_rule(aggregate.krum(0.3), updates, np.ones(10), valid)
    rows = _flat(updates)
    match = np.flatnonzero(np.all(np.abs(rows - got) < 1e-6, axis=1))
    assert len(match) == 1 and match[0] < 7
    mk, _ = apply_rule(aggregate.multi_krum(0.3), updates, np.ones(10), valid)  # mean of the 7 best: the honest
    np.testing.assert_allclose(mk, rows[:7].mean(0), atol=1e-6)


# Bound: n = 40 i.i.d. rows N(mu, s^2 I) in P = 17 coordinates, no attacker; each rule's distance to the
# mean, in units of s sqrt(P) (a single row's typical distance to the mean is 1 in these units):
# at most 0.5 for the averaging rules (median, trimmed mean, Multi-Krum, Bulyan, geometric median; their
# errors are O(1/sqrt(n))), at most 1.1 for Krum (it returns one row), and 1e-5 for norm bounding and
# centered clipping with a radius above every row's norm (they are then the mean exactly).
IID_BOUNDS = {"median": 0.5, "trimmed-mean": 0.5, "krum": 1.1, "multi-krum": 0.5, "multi-krum-3": 1.0,
              "bulyan": 0.5, "geomed": 0.5, "norm-bound": 1e-5, "centered-clip": 1e-5}


@pytest.mark.parametrize("name", sorted(RULES))
def test_without_attackers_each_rule_is_close_to_the_mean(name):
    agg = {"norm-bound": aggregate.norm_bound(1e3), "centered-clip": aggregate.centered_clip(1e3)}.get(
        name, RULES[name][0])
    rng = np.random.default_rng(4)
    updates = _stack(rng, 40, scale=0.5, loc=1.0)
    valid = np.ones(40, bool)
    got, _ = apply_rule(agg, updates, np.ones(40), valid)
    mean = _flat(updates).mean(0)
    assert np.linalg.norm(got - mean) / (0.5 * np.sqrt(17)) <= IID_BOUNDS[name]


def test_bad_hyper_parameters_are_refused():
    with pytest.raises(ValueError, match="trim_fraction"):
        aggregate.trimmed_mean(0.5)
    with pytest.raises(ValueError, match="assumed_fraction"):
        aggregate.bulyan(0.3)
    with pytest.raises(ValueError, match="num_selected"):
        aggregate.multi_krum(0.2, num_selected=0)
    with pytest.raises(ValueError, match="clipping radius"):
        aggregate.norm_bound(-1.0)
    with pytest.raises(ValueError, match="num_iters"):
        aggregate.geometric_median(num_iters=0)
