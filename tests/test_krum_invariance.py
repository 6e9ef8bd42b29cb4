"""Krum, Multi-Krum and Bulyan are invariant to a common offset of the updates.

The rules compare squared distances ``||x_i - x_j||^2``, which do not change when
every update gains the same vector ``c``. Written in Gram form
``||x_i||^2 + ||x_j||^2 - 2 x_i.x_j`` in float32 they lose the distances once
``||c||^2`` dwarfs them (9 honest rows 1e-2 apart shifted by 3,000: Krum picked
the outlier). The references are NumPy float64 on the same float32 rows.
"""
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import robust_reference as ref
from jaxqfl import aggregate
from jaxqfl.aggregate.base import CohortInfo, CohortStatistics
from jaxqfl.aggregate.krum import bulyan_select, multi_krum_select
from jaxqfl.aggregate.stacked import pairwise_sq_distances

P = 30


def _cluster_and_outlier(shift, seed=0):
    """9 honest rows ``1e-2`` apart around a common point, one outlier 0.05 away per coordinate."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=P)
    honest = base + 1e-2 * rng.normal(size=(9, P))
    outlier = base + 0.05 * np.sign(rng.normal(size=P))
    x = np.vstack([outlier, honest]) + shift  # the outlier in slot 0, where ties would go
    return x.astype(np.float32)


RULES = {"krum": aggregate.krum(0.2), "multi-krum": aggregate.multi_krum(0.2)}


def _server_of(agg):
    """The gather rule's server side on ``(rows, valid)``, jitted once per rule (shapes are fixed)."""

    @jax.jit
    def go(x, valid):
        m = x.shape[0]
        cohort = CohortInfo(ids=jnp.arange(m, dtype=jnp.int32), valid=valid, key=jax.random.key(0),
                            round=jnp.int32(0))
        out, _, _ = agg.server(({"w": x}, jnp.ones(m, jnp.float32)), (), CohortStatistics(), cohort)
        return out["w"]

    return go


SERVERS = {name: _server_of(agg) for name, agg in RULES.items()}


def _rule_output(name, x, valid=None):
    valid = np.ones(len(x), bool) if valid is None else valid
    return np.asarray(SERVERS[name](jnp.asarray(x), jnp.asarray(valid)), np.float64)


def _chosen_row(out, x):
    return int(np.argmin(np.abs(x.astype(np.float64) - out).max(axis=1)))


def test_krum_picks_the_same_row_after_a_shift_of_3000():
    plain, shifted = _cluster_and_outlier(0.0), _cluster_and_outlier(3000.0)
    expected = int(np.argmin(ref.krum_scores(shifted.astype(np.float64), 2)))
    assert expected == int(np.argmin(ref.krum_scores(plain.astype(np.float64), 2))) != 0
    got_plain = _chosen_row(_rule_output("krum", plain), plain)
    out = _rule_output("krum", shifted)
    np.testing.assert_array_equal(out, shifted[expected].astype(np.float64))
    assert got_plain == expected


def _recursive_krum(x, f):
    """Bulyan's first phase in NumPy: Krum applied ``n - 2f`` times, the chosen row leaving the set."""
    remaining, chosen = list(range(len(x))), []
    for _ in range(len(x) - 2 * f):
        best = remaining[int(np.argmin(ref.krum_scores(x[remaining], f)))]
        chosen.append(best)
        remaining.remove(best)
    return sorted(chosen)


def test_multi_krum_and_bulyan_select_the_same_rows_after_a_shift_of_3000():
    """The distance-based selections (Multi-Krum's n - f rows, Bulyan's recursive Krum) on the
    shifted rows equal NumPy float64's, and equal the unshifted selections."""
    for shift in (0.0, 3000.0):
        x = _cluster_and_outlier(shift)
        x64, valid = x.astype(np.float64), jnp.ones(len(x), bool)
        multi = np.flatnonzero(np.asarray(jax.jit(multi_krum_select)(jnp.asarray(x), valid, 2, 8)))
        assert multi.tolist() == sorted(np.argsort(ref.krum_scores(x64, 2), kind="stable")[:8].tolist())
        assert 0 not in multi
        bulyan = np.flatnonzero(np.asarray(jax.jit(bulyan_select)(jnp.asarray(x), valid, 1)))
        assert bulyan.tolist() == _recursive_krum(x64, 1)
        assert 0 not in bulyan
    np.testing.assert_allclose(_rule_output("multi-krum", x), ref.multi_krum(x64, 0.2), rtol=0, atol=5e-4)


def test_distances_of_shifted_rows_are_the_differences():
    x = _cluster_and_outlier(3000.0)
    d = np.asarray(pairwise_sq_distances(jnp.asarray(x), jnp.ones(len(x), bool)))
    x64 = x.astype(np.float64)
    exact = ((x64[:, None] - x64[None]) ** 2).sum(-1)
    off = ~np.eye(len(x), dtype=bool)
    np.testing.assert_allclose(d[off], exact[off], rtol=1e-4)
    assert np.all(np.isinf(np.diag(d)))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), log_shift=st.floats(-2.0, 4.0), padding=st.integers(0, 2))
def test_krum_choice_is_invariant_to_a_common_offset(seed, log_shift, padding):
    """For any offset ``c`` (up to 1e4 per coordinate, random direction) Krum's row on ``x + c`` is a
    row of minimal float64 score on those very rows (within float32 rounding of the shifted rows),
    and the same row as without the offset when the scores are well separated."""
    rng = np.random.default_rng(seed)
    n = 10
    x = rng.normal(size=(n, P)) * rng.uniform(0.01, 1.0, size=(n, 1))  # rows of different spread
    c = 10.0 ** log_shift * rng.normal(size=P)
    shifted = (x + c).astype(np.float32)
    m = n + padding  # padding rows hold garbage and must not count
    rows = np.vstack([shifted, rng.normal(size=(padding, P)).astype(np.float32) * 1e6])
    valid = np.arange(m) < n
    out = _rule_output("krum", rows, valid)
    got = _chosen_row(out, shifted)
    np.testing.assert_array_equal(out, shifted[got].astype(np.float64))
    scores = ref.krum_scores(shifted.astype(np.float64), 2)
    rounding = 4 * 10 * P * (np.abs(shifted).max() * 2.0 ** -23) * np.sqrt(scores.max())  # shift rounding
    assert scores[got] <= scores.min() * (1 + 1e-4) + rounding
    plain = ref.krum_scores(x, 2)
    best, second = np.sort(plain)[:2]
    if second - best > 2 * rounding + 1e-4 * best:
        assert got == int(np.argmin(plain))
