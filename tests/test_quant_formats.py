"""Narrow floats (fp16/bf16/fp8), power-of-two, natural compression, codebooks (NF4, k-means)."""
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.scipy.special import ndtri

from jaxqfl import quant

N_KEYS = 3000
FLOATS = ["float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"]


def _mc(fq, x, n=N_KEYS, seed=0):
    keys = jax.random.split(jax.random.key(seed), n)
    return jax.jit(jax.vmap(fq, in_axes=(None, 0)))(x, keys)


def _neighbours(x, dtype):
    """The two representable values of ``dtype`` around float32 ``x``: every finite value of
    the (at most 16-bit) format, sorted, then a search (numpy reference)."""
    bits = np.arange(2 ** (8 * dtype.itemsize), dtype=np.uint16 if dtype.itemsize == 2 else np.uint8)
    values = bits.view(dtype).astype(np.float32)
    values = np.unique(values[np.isfinite(values)])
    x = np.asarray(x, np.float32)
    i = np.clip(np.searchsorted(values, x, side="right") - 1, 0, values.size - 2)
    lo = values[i]
    hi = np.where(lo == x, lo, values[i + 1])
    return lo, hi


@pytest.mark.parametrize("fmt", FLOATS)
def test_float_cast_nearest_equals_hardware_cast_and_saturates(fmt):
    dt = np.dtype(getattr(ml_dtypes, fmt) if fmt.startswith("float8") else fmt)
    x = jax.random.normal(jax.random.key(0), (257,)) * 3.0
    q = quant.cast(fmt)
    qt = q.quantize(x)
    assert qt.codes.dtype == dt
    np.testing.assert_array_equal(np.asarray(q.dequantize(qt)), np.asarray(x).astype(dt).astype(np.float32))
    big = jnp.array([3.4e38, -3.4e38, 0.0])  # beyond every format (bf16 max is 3.39e38)
    y = np.asarray(q.fake_quant(big))
    fmax = float(ml_dtypes.finfo(dt).max)
    np.testing.assert_array_equal(y, [fmax, -fmax, 0.0])
    g = jax.grad(lambda v: jnp.sum(q.fake_quant(v) * 2.0))(x)
    np.testing.assert_array_equal(np.asarray(g), 2.0)  # identity STE


@pytest.mark.parametrize("fmt", FLOATS)
def test_float_stochastic_rounding_is_unbiased_onto_neighbours(fmt):
    dt = np.dtype(getattr(ml_dtypes, fmt) if fmt.startswith("float8") else fmt)
    scale = 1e-3 if fmt == "float8_e4m3fn" else 1.0  # include subnormals of e4m3
    x = jnp.concatenate([jax.random.normal(jax.random.key(1), (48,)) * 2.0, jnp.array([1e-3, -3e-4]) * scale])
    ys = np.asarray(_mc(quant.cast(fmt, rounding="stochastic").fake_quant, x))
    lo, hi = _neighbours(x, dt)
    assert np.all((ys == lo) | (ys == hi))  # only the two neighbours
    np.testing.assert_array_equal(ys.astype(dt).astype(np.float32), ys)  # representable
    # Var <= ulp^2/4 -> std of the mean <= ulp / (2 sqrt n)
    ulp = np.where(hi > lo, hi - lo, 0.0)
    np.testing.assert_array_less(np.abs(ys.mean(0) - np.asarray(x)), 5 * ulp / (2 * np.sqrt(N_KEYS)) + 1e-12)


def test_scaled_fp8_fills_the_range():
    x = jnp.linspace(-1e-3, 1e-3, 11)
    q = quant.cast("e4m3", scaled=True)
    qt = q.quantize(x)
    assert float(jnp.max(jnp.abs(qt.codes.astype(jnp.float32)))) == 448.0
    np.testing.assert_allclose(np.asarray(q.dequantize(qt)), np.asarray(x), rtol=2**-3)


