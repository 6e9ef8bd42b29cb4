"""QSGD and uniform with a traced bucket size (``min_bucket_size=``), and the families that trace it.

What the traced-bucket codec guarantees against the static codec of the same ``d`` and key:

* bits: exact (the papers' formulas, counted by hand here);
* uniform: ``low`` and ``step`` exactly (min and max do not depend on the reduction order), codes
  exactly (the same uniforms, read at the static codec's padded offsets), decode to float rounding
  of ``low + step * code`` (another fusion of the same expression);
* QSGD: norms to float rounding (a segment sum adds in another order than the ``[nb, d]`` row sum:
  ~1e-7 relative), hence decode to ~1e-6 relative, and codes equal except where ``s |v_i| / ||v||``
  lands within a rounding error of the uniform drawn for it: a probability of order 1e-7 per
  coordinate, so none on these inputs (asserted: at most one in 10^4);
* unbiasedness and Lemma 3.1 of Alistarh et al. 2017 checked statistically on the traced codec.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cli_refusals import assert_refused_before_any_work
from jaxqfl import compress as C
from jaxqfl.compress.families import families, traces_bucket, value_of
from unbiased import Z, assert_unbiased

_keys = jax.random.split(jax.random.key(11), 3)
TREE = {  # a 2-D tensor, one smaller than most buckets, one not divisible by 3 / 64 / 512 (heavy-tailed values)
    "w": jax.random.normal(_keys[0], (37, 29)),
    "b": jax.random.normal(_keys[1], (5,)),
    "v": jax.random.normal(_keys[2], (1001,)) * jnp.exp(jnp.linspace(-3.0, 3.0, 1001)),
}
SIZES = (5, 1001, 37 * 29)  # flatten order of TREE: b, v, w
# (levels or bits, bucket size): both traced at once; d = 5000 exceeds every tensor (one bucket each)
QSGD_CASES = ((1, 1), (7, 3), (16, 64), (3, 512), (5, 5000))
UNIFORM_CASES = ((2, 1), (3, 3), (8, 64), (1, 512), (4, 5000))


def qsgd_bits_by_hand(levels, d):
    return sum(32 * math.ceil(n / min(d, n)) + n * (1 + math.ceil(math.log2(levels + 1))) for n in SIZES)


def uniform_bits_by_hand(bits, d):
    return sum(64 * math.ceil(n / min(d, n)) + n * bits for n in SIZES)


def _leaf_messages(message):
    return [message[k] for k in sorted(TREE)]


def _traced(factory, maximum):
    @jax.jit
    def run(value, d, key):
        codec = factory(value, d, **maximum, min_bucket_size=1)
        message, _ = codec.encode(TREE, (), key)
        return message, codec.decode(message), codec.bits(message)

    return run


@pytest.mark.parametrize("name", ["qsgd", "uniform"])
def test_traced_bucket_and_parameter_give_the_static_codec(name):
    factory, maximum, cases, by_hand, scales = {
        "qsgd": (C.qsgd, {"max_levels": 16}, QSGD_CASES, qsgd_bits_by_hand, ("norm",)),
        "uniform": (C.uniform, {"max_bits": 8}, UNIFORM_CASES, uniform_bits_by_hand, ("low", "step")),
    }[name]
    traced = _traced(factory, maximum)
    key = jax.random.key(3)
    for value, d in cases:
        static = factory(value, d)
        s_message = jax.jit(lambda k: static.encode(TREE, (), k)[0])(key)
        s_decoded = jax.jit(static.decode)(s_message)
        t_message, t_decoded, t_bits = traced(jnp.int32(value), jnp.int32(d), key)
        assert int(t_bits) == by_hand(value, d) == C.bits_per_message(static, TREE), (value, d)
        different = 0
        for s, t, n in zip(_leaf_messages(s_message), _leaf_messages(t_message), SIZES):
            assert t.codes.dtype == s.codes.dtype and t.codes.shape == s.codes.shape
            different += int(np.sum(np.asarray(s.codes) != np.asarray(t.codes)))
            slots = math.ceil(n / min(d, n))
            for field in scales:  # the static container's entries, then zeros up to ceil(n / d_min) = n slots
                a, b = np.asarray(getattr(s, field)), np.asarray(getattr(t, field))
                assert b.shape == (n,) and np.all(b[slots:] == 0)
                if name == "uniform":
                    np.testing.assert_array_equal(a, b[:slots])
                else:
                    np.testing.assert_allclose(a, b[:slots], rtol=1e-6)
        if name == "uniform":
            assert different == 0, (value, d)
        else:
            assert different <= sum(SIZES) // 10_000, (value, d)
        for k in TREE:
            scale = float(jnp.max(jnp.abs(TREE[k])))
            np.testing.assert_allclose(np.asarray(s_decoded[k]), np.asarray(t_decoded[k]), rtol=1e-6,
                                       atol=1e-6 * scale)


def test_qsgd_with_a_traced_bucket_is_unbiased_and_within_the_lemma_bound():
    """Lemma 3.1 per bucket: E Q(v) = v and E||Q(v) - v||^2 = sum_b ||v_b||^2 / s^2 sum p(1-p) <= bound."""
    levels, d, n = 2, 16, 40  # buckets of 16, 16 and 8
    rng = np.random.default_rng(5)
    v = jnp.asarray(rng.standard_normal(n) * np.exp(rng.uniform(-2, 1, n)), jnp.float32)
    vn = np.asarray(v, np.float64)

    def decode(d, key):
        codec = C.qsgd(levels, d, min_bucket_size=4)
        return codec.decode(codec.encode(v, (), key)[0])

    keys = jax.random.split(jax.random.key(2, impl="rbg"), 4000)
    samples = np.asarray(jax.jit(jax.vmap(decode, in_axes=(None, 0)))(jnp.int32(d), keys), np.float64)
    m = samples.shape[0]
    assert_unbiased(samples, vn)
    exact, bound, total = 0.0, 0.0, float(vn @ vn)
    for start in range(0, n, d):
        b = vn[start:start + d]
        r = levels * np.abs(b) / np.linalg.norm(b)
        p = r - np.floor(r)
        exact += float(b @ b) / levels**2 * float(np.sum(p * (1 - p)))
        bound += min(b.size / levels**2, math.sqrt(b.size) / levels) * float(b @ b)
    err = np.sum((samples - vn) ** 2, axis=1)
    assert abs(err.mean() - exact) <= Z * err.std(ddof=1) / math.sqrt(m) + 1e-6 * total
    assert exact <= bound


def test_uniform_with_a_traced_bucket_is_unbiased():
    x = jnp.asarray(np.random.default_rng(3).standard_normal(40), jnp.float32)

    def decode(d, key):
        codec = C.uniform(jnp.int32(2), d, max_bits=8, min_bucket_size=3)
        return codec.decode(codec.encode(x, (), key)[0])

    keys = jax.random.split(jax.random.key(4, impl="rbg"), 4000)
    assert_unbiased(jax.jit(jax.vmap(decode, in_axes=(None, 0)))(jnp.int32(7), keys), x)


def test_specs_that_differ_in_bucket_form_one_family_tracing_both_parameters():
    specs = ["qsgd:4:bucket=128", "qsgd:4:bucket=512", "qsgd:16:bucket=512", "qsgd:2:bucket=none",
             "qsgd:8:bucket=none", "uniform:2:bucket=3", "uniform:8:bucket=64", "qsgd:4:bucket=3+ef"]
    members, fams = families(specs)
    assert members == (0, 0, 0, 1, 1, 2, 2, 3)
    assert fams[0].parameter == ("levels", "bucket_size") and fams[0].values == ((4, 128), (4, 512), (16, 512))
    assert fams[1].parameter == "levels" and fams[1].values == (2, 8)  # bucket=none: not one traced value
    assert fams[2].parameter == ("bits", "bucket_size") and fams[3].parameter is None
    assert [traces_bucket(f) for f in fams] == [True, False, True, False]
    assert [value_of(fams[members[i]], s) for i, s in enumerate(specs)] == [0.0, 1.0, 2.0, 2.0, 8.0, 0.0, 1.0, 0.0]
    for family in (fams[0], fams[2]):  # the sweep's vmap over configs: member index as float32
        indices = jnp.arange(len(family.specs), dtype=jnp.float32)

        def run(index, family=family):
            codec = family.build(index)
            message, _ = codec.encode(TREE, (), jax.random.key(1))
            return codec.decode(message), codec.bits(message)

        decoded, bits = jax.jit(jax.vmap(run))(indices)
        for i, spec in enumerate(family.specs):
            static = C.from_spec(spec)
            s_decoded = jax.jit(lambda k, c=static: c.decode(c.encode(TREE, (), k)[0]))(jax.random.key(1))
            assert int(bits[i]) == C.bits_per_message(static, TREE), spec
            for k in TREE:
                np.testing.assert_allclose(np.asarray(s_decoded[k]), np.asarray(decoded[k][i]), rtol=1e-6,
                                           atol=1e-6 * float(jnp.max(jnp.abs(TREE[k]))))


def test_bad_bucket_bounds_and_an_overflowing_bound_are_refused():
    with pytest.raises(ValueError, match="min_bucket_size must be an integer >= 1, got 0"):
        C.qsgd(4, jnp.int32(8), min_bucket_size=0)
    with pytest.raises(ValueError, match="bucket_size must be an integer >= 64, got 8"):
        C.uniform(4, 8, min_bucket_size=64)
    with pytest.raises(ValueError, match="bucket_size None .* cannot be combined with min_bucket_size"):
        C.qsgd(4, None, min_bucket_size=8)
    # no integer-domain aggregation with a traced bucket size; the static codec keeps it
    assert C.qsgd(4, jnp.int32(8), min_bucket_size=8).integer_sum is None
    assert C.uniform(4, 8, min_bucket_size=8).integer_sum is None and C.uniform(4, 8).integer_sum is not None
    # the bound is taken at the smallest d: 2^27 floats of 32 bits overflow although d = 2^20 would fit
    big = jax.ShapeDtypeStruct((2**27,), jnp.float32)
    codec = C.qsgd(1, jnp.int32(2**20), min_bucket_size=1)
    with pytest.raises(OverflowError):
        jax.eval_shape(lambda t, k: codec.bits(codec.encode(t, (), k)[0]), big, jax.random.key(0))


@pytest.mark.parametrize("flag", [["--integer-aggregation"], ["--secure-aggregation", "secagg"]])
def test_integer_and_secure_aggregation_refuse_a_traced_bucket_family(tmp_path, capsys, monkeypatch, flag):
    synth = ["--dataset", "synthetic", "--num-clients", "12", "--cohort-size", "4", "--rounds", "2",
             "--local-steps", "2", "--no-progress"]
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch,
                                   [*synth, "--uplink", "qsgd:4:bucket=64,qsgd:4:bucket=512", *flag],
                                   "needs a static bucket size")
