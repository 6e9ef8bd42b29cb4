"""Update codecs (jaxqfl.compress): each test states a property from the codec's paper or contract."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxqfl.compress as C
from jaxqfl.compress.qsgd import QSGDMessage
from jaxqfl.engine.state import stack_states
from jaxqfl.compress.hadamard import fwht, rotate, rotation_signs, unrotate

Z = 5.0  # standard errors allowed in Monte-Carlo checks (deterministic keys, so no flakes)


def mc_keys(num_samples, seed=0):
    """Keys for Monte-Carlo checks. Codecs take any key implementation; the "rbg"
    one compiles several times faster than threefry under vmap on CPU, which
    keeps this file's run time down."""
    return jax.random.split(jax.random.key(seed, impl="rbg"), num_samples)


def decoded_samples(codec, x, num_samples, seed=0):
    """Decodes of ``x`` (an array or a pytree), one key each, as float64 ``[num_samples, ...]`` leaves."""
    state = codec.init(x)
    keys = mc_keys(num_samples, seed)
    run = jax.jit(jax.vmap(lambda k: codec.decode(codec.encode(x, state, k)[0])))
    return jax.tree.map(lambda a: np.asarray(a, np.float64), run(keys))


def assert_unbiased(samples, x):
    """Every coordinate's Monte-Carlo mean is within Z standard errors of ``x``.

    The variance estimate gets one pseudo-observation at the largest deviation
    seen anywhere (``spread**2 / N``), so a rare outcome that never showed up
    in N draws (a tiny coordinate rounding up with probability 1e-3) does not
    make its standard error zero.
    """
    x = np.asarray(x, np.float64)
    n = samples.shape[0]
    mean = samples.mean(0)
    spread = np.max(np.abs(samples - x))
    se = np.sqrt(samples.var(0, ddof=1) + spread**2 / n) / math.sqrt(n)
    slack = Z * se + 1e-5 * np.abs(x) + 1e-6
    worst = np.max(np.abs(mean - x) - slack)
    assert worst <= 0, f"bias beyond {Z} SE: max excess {worst:.3g}"


