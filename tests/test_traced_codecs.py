"""Codecs with a traced parameter (QSGD's levels, uniform's bits) and the families a sweep builds from specs.

The traced codec must be the static codec: same codes, same decode, same exact bits (checked against
the papers' bit formulas counted by hand here), same unbiasedness and QSGD variance bound.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxqfl import compress as C
from jaxqfl.compress.families import families, value_of
from unbiased import Z, assert_unbiased

TREE = {"w": jax.random.normal(jax.random.key(4), (9, 7)), "b": jnp.linspace(-2.0, 3.0, 11)}


def _ceil_log2(n: int) -> int:
    return math.ceil(math.log2(n))


def qsgd_bits_by_hand(levels: int, bucket: int) -> int:
    """Alistarh et al. 2017, fixed width: per bucket a float32 norm, per coordinate a sign and ceil(log2(s+1)) bits."""
    return sum(32 * math.ceil(n / bucket) + n * (1 + _ceil_log2(levels + 1)) for n in (63, 11))


def uniform_bits_by_hand(bits: int, bucket: int) -> int:
    """Suresh et al. 2017: b bits a coordinate, a float32 low and step per bucket."""
    return sum(bits * n + 64 * math.ceil(n / bucket) for n in (63, 11))


def _traced(make, maximum_name, maximum):
    """``value -> (message, decoded, bits)`` of the codec built with the value traced, under jit."""

    def run(value, key):
        codec = make(value, **{maximum_name: maximum})
        message, _ = codec.encode(TREE, codec.init(TREE), key)
        return message, codec.decode(message), codec.bits(message)

    return jax.jit(run)


@pytest.mark.parametrize("make,maximum_name,values,by_hand", [
    (lambda v, **kw: C.qsgd(v, bucket_size=8, **kw), "max_levels", [1, 2, 3, 4, 7, 8, 15, 16, 100],
     lambda v: qsgd_bits_by_hand(v, 8)),
    (lambda v, **kw: C.uniform(v, bucket_size=8, **kw), "max_bits", [1, 2, 3, 4, 8], lambda v: uniform_bits_by_hand(v, 8)),
], ids=["qsgd", "uniform"])
def test_a_traced_parameter_gives_the_static_codes_decode_and_bits(make, maximum_name, values, by_hand):
    traced = _traced(make, maximum_name, max(values))
    key = jax.random.key(7)
    for v in values:
        static = make(v)
        message = jax.jit(lambda k: static.encode(TREE, static.init(TREE), k)[0])(key)  # both compiled by XLA
        t_message, t_decoded, t_bits = traced(jnp.int32(v), key)
        for a, b in zip(jax.tree.leaves(message), jax.tree.leaves(t_message), strict=True):
            np.testing.assert_array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64))
        for a, b in zip(jax.tree.leaves(static.decode(message)), jax.tree.leaves(t_decoded), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
        assert int(t_bits) == by_hand(v) == C.bits_per_message(static, TREE), v


@pytest.mark.parametrize("levels", [1, 3, 8])
def test_traced_qsgd_is_unbiased_and_within_the_lemma_bound(levels):
    """Lemma 3.1 of Alistarh et al. 2017 on the traced codec: E Q(v) = v, E||Q(v) - v||^2 exact and bounded."""
    d = 48
    rng = np.random.default_rng(levels)
    v = jnp.asarray(rng.standard_normal(d) * np.exp(rng.uniform(-2, 1, d)), jnp.float32)
    vn = np.asarray(v, np.float64)

    def decode(level, key):
        codec = C.qsgd(level, bucket_size=d, max_levels=16)
        return codec.decode(codec.encode(v, (), key)[0])

    keys = jax.random.split(jax.random.key(levels, impl="rbg"), 4000)
    samples = np.asarray(jax.jit(jax.vmap(decode, in_axes=(None, 0)))(jnp.int32(levels), keys), np.float64)
    n = samples.shape[0]
    assert_unbiased(samples, vn)
    norm2 = float(vn @ vn)
    r = levels * np.abs(vn) / math.sqrt(norm2)
    p = r - np.floor(r)
    exact = norm2 / levels**2 * float(np.sum(p * (1 - p)))
    err = np.sum((samples - vn) ** 2, axis=1)
    assert abs(err.mean() - exact) <= Z * err.std(ddof=1) / math.sqrt(n) + 1e-6 * norm2
    assert exact <= min(d / levels**2, math.sqrt(d) / levels) * norm2


def test_traced_uniform_is_unbiased():
    x = jnp.asarray(np.random.default_rng(2).standard_normal(40), jnp.float32)

    def decode(bits, key):
        codec = C.uniform(bits, bucket_size=16, max_bits=8)
        return codec.decode(codec.encode(x, (), key)[0])

    keys = jax.random.split(jax.random.key(1, impl="rbg"), 4000)
    assert_unbiased(jax.jit(jax.vmap(decode, in_axes=(None, 0)))(jnp.int32(2), keys), x)


def test_the_integer_sum_of_a_traced_codec_bounds_codes_by_the_largest_value():
    assert C.qsgd(jnp.int32(3), max_levels=16).integer_sum.max_abs_code == 16
    assert C.uniform(jnp.int32(3), max_bits=4).integer_sum.max_abs_code == 15


def test_bad_maxima_and_an_overflowing_traced_count_are_refused():
    with pytest.raises(ValueError, match="max_levels must be an integer in \\[1, 32767\\]"):
        C.qsgd(jnp.int32(3), max_levels=0)
    with pytest.raises(ValueError, match="uniform bits must be an integer in \\[1, 4\\]"):
        C.uniform(8, max_bits=4)
    big = jax.ShapeDtypeStruct((2**28,), jnp.float32)  # 16 bits x 2^28 overflows int32
    codec = C.uniform(jnp.int32(2), max_bits=16)
    with pytest.raises(OverflowError):
        jax.eval_shape(lambda t, k: codec.bits(codec.encode(t, (), k)[0]), big, jax.random.key(0))
    # each tensor's bound fits (8 bits x 2^27 < 2^31), the model's total does not: refused on the total
    two = [jax.ShapeDtypeStruct((2**27,), jnp.float32)] * 2
    for codec in (C.uniform(jnp.int32(2), max_bits=8), C.qsgd(jnp.int32(2), max_levels=64)):
        with pytest.raises(OverflowError):
            jax.eval_shape(lambda t, k, c=codec: c.bits(c.encode(t, (), k)[0]), two, jax.random.key(0))
    with pytest.raises(TypeError, match="traced parameter"):
        jax.jit(lambda lv: C.bits_per_message(C.qsgd(lv, max_levels=4), TREE))(jnp.int32(2))


def test_families_group_specs_that_differ_only_in_the_traced_parameter():
    specs = ["qsgd:2", "none", "qsgd:16", "uniform:8", "qsgd:4:bucket=none", "uniform:2", "qsgd:4+ef", "topk:0.1"]
    members, fams = families(specs)
    assert members == (0, 1, 0, 2, 3, 2, 4, 5)
    assert fams[0].parameter == "levels" and fams[0].values == (2, 16)
    assert fams[2].parameter == "bits" and fams[2].values == (8, 2)
    assert fams[1].build(None) is None  # float32: no codec
    for f in (3, 4, 5):  # one member: its static codec, nothing traced
        assert fams[f].parameter is None and fams[f].values == ()
    assert value_of(fams[0], "qsgd:16") == 16.0 and value_of(fams[3], "qsgd:4:bucket=none") == 0.0
    codec = fams[0].build(jnp.int32(16))  # codes stored for the largest member: int8 up to 127 levels
    message, _ = codec.encode(TREE, (), jax.random.key(0))
    assert message["w"].codes.dtype == jnp.int8


@pytest.mark.parametrize("specs,match", [
    (["qsgd:4", "QSGD:4"], "are the same codec"),
    (["qsgd:4", "qsgd:bogus"], "invalid codec spec 'qsgd:bogus'"),
    ([], "non-empty list"),
    ("qsgd:4", "non-empty list"),
])
def test_families_refuse_repeats_and_bad_specs(specs, match):
    with pytest.raises(ValueError, match=match):
        families(specs)
