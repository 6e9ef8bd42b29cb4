"""Top-k and random-k with a traced fraction (``choices=``): the static codec's messages, decode and exact bits.

The bit counts are checked against the formulas counted by hand here (``k = ceil(f n)`` in exact
rationals, so 0.07 of 100 elements keeps 7, not the 8 of a float ceil).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxqfl import compress as C
from jaxqfl.compress.families import families, value_of
from jaxqfl.sweep_plan import plan

Z = 5.0
RATIONAL = {0.01: (1, 100), 0.07: (7, 100), 0.1: (1, 10), 0.5: (1, 2), 1.0: (1, 1)}  # each choice as p / q
CHOICES = tuple(RATIONAL)
_rng = np.random.default_rng(3)
# sizes 1, 7, 100 (with ties in magnitude), 1000 and a 2-D one; no zeros, so a decode's support is its positions
TREE = {
    "one": jnp.asarray([-0.5], jnp.float32),
    "seven": jnp.asarray(_rng.standard_normal(7), jnp.float32),
    "hundred": jnp.asarray(np.repeat(np.arange(1, 21), 5) * np.tile([1, -1, 1, -1, 1], 20), jnp.float32),
    "thousand": jnp.asarray(_rng.standard_normal(1000), jnp.float32),
    "matrix": jnp.asarray(_rng.standard_normal((9, 7)), jnp.float32),
}
SIZES = {name: x.size for name, x in TREE.items()}


def k_by_hand(fraction: float, n: int) -> int:
    p, q = RATIONAL[fraction]
    return min(n, max(1, -(-p * n // q)))


def topk_bits_by_hand(fraction: float) -> int:
    """Aji & Heafield 2017: 32-bit values plus fixed-width indices or an n-bit bitmap, the smaller."""
    return sum(32 * k_by_hand(fraction, n) + min(k_by_hand(fraction, n) * math.ceil(math.log2(n)) if n > 1 else 0, n)
               for n in SIZES.values())


def randk_bits_by_hand(fraction: float) -> int:
    """Stich et al. 2018: a 32-bit seed and 32-bit values; positions come from the seed."""
    return 32 + sum(32 * k_by_hand(fraction, n) for n in SIZES.values())


def _traced(make):
    """``fraction -> (message, decoded, bits)`` of ``make(fraction, choices=CHOICES)``, the fraction traced, jitted."""

    def run(fraction, key):
        codec = make(fraction, choices=CHOICES)
        message, _ = codec.encode(TREE, codec.init(TREE), key)
        return message, codec.decode(message), codec.bits(message)

    return jax.jit(run)


def _static(make, key, fractions=CHOICES):
    """``{fraction: (codec, message, decoded)}`` of these choices' static codecs (one jit, compiled by XLA)."""
    codecs = {f: make(f) for f in fractions}

    def run(k):
        messages = {f: c.encode(TREE, c.init(TREE), k)[0] for f, c in codecs.items()}
        return messages, {f: codecs[f].decode(m) for f, m in messages.items()}

    messages, decoded = jax.jit(run)(key)
    return {f: (codecs[f], messages[f], decoded[f]) for f in fractions}


def _leaves(tree, kind):
    return jax.tree.leaves(tree, is_leaf=lambda node: isinstance(node, kind))


def _first_k_then_zeros(traced, static, k):
    """The traced container's first ``k`` entries are the static message's; the rest are 0."""
    traced, static = np.asarray(traced), np.asarray(static)
    assert static.shape == (k,)
    np.testing.assert_array_equal(traced[:k], static)
    np.testing.assert_array_equal(traced[k:], 0)


