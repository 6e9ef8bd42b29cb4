"""Uniform integer quantizers: grids, round trips, error bounds, unbiasedness, estimators."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxqfl import quant
from jaxqfl.quant import rounding

MODES = [(b, sym) for b in range(1, 9) for sym in (True, False) if not (b == 1 and not sym)]


# A few fixed shapes keep XLA's compilation caches warm across hypothesis examples.
SHAPES = [(7,), (2, 3, 4)]


def _finite_arrays(max_dims=3):
    return st.sampled_from([s for s in SHAPES if len(s) <= max_dims]).flatmap(
        lambda shape: hnp.arrays(np.float32, shape, elements=st.floats(-1e4, 1e4, width=32, allow_subnormal=False))
    )


@pytest.mark.slow
@settings(max_examples=20, deadline=None)
@given(x=_finite_arrays(), mode=st.sampled_from(MODES), stochastic=st.booleans(), per_channel=st.booleans(), seed=st.integers(0, 2**16))
def test_codes_lie_in_range_with_smallest_dtype(x, mode, stochastic, per_channel, seed):
    bits, symmetric = mode
    axis = -1 if per_channel else None
    q = quant.uniform(bits, symmetric=symmetric, axis=axis, rounding="stochastic" if stochastic else "nearest")
    qt = q.quantize(jnp.asarray(x), jax.random.key(seed))
    lo, hi = quant.code_range(bits, symmetric)
    codes = np.asarray(qt.codes)
    assert codes.dtype == (np.int8 if symmetric else np.uint8)
    assert codes.shape == x.shape
    assert codes.min() >= lo and codes.max() <= hi
    if bits == 1:
        assert set(np.unique(codes)) <= {-1, 1}
    y = np.asarray(q.dequantize(qt))
    assert np.all(np.isfinite(y))


@settings(max_examples=20, deadline=None)
@given(bits=st.integers(2, 8), symmetric=st.booleans(), k=st.integers(-6, 6), data=st.data())
def test_values_on_the_grid_round_trip_exactly(bits, symmetric, k, data):
    lo, hi = quant.code_range(bits, symmetric)
    n = 16
    codes = np.array(data.draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n)), np.int64)
    s = 2.0**k  # exact scale
    if symmetric:
        codes[0] = hi  # absmax = Q s exactly
        x = codes * s
    else:
        z = data.draw(st.integers(lo, hi))
        codes[0], codes[1] = lo, hi  # min/max pin the range to [-(z) s, (2^b - 1 - z) s]
        x = (codes - z) * s
    q = quant.uniform(bits, symmetric=symmetric)
    y = q.fake_quant(jnp.asarray(x, jnp.float32))
    np.testing.assert_array_equal(np.asarray(y), x.astype(np.float32))


@settings(max_examples=20, deadline=None)
@given(x=_finite_arrays(), bits=st.integers(2, 8), symmetric=st.booleans(), axis=st.sampled_from([None, 0, -1]))
def test_round_to_nearest_error_at_most_half_a_step(x, bits, symmetric, axis):
    q = quant.uniform(bits, symmetric=symmetric, axis=axis)
    qt = q.quantize(jnp.asarray(x))
    err = np.abs(np.asarray(q.dequantize(qt)) - x)
    step = np.broadcast_to(np.asarray(qt.scale), x.shape)
    tol = 0.5 * step * (1 + 1e-5) + 1e-6 * np.abs(x)
    assert np.all(err <= tol)


@pytest.mark.parametrize("bits,symmetric", [(2, True), (4, True), (3, False), (8, False)])
def test_stochastic_rounding_is_unbiased(bits, symmetric):
    x = jax.random.uniform(jax.random.key(0), (64,), minval=-1.5, maxval=2.0)
    q = quant.uniform(bits, symmetric=symmetric, rounding="stochastic")
    n = 4000
    keys = jax.random.split(jax.random.key(1), n)
    ys = jax.jit(jax.vmap(q.fake_quant, in_axes=(None, 0)))(x, keys)
    step = q.quantize(x).scale.item()
    # per element Var <= step^2 / 4, so the mean of n draws has std <= step / (2 sqrt n)
    bound = 5.0 * step / (2.0 * np.sqrt(n))
    np.testing.assert_array_less(np.abs(np.asarray(ys.mean(0) - x)), bound)
    assert float(ys.var(0).max()) <= step**2 / 4 * 1.1
    assert float(ys.var(0).mean()) > 0  # it is actually random


def test_stochastic_binary_with_absmax_scale_is_unbiased():
    x = jnp.linspace(-1.0, 1.0, 33)
    q = quant.binary(scale_method="absmax", rounding="stochastic")
    keys = jax.random.split(jax.random.key(2), 4000)
    ys = jax.vmap(q.fake_quant, in_axes=(None, 0))(x, keys)
    assert set(np.unique(np.asarray(ys))) <= {-1.0, 1.0}
    # Var = 1 - x^2 <= 1, mean of 4000 has std <= 1/63
    np.testing.assert_array_less(np.abs(np.asarray(ys.mean(0) - x)), 5 / np.sqrt(4000))


def test_binary_uses_mean_abs_scale_and_sign_codes():
    x = jnp.array([[-2.0, 0.5, 1.5], [0.0, -1.0, 3.0]])
    qt = quant.binary(axis=0).quantize(x)
    np.testing.assert_allclose(np.asarray(qt.scale).ravel(), [4.0 / 3, 4.0 / 3])
    np.testing.assert_array_equal(np.asarray(qt.codes), [[-1, 1, 1], [1, -1, 1]])


@pytest.mark.parametrize("axis", [None, 0])
def test_binary_clipped_ste_passes_gradient_where_x_over_scale_is_within_one(axis):
    """Hardtanh STE of Hubara et al. 2016 on the *scaled* input: d fq(x) / dx = 1 where
    ``|x / s| <= 1`` (s = mean |x|, here far from 1), else 0; a NumPy reference of the mask."""
    x = np.array([[2.0, -3.0, 0.5, 20.0, -0.8], [9.0, -1.5, 4.0, -30.0, 0.2]], np.float32)
    q = quant.binary(axis=axis)
    upstream = np.arange(1.0, 11.0, dtype=np.float32).reshape(x.shape)
    g = np.asarray(jax.grad(lambda v: jnp.sum(q.fake_quant(v) * upstream))(jnp.asarray(x)))
    s = np.mean(np.abs(x), axis=None if axis is None else 1, keepdims=True)
    assert np.all(s > 2.0)  # a scale of 1 would hide the bug of masking |x| <= 1
    expected = upstream * (np.abs(x / s) <= 1.0)
    np.testing.assert_array_equal(g, expected)
    assert np.any((np.abs(x) > 1.0) & (np.abs(x / s) <= 1.0))


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_per_channel_has_one_scale_per_channel(axis):
    x = jax.random.normal(jax.random.key(0), (3, 4, 5)) * jnp.arange(1, 6)
    q = quant.uniform(8, axis=axis)
    qt = q.quantize(x)
    expect = [1, 1, 1]
    expect[axis] = x.shape[axis]
    assert qt.scale.shape == tuple(expect)
    absmax = np.max(np.abs(np.moveaxis(np.asarray(x), axis, 0)).reshape(x.shape[axis], -1), axis=1)
    np.testing.assert_allclose(np.asarray(qt.scale).ravel(), absmax / 127, rtol=1e-6)
    # each channel's largest magnitude maps to +-127
    codes = np.moveaxis(np.asarray(qt.codes), axis, 0).reshape(x.shape[axis], -1)
    assert np.all(np.abs(codes).max(axis=1) == 127)


def test_asymmetric_zero_point_and_uint8_codes():
    x = jnp.array([0.0, 1.0, 2.0, 3.0, 5.1])
    qt = quant.uniform(8, symmetric=False).quantize(x)
    assert qt.codes.dtype == jnp.uint8 and qt.zero_point.dtype == jnp.uint8
    assert qt.zero_point.item() == 0 and qt.codes[-1].item() == 255
    qt = quant.uniform(8, symmetric=False).quantize(x - 1.0)
    np.testing.assert_allclose(qt.scale.item(), 5.1 / 255, rtol=1e-6)
    assert qt.zero_point.item() == 50  # rn(1 / (5.1/255))
    assert float(quant.uniform(8, symmetric=False).fake_quant(jnp.zeros(3) + 0.0)[0]) == 0.0


def test_percentile_scale_clips_outliers_and_clipped_ste_zeros_their_gradient():
    x = jnp.concatenate([jnp.linspace(-1, 1, 99), jnp.array([50.0])])
    q = quant.uniform(8, scale_method="percentile", percentile=99.0)
    qt = q.quantize(x)
    assert qt.scale.item() * 127 < 2.0  # the outlier did not set the range
    g = jax.grad(lambda v: jnp.sum(q.fake_quant(v)))(x)
    np.testing.assert_array_equal(np.asarray(g), np.r_[np.ones(99), 0.0])
    g_id = jax.grad(lambda v: jnp.sum(quant.uniform(8, scale_method="percentile", percentile=99.0, ste="identity").fake_quant(v)))(x)
    np.testing.assert_array_equal(np.asarray(g_id), np.ones(100))


@settings(max_examples=20, deadline=None)
@given(x=_finite_arrays(max_dims=2), symmetric=st.booleans(), bits=st.integers(2, 8))
def test_gradient_is_the_estimator_definition(x, symmetric, bits):
    """Clipped STE: dL/dx = dL/dy inside the representable range (widened by half a
    step, where clipping changes nothing beyond rounding), 0 outside."""
    x = jnp.asarray(x)
    w = jax.random.normal(jax.random.key(0), x.shape)
    q = quant.uniform(bits, symmetric=symmetric, scale_method="percentile", percentile=90.0)
    g = jax.grad(lambda v: jnp.sum(w * q.fake_quant(v)))(x)
    qt = q.quantize(x)
    z = 0.0 if qt.zero_point is None else np.asarray(qt.zero_point, np.float32)
    lo, hi = quant.code_range(bits, symmetric)
    v = np.asarray(x) / np.asarray(qt.scale) + z
    inside = (v >= lo - 0.5) & (v <= hi + 0.5)
    np.testing.assert_array_equal(np.asarray(g), np.where(inside, np.asarray(w), 0.0))


@pytest.mark.parametrize("symmetric", [True, False])
def test_zero_and_constant_tensors_are_finite(symmetric):
    for bits in (1, 2, 8) if symmetric else (2, 8):
        q = quant.uniform(bits, symmetric=symmetric, axis=0)
        for x in (jnp.zeros((3, 4)), jnp.full((3, 4), 2.5), jnp.full((3, 4), -1e-30), jnp.full((3, 4), 1e-42)):
            y = np.asarray(q.fake_quant(x))
            assert np.all(np.isfinite(y)), (bits, x[0, 0])
            g = jax.grad(lambda v: jnp.sum(q.fake_quant(v)))(x)
            assert np.all(np.isfinite(np.asarray(g)))
        np.testing.assert_array_equal(np.asarray(q.fake_quant(jnp.zeros((3, 4)))), 0.0)
        if bits > 1:
            np.testing.assert_allclose(np.asarray(q.fake_quant(jnp.full((3, 4), 2.5))), 2.5, rtol=1e-6)


def test_errors_name_the_bad_value():
    for bits in (0, 17, 2.5, True):
        with pytest.raises(ValueError, match=f"bits={bits!r}"):
            quant.uniform(bits)
    with pytest.raises(ValueError, match="symmetric only"):
        quant.uniform(1, symmetric=False)
    with pytest.raises(ValueError, match="axis=3"):
        quant.uniform(8, axis=3).quantize(jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="axis=-3"):
        quant.uniform(8, axis=-3).fake_quant(jnp.ones((2, 2)))
    with pytest.raises(TypeError, match="int32"):
        quant.uniform(8).fake_quant(jnp.arange(4, dtype=jnp.int32))
    with pytest.raises(TypeError, match="uint8"):
        quant.uniform(8).quantize(jnp.arange(4, dtype=jnp.uint8))
    with pytest.raises(ValueError, match="rounding='up'"):
        quant.uniform(8, rounding="up")
    with pytest.raises(ValueError, match="scale_method='mean_abs'"):
        quant.uniform(4, scale_method="mean_abs")


def test_jit_vmap_over_client_keys_matches_a_loop():
    q = quant.uniform(4, axis=-1, rounding="stochastic")
    xs = jax.random.normal(jax.random.key(0), (5, 6, 3))  # 5 clients
    keys = jax.random.split(jax.random.key(1), 5)
    ys = jax.jit(jax.vmap(q.fake_quant))(xs, keys)
    for c in range(5):
        np.testing.assert_array_equal(np.asarray(ys[c]), np.asarray(q.fake_quant(xs[c], keys[c])))
    assert not np.array_equal(np.asarray(ys[0]), np.asarray(q.fake_quant(xs[0], keys[1])))
    # key=None is deterministic round-to-nearest
    np.testing.assert_array_equal(np.asarray(q.fake_quant(xs[0], None)), np.asarray(quant.uniform(4, axis=-1).fake_quant(xs[0])))
    # vmapped grad through the estimator
    g = jax.jit(jax.vmap(jax.grad(lambda x, k: jnp.sum(q.fake_quant(x, k) ** 2))))(xs, keys)
    assert g.shape == xs.shape and np.all(np.isfinite(np.asarray(g)))


def test_bf16_inputs_keep_their_dtype():
    x = jnp.linspace(-1, 1, 16, dtype=jnp.bfloat16)
    y = quant.uniform(4).fake_quant(x)
    assert y.dtype == jnp.bfloat16


def test_round_to_grid_index_nearest_and_unbiased():
    grid = jnp.array([-1.0, -0.25, 0.0, 0.5, 2.0])
    x = jnp.array([-2.0, -1.0, -0.7, -0.6, -0.1, 0.3, 1.0, 1.25, 3.0])
    idx = rounding.round_to_grid_index(x, grid)
    np.testing.assert_array_equal(np.asarray(idx), [0, 0, 0, 1, 2, 3, 3, 4, 4])
    inside = jnp.linspace(-1.0, 2.0, 31)
    keys = jax.random.split(jax.random.key(0), 4000)
    vals = jax.vmap(lambda k: grid[rounding.round_to_grid_index(inside, grid, k)])(keys)
    # Var <= (largest cell width)^2 / 4 = 1.5^2 / 4
    np.testing.assert_array_less(np.abs(np.asarray(vals.mean(0) - inside)), 5 * 0.75 / np.sqrt(4000))