def test_float_cast_rejects_unknown_formats():
    with pytest.raises(ValueError, match="'fp4'"):
        quant.cast("fp4")
    with pytest.raises(ValueError, match="int8"):
        quant.cast(jnp.int8)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_power_of_two_levels_codes_and_log_domain_nearest(bits):
    x = jax.random.normal(jax.random.key(0), (4, 64)) * jnp.array([[0.01], [1.0], [30.0], [0.5]])
    q = quant.power_of_two(bits, axis=0)
    qt = q.quantize(x)
    m = 2 ** (bits - 1) - 1
    codes = np.asarray(qt.codes)
    assert codes.dtype == np.int8 and np.abs(codes).max() <= m
    s = np.asarray(qt.scale)
    assert s.shape == (4, 1)
    assert np.all(np.log2(s) == np.round(np.log2(s)))  # power-of-two scales
    assert np.all(s >= np.max(np.abs(np.asarray(x)), axis=1, keepdims=True))
    assert np.all(s < 2 * np.max(np.abs(np.asarray(x)), axis=1, keepdims=True))
    y = np.asarray(q.dequantize(qt))
    nz = y != 0
    ratio = np.abs(y[nz]) / np.broadcast_to(s, y.shape)[nz]
    np.testing.assert_array_equal(np.log2(ratio), np.round(np.log2(ratio)))  # y = +-s 2^-j
    assert np.all(np.log2(ratio) >= -(m - 1)) and np.all(np.log2(ratio) <= 0)
    assert np.all(np.sign(y[nz]) == np.sign(np.asarray(x)[nz]))
    # log-domain nearest: |log2|y| - log2|x|| <= 1/2 wherever x is not flushed to 0
    xa = np.abs(np.asarray(x))[nz]
    assert np.all(np.abs(np.log2(np.abs(y[nz])) - np.log2(xa)) <= 0.5 + 1e-6)
    # flushed values are below the smallest level / sqrt(2)
    small = np.broadcast_to(s * 2.0 ** -(m - 1), y.shape)
    assert np.all(np.abs(np.asarray(x))[~nz] < small[~nz] * 2**-0.5 * (1 + 1e-6))


def test_power_of_two_stochastic_is_unbiased():
    x = jnp.concatenate([jnp.linspace(-1.0, 1.0, 21), jnp.array([0.003, -0.004])])  # s = 1
    q = quant.power_of_two(4, rounding="stochastic")
    ys = np.asarray(_mc(q.fake_quant, x))
    # neighbouring levels at most a factor 2 apart (or 0 and 2^-6): Var <= (|x|/2)^2 ... <= 1/16
    np.testing.assert_array_less(np.abs(ys.mean(0) - np.asarray(x)), 5 * 0.25 / np.sqrt(N_KEYS))
    levels = {0.0} | {s * 2.0**-j for j in range(7) for s in (1, -1)}
    assert set(np.unique(ys)) <= levels


def test_natural_compression_is_unbiased_and_lands_on_neighbouring_powers_of_two():
    x = jnp.array([1.0, 1.5, -3.0, 0.3, 1e-20, -7e12, 0.0, 2.0**-126])
    q = quant.natural_compression()
    ys = np.asarray(_mc(q.fake_quant, x))
    xa = np.abs(np.asarray(x))
    e = np.floor(np.log2(np.where(xa > 0, xa, 1.0)))
    lo, hi = 2.0**e, 2.0 ** (e + 1)
    ya = np.abs(ys)
    assert np.all((ya == lo) | (ya == hi) | (xa == 0))
    assert np.all(ys[:, 6] == 0)
    assert np.all(np.sign(ys[:, xa > 0]) == np.sign(np.asarray(x)[xa > 0]))
    # Var = (hi - |x|)(|x| - lo) <= x^2 / 8
    np.testing.assert_array_less(np.abs(ys.mean(0) - np.asarray(x)), 5 * xa / np.sqrt(8 * N_KEYS) + 1e-30)
    qt = q.quantize(x)
    assert qt.codes.dtype == jnp.int16
    # without a key: the nearer power of two, ties up
    np.testing.assert_array_equal(np.asarray(q.fake_quant(jnp.array([1.4, 1.5, -1.6, 3.0]))), [1.0, 2.0, -2.0, 4.0])