def test_traced_topk_sends_the_static_values_positions_decode_and_bits():
    traced = _traced(C.topk)
    assert k_by_hand(0.07, 100) == 7  # not ceil(0.07 * 100.0) = 8
    for fraction, (static, message, decoded) in _static(C.topk, None).items():
        t_message, t_decoded, t_bits = traced(jnp.float32(fraction), jax.random.key(0))
        for t, s, n in zip(_leaves(t_message, C.sparsify.SparseMessage), _leaves(message, C.sparsify.SparseMessage),
                           [SIZES[name] for name in sorted(TREE)], strict=True):
            k = k_by_hand(fraction, n)
            assert t.values.shape == (max(k_by_hand(c, n) for c in CHOICES),)
            _first_k_then_zeros(t.values, s.values, k)
            np.testing.assert_array_equal(np.asarray(t.indices)[:k], np.asarray(s.indices))  # ties: lower index
        for a, b in zip(jax.tree.leaves(t_decoded), jax.tree.leaves(decoded), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert int(t_bits) == topk_bits_by_hand(fraction) == C.bits_per_message(static, TREE), fraction


@pytest.mark.parametrize("unbiased,fractions", [(True, CHOICES), (False, (0.07, 0.5))])  # unscaled: fewer, faster
def test_traced_randk_draws_the_static_positions_and_values_with_exact_bits(unbiased, fractions):
    traced = _traced(lambda f, **kw: C.randk(f, unbiased=unbiased, **kw))
    key = jax.random.key(11)
    static_codecs = _static(lambda f: C.randk(f, unbiased=unbiased), key, fractions)
    for fraction, (static, message, decoded) in static_codecs.items():
        t_message, t_decoded, t_bits = traced(jnp.float32(fraction), key)
        assert int(t_message.seed) == int(message.seed)
        for t, s, n in zip(_leaves(t_message.values, C.sparsify.RandomValues),
                           _leaves(message.values, C.sparsify.RandomValues),
                           [SIZES[name] for name in sorted(TREE)], strict=True):
            k = k_by_hand(fraction, n)
            assert np.asarray(s.values).shape == (k,)
            np.testing.assert_allclose(np.asarray(t.values)[:k], np.asarray(s.values), rtol=1e-6)
            np.testing.assert_array_equal(np.asarray(t.values)[k:], 0)
        for a, b in zip(jax.tree.leaves(t_decoded), jax.tree.leaves(decoded), strict=True):
            np.testing.assert_array_equal(np.asarray(a) != 0, np.asarray(b) != 0)  # the same positions, exactly
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
        assert int(t_bits) == randk_bits_by_hand(fraction) == C.bits_per_message(static, TREE), fraction


def test_traced_randk_is_unbiased_with_the_stated_variance():
    """Stich et al. 2018: decode_i = (n/k) x_i with probability k/n, else 0, so E decode = x, Var decode_i =
    (n/k - 1) x_i^2 and E||decode - x||^2 = (n/k - 1) ||x||^2; the mean of N decodes is within Z standard errors."""
    x = {"a": jnp.linspace(-2.0, 3.0, 20),
         "b": jnp.asarray(np.random.default_rng(1).standard_normal((3, 4)), jnp.float32)}
    ratio = {"a": 20 / 2, "b": 12 / 2}  # fraction 0.1: k = 2 of 20, k = ceil(1.2) = 2 of 12

    def decode(fraction, key):
        codec = C.randk(fraction, choices=(0.1, 0.5))
        return codec.decode(codec.encode(x, (), key)[0])

    n_samples = 4000
    keys = jax.random.split(jax.random.key(2, impl="rbg"), n_samples)
    samples = jax.jit(jax.vmap(decode, in_axes=(None, 0)))(jnp.float32(0.1), keys)
    for name, s in samples.items():
        s = np.asarray(s, np.float64).reshape(n_samples, -1)
        xn = np.asarray(x[name], np.float64).reshape(-1)
        se = np.sqrt((ratio[name] - 1) * xn**2 / n_samples)
        assert np.all(np.abs(s.mean(0) - xn) <= Z * se + 1e-6), name
        err = np.sum((s - xn) ** 2, axis=1)
        assert abs(err.mean() - (ratio[name] - 1) * float(xn @ xn)) <= Z * err.std(ddof=1) / math.sqrt(n_samples)


def test_families_group_fractions_not_counts_or_other_options():
    members, fams = families(["topk:0.01", "topk:0.1", "topk:k=10", "randk:0.1", "randk:0.5:unbiased=false",
                              "randk:0.5", "topk:0.5+ef"])
    assert members == (0, 0, 1, 2, 3, 2, 4)
    assert fams[0].parameter == "fraction" and fams[0].values == (0.01, 0.1)
    assert fams[2].parameter == "fraction" and fams[2].values == (0.1, 0.5)
    assert fams[1].parameter is None and fams[3].parameter is None and fams[4].parameter is None
    assert value_of(fams[0], "topk:0.1") == 0.1 and value_of(fams[1], "topk:k=10") == 0.0
    assert families(["topk:0.1", "topk:k=10"])[0] == (0, 1)


def test_a_sweep_plan_gives_each_config_the_bits_of_its_static_codec():
    """The configs of ``--uplink topk:0.1,topk:0.5,randk:0.07,randk:0.5`` (vmapped, as the engine runs them)."""
    specs = ["topk:0.1", "topk:0.5", "randk:0.07", "randk:0.5"]
    configs, variants = plan([{"seed": 0, "uplink": s} for s in specs], uplink="none", downlink="none", quant="none",
                             make_model=lambda preset: None)
    assert [c["variant"] for c in configs] == [0, 0, 1, 1] and len(variants) == 2
    for v, variant in enumerate(variants):
        values = jnp.asarray([c["uplink_value"] for c in configs if c["variant"] == v], jnp.float32)

        def bits(value, variant=variant):
            codec = variant.make_uplink({"uplink_value": value})
            return codec.bits(codec.encode(TREE, codec.init(TREE), jax.random.key(0))[0])

        counts = jax.jit(jax.vmap(bits))(values)
        for spec, count in zip(specs[2 * v: 2 * v + 2], np.asarray(counts)):
            assert int(count) == C.bits_per_message(C.from_spec(spec), TREE), spec


@pytest.mark.parametrize("specs", [["hadamard+topk:0.1", "hadamard+topk:0.5"], ["hadamard+qsgd:2", "hadamard+qsgd:4"]])
def test_a_wrapped_traced_family_counts_the_static_bits_of_each_member(specs):
    """``hadamard`` adds its seed to the inner codec's traced count (the members form one family)."""
    members, fams = families(specs)
    assert members == (0, 0)
    x = {"a": TREE["seven"], "b": TREE["matrix"]}

    def bits(value):
        codec = fams[0].build(value)
        return codec.bits(codec.encode(x, codec.init(x), jax.random.key(0))[0])

    counts = jax.jit(jax.vmap(bits))(jnp.asarray([value_of(fams[0], s) for s in specs], jnp.float32))
    for spec, count in zip(specs, np.asarray(counts)):
        assert int(count) == C.bits_per_message(C.from_spec(spec), x), spec


@pytest.mark.parametrize("make,match", [
    (lambda: C.topk(0.2, choices=(0.1, 0.5)), "topk fraction 0.2 is not one of the choices \\(0.1, 0.5\\)"),
    (lambda: C.randk(0.3, choices=[0.5]), "randk fraction 0.3 is not one of the choices \\(0.5,\\)"),
    (lambda: C.topk(k=3, choices=(0.1,)), "cannot be combined with k=3"),
    (lambda: C.topk(choices=(0.1,)), "give fraction"),
    (lambda: C.topk(0.1, choices=(0.1, 1.5)), "topk choice must be a number in \\(0, 1\\], got 1.5"),
    (lambda: C.randk(0.1, choices=()), "non-empty tuple of fractions"),
    (lambda: C.randk(0.1, choices=0.1), "non-empty tuple of fractions"),
    (lambda: C.topk(0.1, choices=(0.1, 0.1 + 1e-12)), "are the same float32"),
    (lambda: C.topk(jnp.float32(0.1)), "needs choices="),
    (lambda: families(["topk:0.1", "topk:0.1000000001"]), "'topk:0.1'.*are the same float32"),
])
def test_bad_choices_and_fractions_outside_them_are_refused_by_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bits_of_a_python_choice_are_static_and_a_traced_bound_is_checked_for_overflow():
    assert C.bits_per_message(C.topk(0.07, choices=CHOICES), TREE) == topk_bits_by_hand(0.07)
    assert C.bits_per_message(C.randk(0.5, choices=CHOICES), TREE) == randk_bits_by_hand(0.5)
    with pytest.raises(TypeError, match="traced parameter"):
        jax.jit(lambda f: C.bits_per_message(C.topk(f, choices=(0.1, 0.5)), TREE))(jnp.float32(0.1))
    big = jax.ShapeDtypeStruct((2**26,), jnp.float32)  # fraction 1: 32 * 2^26 + 2^26 bits overflow int32
    for make in (C.topk, C.randk):
        C.bits_per_message(make(0.5), big)  # the static count of 0.5 fits ...
        codec = make(jnp.float32(0.5), choices=(0.5, 1.0))  # ... but the traced bound (fraction 1) does not
        with pytest.raises(OverflowError):
            jax.eval_shape(lambda t, k, c=codec: c.bits(c.encode(t, (), k)[0]), big, jax.random.key(0))