def mixed_vector(n=48, seed=0):
    """Magnitudes over several decades, both signs, a zero."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * np.exp(rng.uniform(-3, 1, n))
    x[3] = 0.0
    return jnp.asarray(x, jnp.float32)


SMALL_TREE = {"w": jnp.arange(15.0, dtype=jnp.float32).reshape(3, 5) - 7.0, "b": jnp.ones(5, jnp.float32)}

# every codec and wrapper at least once
ALL_SPECS = [
    "none", "uniform:2:8", "qsgd:4", "qsgd:1:none", "terngrad", "sign+ef", "natural", "topk:0.2+ef",
    "randk:0.4", "randk:0.4:unbiased=false", "hadamard:4+uniform:2", "hadamard+qsgd:2+ef",
]


# ---------------------------------------------------------------- unbiasedness

@pytest.mark.parametrize("codec", [
    pytest.param(C.qsgd(4, bucket_size=16), id="qsgd4-d16"),
    pytest.param(C.qsgd(1, bucket_size=None), id="qsgd1-tensor"),
    pytest.param(C.uniform(2), id="uniform2"),
    pytest.param(C.uniform(3, bucket_size=8), id="uniform3-d8"),
    pytest.param(C.terngrad(), id="terngrad"),
    pytest.param(C.natural(), id="natural"),
    pytest.param(C.randk(0.25), id="randk-scaled"),
    pytest.param(C.hadamard(C.qsgd(2)), id="hadamard-qsgd2"),
])
def test_unbiased_codecs_have_monte_carlo_mean_equal_to_input(codec):
    x = {"kernel": mixed_vector(40).reshape(5, 8), "bias": mixed_vector(7, seed=1)}  # two tensors, one draw
    samples = decoded_samples(codec, x, 4000)
    for name in x:
        assert_unbiased(samples[name], x[name])


def test_randk_without_scaling_has_mean_k_over_n_times_input():
    x = mixed_vector(40)
    samples = decoded_samples(C.randk(k=10, unbiased=False), x, 4000)
    assert_unbiased(samples, 0.25 * np.asarray(x))


# ---------------------------------------------------------------- QSGD (Alistarh et al. 2017, Lemma 3.1)

@pytest.mark.parametrize("levels", [1, 2, 8])
@pytest.mark.parametrize("kind", ["gaussian", "flat", "spike"])
def test_qsgd_variance_within_lemma_bound(levels, kind):
    d = 64
    rng = np.random.default_rng(levels)
    v = {"gaussian": rng.standard_normal(d), "flat": np.ones(d) * rng.choice([-1, 1], d),
         "spike": np.r_[10.0, 0.1 * rng.standard_normal(d - 1)]}[kind]
    v = jnp.asarray(v, jnp.float32)
    vn = np.asarray(v, np.float64)
    norm2 = float(vn @ vn)
    # Exact E||Q(v) - v||^2 = (||v|| / s)^2 sum_i p_i (1 - p_i), p_i = frac(s |v_i| / ||v||).
    r = levels * np.abs(vn) / math.sqrt(norm2)
    p = r - np.floor(r)
    exact = norm2 / levels**2 * float(np.sum(p * (1 - p)))
    bound = min(d / levels**2, math.sqrt(d) / levels) * norm2
    assert exact <= bound * (1 + 1e-9)
    samples = decoded_samples(C.qsgd(levels, bucket_size=d), v, 3000, seed=levels)
    err = np.sum((samples - vn) ** 2, axis=1)
    se = err.std(ddof=1) / math.sqrt(err.size)
    assert abs(err.mean() - exact) <= Z * se + 1e-6 * norm2
    assert err.mean() <= bound + Z * se


def test_qsgd_codes_are_signed_levels_times_bucket_norm():
    v = jnp.asarray([3.0, -4.0, 0.0, 12.0], jnp.float32)  # ||v|| = 13
    codec = C.qsgd(13, bucket_size=None)
    message, _ = jax.jit(codec.encode)(v, (), jax.random.key(0))
    assert isinstance(message, QSGDMessage)
    np.testing.assert_array_equal(np.asarray(message.codes), [3, -4, 0, 12])  # s|v_i|/||v|| integral: exact
    np.testing.assert_allclose(np.asarray(message.norm), [13.0])
    np.testing.assert_allclose(np.asarray(codec.decode(message)), np.asarray(v), rtol=1e-6)


# ---------------------------------------------------------------- TernGrad (Wen et al. 2017)

def test_terngrad_error_matches_exact_identity():
    g = mixed_vector(64, seed=3)
    gn = np.asarray(g, np.float64)
    exact = np.max(np.abs(gn)) * np.sum(np.abs(gn)) - gn @ gn
    samples = decoded_samples(C.terngrad(), g, 4000)
    err = np.sum((samples - gn) ** 2, axis=1)
    se = err.std(ddof=1) / math.sqrt(err.size)
    assert abs(err.mean() - exact) <= Z * se
    # every output is in {-s_t, 0, s_t} with the input's sign
    s_t = np.max(np.abs(gn))
    assert np.all(np.isclose(np.abs(samples), 0) | np.isclose(np.abs(samples), s_t))
    assert np.all(samples * gn >= 0)


# ---------------------------------------------------------------- natural compression (Horvath et al. 2019)

def test_natural_keeps_exact_powers_of_two():
    t = jnp.asarray([1.0, -1.0, 2.0**-20, -(2.0**100), 0.5, 2.0**-126, 2.0**127, 0.0, 1024.0], jnp.float32)
    samples = decoded_samples(C.natural(), t, 64)
    np.testing.assert_array_equal(samples, np.broadcast_to(np.asarray(t, np.float64), samples.shape))
    assert np.all(np.signbit(samples[:, 1])) and not np.any(np.isnan(samples))


def test_natural_second_moment_at_most_nine_eighths():
    a = np.array([-3, 0, 0, 0, 2, 5], dtype=np.float64)
    p = np.array([1 / 3, 1 / 3, 0.1, 0.8, 0.5, 1 / 3])  # p = 1/3 is the worst case: ratio exactly 9/8
    t = (1 + p) * 2.0**a * np.array([1, -1, 1, 1, -1, 1])
    samples = decoded_samples(C.natural(), jnp.asarray(t, jnp.float32), 8000)
    # outputs are the two neighbouring powers of two, with the input's sign
    assert np.all(np.isin(np.abs(samples), np.stack([2.0**a, 2.0 ** (a + 1)]).ravel()))
    assert np.all(samples * t > 0)
    exact = 4.0**a * (1 + 3 * p)  # E[C(t)^2]
    assert np.all(exact <= 9 / 8 * t**2 * (1 + 1e-12))
    np.testing.assert_allclose(exact[0] / t[0] ** 2, 9 / 8)
    sq = samples**2
    se = sq.std(0, ddof=1) / math.sqrt(sq.shape[0])
    assert np.all(np.abs(sq.mean(0) - exact) <= Z * se + 1e-12)


# ---------------------------------------------------------------- error feedback (Karimireddy et al. 2019)

@pytest.mark.parametrize("inner", [C.topk(0.1), C.sign(), C.qsgd(2, bucket_size=8), C.randk(k=3, unbiased=False)],
                         ids=["topk", "sign", "qsgd", "randk"])
def test_error_feedback_telescopes(inner):
    steps = 40
    codec = C.error_feedback(inner)
    params = {"a": jnp.zeros((4, 6)), "b": jnp.zeros(5)}
    key = jax.random.key(7)
    deltas = {"a": jax.random.normal(key, (steps, 4, 6)), "b": jax.random.normal(jax.random.fold_in(key, 1), (steps, 5))}

    @jax.jit
    def run(deltas):
        def step(state, xs):
            delta, t = xs
            message, state = codec.encode(delta, state, jax.random.fold_in(key, t))
            return state, codec.decode(message)

        return jax.lax.scan(step, codec.init(params), (deltas, jnp.arange(steps)))

    final_state, sent = run(deltas)
    for name in params:
        total_in = np.asarray(deltas[name], np.float64).sum(0)
        total_out = np.asarray(sent[name], np.float64).sum(0) + np.asarray(final_state.residual[name], np.float64)
        np.testing.assert_allclose(total_out, total_in, atol=2e-4, rtol=0)
    # the residual is not trivially zero (the codec is lossy)
    assert float(jnp.abs(final_state.residual["a"]).max()) > 0


# ---------------------------------------------------------------- sparsification

@pytest.mark.parametrize("shape, fraction, k", [((50,), 0.1, 5), ((7,), 0.3, 3), ((4, 6), 0.25, 6), ((3,), 1.0, 3)])
def test_topk_keeps_exactly_the_k_largest_magnitudes(shape, fraction, k):
    n = math.prod(shape)
    rng = np.random.default_rng(n)
    magnitudes = rng.permutation(np.arange(1, n + 1)) * 0.37  # distinct
    x = jnp.asarray((magnitudes * rng.choice([-1, 1], n)).reshape(shape), jnp.float32)
    codec = C.topk(fraction)
    out = np.asarray(jax.jit(lambda x: codec.decode(codec.encode(x, codec.init(x), None)[0]))(x)).ravel()
    keep = np.argsort(-magnitudes)[:k]
    expected = np.zeros(n)
    expected[keep] = np.asarray(x).ravel()[keep]
    np.testing.assert_array_equal(out, expected)


def test_topk_count_larger_than_a_tensor_raises_at_init():
    codec = C.from_spec("topk:k=100")  # construction is fine: no params yet
    params = {"w": jnp.zeros((20, 10)), "b": jnp.zeros(10)}
    with pytest.raises(ValueError, match="k=100 exceeds a tensor of 10 elements"):
        codec.init(params)
    with pytest.raises(ValueError, match="k=100"):
        C.randk(k=100).init(params)
    C.topk(k=10).init(params)  # fits every tensor


def test_randk_decoder_regenerates_positions_from_seed():
    """The decoder rebuilds exactly the k = 6 kept positions from the message's seed alone and
    scales their values by n / k = 5; different keys keep different positions."""
    x = mixed_vector(30).at[3].set(0.25)  # no zero entry: every kept position decodes nonzero
    codec = C.randk(k=6)
    encode, decode = jax.jit(codec.encode), jax.jit(codec.decode)
    positions = []
    for seed in (3, 4, 5):
        message, _ = encode(x, (), jax.random.key(seed))
        out = np.asarray(decode(message))
        kept = np.flatnonzero(out)
        assert kept.size == 6
        np.testing.assert_allclose(out[kept], 5.0 * np.asarray(x)[kept], rtol=1e-6)
        positions.append(tuple(kept))
    assert len(set(positions)) == 3


# ---------------------------------------------------------------- sign (Bernstein et al. 2018)

def test_sign_zero_is_sent_as_plus_one_and_a_tied_vote_is_zero():
    x = jnp.asarray([0.0, -0.0, 1.0, -2.0, 0.0], jnp.float32)
    codec = C.sign()
    out = np.asarray(jax.jit(lambda x: codec.decode(codec.encode(x, (), jax.random.key(0))[0]))(x))
    scale = 3.0 / 5.0  # ||x||_1 / n
    np.testing.assert_allclose(out, [scale, scale, scale, -scale, scale])
    # two clients with unit scales: coordinates 0 and 3 tie, 1 and 2 agree
    client_1 = jnp.asarray([1.0, -1.0, 1.0, 1.0])
    client_2 = jnp.asarray([-1.0, -1.0, 1.0, -1.0])
    final = np.asarray(codec.finalize((client_1 + client_2) / 2))
    np.testing.assert_allclose(final, [0.0, -0.5, 0.5, 0.0])  # (||m||_1 / n) sign(m), sign(0) = 0


def test_sign_finalize_is_identity_when_clients_agree():
    x = mixed_vector(20)
    codec = C.sign()
    decoded = jax.jit(lambda x: codec.decode(codec.encode(x, (), None)[0]))(x)
    np.testing.assert_allclose(np.asarray(codec.finalize(decoded)), np.asarray(decoded), rtol=1e-6)


# ---------------------------------------------------------------- Hadamard rotation (Suresh et al. 2017)

@pytest.mark.parametrize("m", [1, 2, 8, 64])
def test_fwht_is_the_orthonormal_sylvester_hadamard_transform(m):
    h = np.array([[1.0]])
    while h.shape[0] < m:
        h = np.block([[h, h], [h, -h]])
    x = np.random.default_rng(m).standard_normal((3, m))
    np.testing.assert_allclose(np.asarray(jax.jit(fwht)(jnp.asarray(x, jnp.float32))), x @ h / math.sqrt(m), atol=1e-5)


@pytest.mark.parametrize("shape, block_size", [((1,), None), ((7,), None), ((3, 5), None), ((3, 5), 4), ((4, 8), 4)])
def test_hadamard_rotation_round_trips_and_preserves_norm(shape, block_size):
    x = jax.random.normal(jax.random.key(1), shape)
    codec = C.hadamard(C.identity(), block_size=block_size)

    @jax.jit
    def run(x, seed, key):
        (signs,) = rotation_signs(seed, [x.size], block_size)
        y = rotate(x, signs, block_size)
        message, _ = codec.encode(x, codec.init(x), key)
        return y, unrotate(y, signs, shape, block_size), codec.decode(message)

    y, back, decoded = run(x, jnp.uint32(7), jax.random.key(2))
    np.testing.assert_allclose(float(jnp.linalg.norm(y)), float(jnp.linalg.norm(x)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(back), np.asarray(x), atol=1e-5)
    np.testing.assert_allclose(np.asarray(decoded), np.asarray(x), atol=1e-5)


def test_hadamard_rotation_flattens_a_spike():
    x = jnp.zeros(256).at[17].set(16.0)
    y = jax.jit(lambda x: rotate(x, rotation_signs(jnp.uint32(0), [256], None)[0]))(x)
    np.testing.assert_allclose(np.abs(np.asarray(y)), 1.0, rtol=1e-5)  # 16 / sqrt(256)


# ---------------------------------------------------------------- exact bit counts

# SMALL_TREE: w has n=15 (3x5), b has n=5.
HAND_COUNTS = {
    "none": 32 * 20,
    "uniform:4:4": (4 * 15 + 64 * 4) + (4 * 5 + 64 * 2),  # b n + 64 ceil(n/d)
    "uniform:8": (8 * 15 + 64) + (8 * 5 + 64),
    "qsgd:4:4": (32 * 4 + 15 * (1 + 3)) + (32 * 2 + 5 * (1 + 3)),  # 32 ceil(n/d) + n (1 + ceil log2(s+1))
    "qsgd:1": (32 + 15 * 2) + (32 + 5 * 2),
    "terngrad": (2 * 15 + 32) + (2 * 5 + 32),
    "sign": (15 + 32) + (5 + 32),
    "natural": 9 * 20,
    "topk:0.2": (32 * 3 + min(3 * 4, 15)) + (32 * 1 + min(1 * 3, 5)),  # 32k + min(k ceil log2 n, n)
    "topk:0.8": (32 * 12 + min(12 * 4, 15)) + (32 * 4 + min(4 * 3, 5)),  # bitmap is cheaper here
    "randk:0.4": 32 + 32 * 6 + 32 * 2,  # seed + 32 k
    "hadamard+qsgd:4": 32 + (32 + 16 * 4) + (32 + 8 * 4),  # seed + QSGD of the padded 16 and 8
    "hadamard:4+terngrad": 32 + (2 * 16 + 32) + (2 * 8 + 32),
    "topk:0.2+ef": (32 * 3 + 12) + (32 + 3),
}


@pytest.mark.parametrize("spec", list(HAND_COUNTS))
def test_bits_equal_hand_count(spec):
    codec = C.from_spec(spec)
    # bits reads static shapes only: evaluate it on the abstract message (nothing compiles)
    message = jax.eval_shape(lambda t, k: codec.encode(t, codec.init(t), k)[0], SMALL_TREE, jax.random.key(0))
    assert int(codec.bits(message)) == HAND_COUNTS[spec]
    assert C.bits_per_message(codec, SMALL_TREE) == HAND_COUNTS[spec]


def test_bits_overflowing_int32_ask_for_the_python_count():
    big = jax.ShapeDtypeStruct((2**26 + 1,), jnp.float32)  # 32 * n > 2**31 - 1
    assert C.bits_per_message(C.identity(), big) == 32 * (2**26 + 1)
    with pytest.raises(OverflowError, match="bits_per_message"):
        C.identity().bits(big)


# ---------------------------------------------------------------- edge inputs, jit and vmap

@pytest.mark.parametrize("spec", ALL_SPECS)
def test_zero_and_constant_inputs_decode_finite(spec):
    codec = C.from_spec(spec)
    tree = {"w": jnp.zeros((3, 5)), "b": jnp.full((5,), 3.0)}
    state = codec.init(tree)
    inputs = jax.tree.map(lambda x: jnp.stack([jnp.zeros_like(x), x]), tree)  # [all zeros, zeros + constant]
    out = jax.jit(jax.vmap(lambda t: codec.decode(codec.encode(t, state, jax.random.key(0))[0])))(inputs)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(out)), spec
    np.testing.assert_array_equal(np.asarray(out["w"]), 0.0)  # a zero tensor decodes to exactly zero
    np.testing.assert_array_equal(np.asarray(out["b"][0]), 0.0)
    if spec.startswith("uniform") or spec == "none":
        np.testing.assert_array_equal(np.asarray(out["b"][1]), 3.0)  # constant bucket: step 0, exact


@pytest.mark.parametrize("spec", [s for s in ALL_SPECS if s not in ("qsgd:1:none", "randk:0.4:unbiased=false")])
def test_vmap_over_clients_matches_each_client_alone(spec):
    codec = C.from_spec(spec)
    num_clients = 3
    deltas = jax.tree.map(lambda x: jax.random.normal(jax.random.key(x.size), (num_clients,) + x.shape), SMALL_TREE)
    states = stack_states(codec.init(SMALL_TREE), num_clients)
    keys = jax.random.split(jax.random.key(5), num_clients)

    def cohort(deltas, states, keys):
        messages, states = jax.vmap(codec.encode)(deltas, states, keys)
        return jax.vmap(codec.decode)(messages), jax.vmap(codec.bits)(messages), states

    @jax.jit
    def cohort_and_alone(deltas, states, keys):
        batched = cohort(deltas, states, keys)
        pick = lambda t, i: jax.tree.map(lambda x: x[i], t)  # noqa: E731
        alone = [codec.decode(codec.encode(pick(deltas, i), pick(states, i), keys[i])[0]) for i in range(num_clients)]
        return batched, alone

    (decoded, bits, new_states), alone = cohort_and_alone(deltas, states, keys)
    np.testing.assert_array_equal(np.asarray(bits), C.bits_per_message(codec, SMALL_TREE))
    for i in range(num_clients):
        for got, want in zip(jax.tree.leaves(jax.tree.map(lambda x: x[i], decoded)), jax.tree.leaves(alone[i])):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    assert jax.tree.structure(new_states) == jax.tree.structure(states)
    assert jax.tree.structure(decoded) == jax.tree.structure(SMALL_TREE)


# ---------------------------------------------------------------- integer-domain aggregation

INTEGER_CODECS = [
    pytest.param(C.uniform(3, bucket_size=8), id="uniform3"),
    pytest.param(C.qsgd(4, bucket_size=8), id="qsgd4"),
    pytest.param(C.terngrad(), id="terngrad"),
]


def cohort_deltas(num_clients, seed=0):
    key = jax.random.key(seed)
    return {"w": jax.random.normal(key, (num_clients, 3, 7)) * jnp.arange(1, num_clients + 1)[:, None, None],
            "b": jax.random.normal(jax.random.fold_in(key, 1), (num_clients, 5))}


@pytest.mark.parametrize("codec", INTEGER_CODECS)
def test_integer_sum_equals_weighted_sum_of_per_client_decodes(codec):
    isum = codec.integer_sum
    deltas = cohort_deltas(5)
    # client 2 has weight 0 and a huge update: it must not widen the shared scale
    deltas = jax.tree.map(lambda x: x.at[2].multiply(1e3), deltas)
    weights = jnp.asarray([1, 2, 0, 3, 1])
    keys = jax.random.split(jax.random.key(1), 5)

    @jax.jit
    def run(deltas, weights, keys):
        result = C.aggregate_in_integers(isum, deltas, weights, keys)
        stats = jax.vmap(isum.scale_stats)(deltas)
        codes = jax.vmap(isum.quantize, in_axes=(0, None, 0))(deltas, result.shared_stats, keys)
        per_client = jax.vmap(isum.dequantize_sum, in_axes=(0, None, None))(codes, result.shared_stats, 1)
        return result, stats, codes, per_client

    result, stats, codes, per_client = run(deltas, weights, keys)
    present = np.asarray(weights) > 0
    for got, all_stats in zip(jax.tree.leaves(result.shared_stats), jax.tree.leaves(stats)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(all_stats)[present].max(0), rtol=1e-6)
    for c in jax.tree.leaves(codes):
        assert c.dtype == jnp.int32 and int(jnp.max(jnp.abs(c))) <= isum.max_abs_code
    w = np.asarray(weights, np.float64)
    for name in deltas:
        want = np.tensordot(w, np.asarray(per_client[name], np.float64), 1) / w.sum()
        np.testing.assert_allclose(np.asarray(result.mean[name]), want, rtol=1e-5, atol=1e-5)
    one_client = jax.tree.map(lambda x: x[0], deltas)
    assert int(isum.bits(jax.tree.map(lambda c: c[0], codes))) == C.bits_per_message(codec, one_client)


@pytest.mark.parametrize("codec", INTEGER_CODECS)
def test_integer_sum_is_unbiased(codec):
    isum = codec.integer_sum
    deltas = cohort_deltas(4, seed=2)
    weights = jnp.asarray([2, 1, 1, 3])
    target = jax.tree.map(lambda d: np.tensordot(np.asarray(weights, np.float64), np.asarray(d, np.float64), 1) / 7, deltas)

    @jax.jit
    def many(keys):
        return jax.vmap(lambda k: C.aggregate_in_integers(isum, deltas, weights, jax.random.split(k, 4)).mean)(keys)

    samples = many(mc_keys(1500))
    for name in deltas:
        assert_unbiased(np.asarray(samples[name], np.float64), target[name])


def test_integer_sum_under_shard_map_matches_one_device():
    isum = C.qsgd(4, bucket_size=8).integer_sum
    devices = jax.devices()
    num = len(devices)
    deltas = cohort_deltas(num, seed=4)
    weights = jnp.arange(1, num + 1)
    keys = jax.random.split(jax.random.key(3), num)
    reference = jax.jit(lambda d, w, k: C.aggregate_in_integers(isum, d, w, k))(deltas, weights, keys)
    mesh = jax.make_mesh((num,), ("clients",), devices=devices)
    spec = jax.sharding.PartitionSpec("clients")
    deltas, weights, keys = jax.device_put((deltas, weights, keys), jax.sharding.NamedSharding(mesh, spec))
    sharded = jax.jit(jax.shard_map(
        lambda d, w, k: C.aggregate_in_integers(isum, d, w, k, axis_name="clients").mean,
        mesh=mesh, in_specs=(spec, spec, spec), out_specs=jax.sharding.PartitionSpec()))
    out = sharded(deltas, weights, keys)
    for name in deltas:
        np.testing.assert_allclose(np.asarray(out[name]), np.asarray(reference.mean[name]), rtol=1e-6, atol=1e-6)


def test_only_shared_scale_codecs_offer_integer_sums():
    offered = {s for s in ALL_SPECS if C.from_spec(s).integer_sum is not None}
    assert offered == {"uniform:2:8", "qsgd:4", "qsgd:1:none", "terngrad"}


# ---------------------------------------------------------------- chain and factories

def test_chain_nests_wrappers_like_the_spec():
    x = mixed_vector(32)
    by_chain = C.chain(C.error_feedback, C.hadamard(block_size=8), C.qsgd(2))
    by_spec = C.from_spec("qsgd:2+ef+hadamard:8")
    key = jax.random.key(4)
    out = []
    for codec in (by_chain, by_spec):
        message, state = jax.jit(codec.encode)(x, codec.init(x), key)
        out.append((jax.jit(codec.decode)(message), state.residual, int(codec.bits(message))))
    np.testing.assert_array_equal(np.asarray(out[0][0]), np.asarray(out[1][0]))
    np.testing.assert_array_equal(np.asarray(out[0][1]), np.asarray(out[1][1]))
    assert out[0][2] == out[1][2] == 32 + 32 + 32 * 3  # seed + norm + 32 coords * (sign + 2 level bits)


@pytest.mark.parametrize("make, match", [
    (lambda: C.uniform(0), "uniform bits must be an integer in \\[1, 16\\], got 0"),
    (lambda: C.uniform(17), "got 17"),
    (lambda: C.uniform(True), "got True"),
    (lambda: C.uniform(8.0), "got 8.0"),
    (lambda: C.uniform(8, bucket_size=0), "bucket_size"),
    (lambda: C.qsgd(0), "qsgd levels"),
    (lambda: C.qsgd(4, bucket_size=-1), "bucket_size"),
    (lambda: C.topk(), "exactly one of fraction"),
    (lambda: C.topk(0.1, k=3), "exactly one of fraction"),
    (lambda: C.topk(0.0), "topk fraction must be a number in \\(0, 1\\]"),
    (lambda: C.topk(float("nan")), "topk fraction"),
    (lambda: C.randk(k=0), "randk k"),
    (lambda: C.randk(0.5, unbiased="yes"), "unbiased"),
    (lambda: C.hadamard(block_size=6), "power of two"),
    (lambda: C.chain(), "at least one"),
    (lambda: C.chain(C.qsgd(4), C.error_feedback), "last part of chain must be a Codec"),
    (lambda: C.chain(C.sign(), C.qsgd(4)), "must be a wrapper"),
])
def test_factories_reject_bad_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ---------------------------------------------------------------- spec strings

@pytest.mark.parametrize("spec, same_as", [
    ("none", C.identity()),
    ("IDENTITY", C.identity()),
    (" qsgd : 16 ", C.qsgd(16)),
    ("qsgd:4:bucket=128", C.qsgd(4, 128)),
    ("qsgd:levels=4:bucket=none", C.qsgd(4, None)),
    ("uniform:8", C.uniform(8)),
    ("uniform:2:64", C.uniform(2, 64)),
    ("randk:0.1", C.randk(0.1)),
    ("topk:k=2", C.topk(k=2)),
    ("ef+sign", C.error_feedback(C.sign())),
    ("hadamard:8+qsgd:4", C.hadamard(C.qsgd(4), block_size=8)),
])
def test_specs_build_the_named_codec(spec, same_as):
    params = {"w": jnp.zeros((10, 30)), "b": jnp.zeros(10)}
    assert C.bits_per_message(C.from_spec(spec), params) == C.bits_per_message(same_as, params)


@pytest.mark.parametrize("spec, match", [
    ("", "empty codec spec"),
    ("foo", "unknown codec 'foo'.*qsgd:LEVELS.*hadamard"),
    ("qsgd", "qsgd needs levels"),
    ("qsgd:0", "qsgd levels must be an integer in \\[1, 32767\\], got 0"),
    ("qsgd:-3", "got -3"),
    ("qsgd:40000", "got 40000"),
    ("qsgd:2.5", "'2.5' is not an integer"),
    ("qsgd:four", "'four' is not an integer"),
    ("uniform:0", "uniform bits must be an integer in \\[1, 16\\], got 0"),
    ("uniform:17", "got 17"),
    ("uniform:8:0", "bucket_size must be an integer >= 1, got 0"),
    ("uniform:8:-4", "got -4"),
    ("topk", "exactly one of fraction"),
    ("topk:0", "fraction must be a number in \\(0, 1\\], got 0.0"),
    ("topk:1.5", "got 1.5"),
    ("topk:-0.1", "got -0.1"),
    ("topk:nan", "'nan' is not a finite number"),
    ("topk:inf", "'inf' is not a finite number"),
    ("topk:k=0", "topk k must be an integer >= 1, got 0"),
    ("topk:0.1:k=3", "exactly one of fraction"),
    ("randk:0", "randk fraction"),
    ("randk:0.1:unbiased=maybe", "'maybe' is not a boolean"),
    ("sign:3", "too many arguments for sign"),
    ("qsgd:4:128:9", "too many arguments for qsgd"),
    ("qsgd:4:levels=2", "'levels' given twice"),
    ("qsgd:4:foo=1", "qsgd has no option 'foo'"),
    ("qsgd:bucket=4:8", "positional argument '8' after a key=value"),
    ("qsgd:4:bucket=", "empty value for qsgd bucket"),
    ("qsgd:4+sign", "two codecs \\('qsgd' and 'sign'\\)"),
    ("ef", "no codec, only modifiers"),
    ("hadamard+ef", "no codec, only modifiers"),
    ("sign+ef+ef", "modifier 'ef' given twice"),
    ("hadamard:3+qsgd:4", "power of two >= 2 or None, got 3"),
    ("sign++ef", "empty stage"),
])
def test_bad_specs_raise_value_error_naming_the_problem(spec, match):
    with pytest.raises(ValueError, match=match) as info:
        C.from_spec(spec)
    assert repr(spec) in str(info.value) or spec == ""


@pytest.mark.parametrize("flag", ["--uplink", "--downlink"])
def test_the_cli_refuses_a_k_past_a_tensor_of_the_model_by_exit_2(tmp_path, capsys, flag):
    """topk:k=N is a valid spec; whether it fits shows only on the model's tensors (the default logistic
    model's bias has 10): refused with the codec's message, not a traceback, before anything runs."""
    from jaxqfl.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["run", "--num-clients", "20", "--cohort-size", "4", "--rounds", "1", flag, "topk:k=11+ef",
              "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert f"{flag} topk:k=11+ef" in err and "k=11 exceeds a tensor of 10 elements" in err and "Traceback" not in err


def test_non_string_spec_raises_value_error():
    with pytest.raises(ValueError, match="must be a string"):
        C.from_spec(None)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="qsgdtopkunifrmaeh0123456789.:+=-_ ", max_size=24))
def test_any_string_either_builds_a_codec_or_raises_value_error(text):
    try:
        codec = C.from_spec(text)
    except ValueError:
        return
    assert isinstance(codec, C.Codec)