def test_nf4_table_is_the_normal_quantile_construction():
    d = (1 - 1 / (2 * 15) + 1 - 1 / (2 * 16)) / 2
    pos = np.asarray(ndtri(jnp.linspace(d, 0.5, 9)[:-1]))
    neg = -np.asarray(ndtri(jnp.linspace(d, 0.5, 8)[:-1]))
    v = np.sort(np.r_[pos, neg, 0.0])
    np.testing.assert_allclose(quant.nf4_table(), v / np.abs(v).max(), atol=2e-6)
    assert quant.nf4_table().size == 16 and quant.nf4_table()[7] == 0.0


def test_codebook_round_trips_table_values_and_rounds_to_nearest_entry():
    table = quant.nf4_table()
    q = quant.nf4(axis=-1)
    s = np.array([0.5, 2.0, 8.0], np.float32)
    x = np.stack([table[np.arange(16) % 16] * si for si in s], axis=-1)  # [16, 3]: every entry per channel
    qt = q.quantize(jnp.asarray(x))
    assert qt.codes.dtype == jnp.uint8 and qt.scale.shape == (1, 3)
    np.testing.assert_array_equal(np.asarray(q.dequantize(qt)), x)
    r = np.array(jax.random.uniform(jax.random.key(0), (500,), minval=-1, maxval=1))
    r[0] = 1.0
    y = np.asarray(quant.nf4().fake_quant(jnp.asarray(r)))
    best = table[np.argmin(np.abs(r[:, None] - table[None]), axis=1)]
    np.testing.assert_allclose(y, best, atol=1e-7)


def test_codebook_stochastic_is_unbiased():
    q = quant.nf4(rounding="stochastic")
    x = jnp.concatenate([jnp.linspace(-0.9, 0.9, 19), jnp.array([1.0])])
    ys = np.asarray(_mc(q.fake_quant, x))
    gap = np.max(np.diff(quant.nf4_table()))
    np.testing.assert_array_less(np.abs(ys.mean(0) - np.asarray(x)), 5 * gap / (2 * np.sqrt(N_KEYS)))


def test_kmeans_codebook_fits_clusters_inside_jit_and_vmap():
    centers = jnp.array([-3.0, -1.0, 0.5, 4.0])
    k1, k2 = jax.random.split(jax.random.key(0))
    x = centers[jax.random.randint(k1, (2, 400), 0, 4)] + 0.01 * jax.random.normal(k2, (2, 400))
    table = jax.jit(jax.vmap(lambda v: quant.kmeans_fit(v, 4, 10)))(x)
    assert table.shape == (2, 4)
    np.testing.assert_allclose(np.asarray(table), np.broadcast_to(np.asarray(centers), (2, 4)), atol=0.01)
    q = quant.kmeans(2, iters=10)
    qt = jax.jit(q.quantize)(x[0])
    assert qt.codes.dtype == jnp.uint8 and int(qt.codes.max()) <= 3
    assert float(jnp.max(jnp.abs(q.dequantize(qt) - x[0]))) < 0.05


def test_kmeans_iterations_never_increase_distortion():
    x = jax.random.laplace(jax.random.key(3), (2000,))
    def distortion(iters):
        q = quant.kmeans(3, iters=iters)
        return float(jnp.mean((q.fake_quant(x) - x) ** 2))
    d0, d5, d20 = distortion(0), distortion(5), distortion(20)
    assert d20 <= d5 * (1 + 1e-5) <= d0 * (1 + 1e-5)
    assert d20 < d0


def test_nonuniform_zero_tensors_and_errors():
    for q in (quant.power_of_two(4), quant.nf4(), quant.kmeans(2), quant.natural_compression(), quant.cast("e4m3", scaled=True)):
        y = np.asarray(q.fake_quant(jnp.zeros((3, 4))))
        assert np.all(y == 0), q.name
        with pytest.raises(TypeError, match="int32"):
            q.fake_quant(jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match="bits=1"):
        quant.power_of_two(1)
    with pytest.raises(ValueError, match="bits=9"):
        quant.kmeans(9)
    with pytest.raises(ValueError, match="axis=2"):
        quant.power_of_two(4, axis=2).quantize(jnp.ones((2, 2)))
