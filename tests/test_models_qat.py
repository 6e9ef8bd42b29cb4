"""Quantization-aware models: policies in the zoo, QAT keys under vmap, export round trip."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxqfl import keys as jkeys
from jaxqfl import models, quant


def np_params(model, x, seed=0):
    """Parameters shaped like ``model.init``'s, filled by NumPy (no XLA compile, which
    dominates these tests on a CPU): ``N(0, 1/fan_in)`` kernels, small biases, and
    positive learned-quantizer parameters."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        if ":" in name:
            return jnp.asarray(0.05 + 0.05 * rng.random(s.shape), s.dtype)
        fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 10
        return jnp.asarray(rng.normal(size=s.shape) / np.sqrt(fan_in), s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _xy(n=16, d=12, seed=0):
    kx, kw = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (n, d))
    y = (x @ jax.random.normal(kw, (d,)) > 0).astype(jnp.int32)
    return x, y


def test_qat_init_equals_float_init_and_none_policy_is_the_float_model():
    x, _ = _xy()
    pf = models.mlp(hidden=(8,), num_outputs=2).init(jax.random.key(0), x)
    pq = models.mlp(hidden=(8,), num_outputs=2, policy="full").init(jax.random.key(0), x)
    jax.tree_util.tree_map(np.testing.assert_array_equal, pf, pq)
    m_none = models.mlp(hidden=(8,), num_outputs=2, policy="none")
    np.testing.assert_array_equal(m_none.apply(pf, x), models.mlp(hidden=(8,), num_outputs=2).apply(pf, x))
    assert models.cnn(policy=quant.Policy(())).init is not None  # rule-less policy = float


def test_qat_forward_is_fake_quant_of_inputs_and_kernels():
    x, _ = _xy()
    m = models.linear_regression(3, policy="full")
    p = np_params(m, x)
    wq = quant.uniform(8, axis=-1).fake_quant(p["Dense_0"]["kernel"])
    xq = quant.uniform(8, symmetric=False, axis=0).fake_quant(x)
    np.testing.assert_allclose(m.apply(p, x), xq @ wq + p["Dense_0"]["bias"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(m.apply(p, x), models.linear_regression(3).apply(p, x), atol=1e-7)


def test_qconv_without_quantizers_equals_flax_conv():
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
    conv = nn.Conv(5, (3, 3), padding="SAME", strides=2)
    qconv = models.QConv(5, (3, 3), binding=quant.Binding({}, {}), padding="SAME", strides=2)
    shapes = jax.eval_shape(conv.init, jax.random.key(1), x)
    assert jax.tree_util.tree_map(lambda s: s.shape, jax.eval_shape(qconv.init, jax.random.key(1), x)) == jax.tree_util.tree_map(lambda s: s.shape, shapes)
    p = jax.tree_util.tree_map(lambda s: jax.random.normal(jax.random.key(2), s.shape), shapes)
    np.testing.assert_allclose(qconv.apply(p, x), conv.apply(p, x), rtol=1e-5, atol=1e-5)


def _nearest_linear_reference(params, x):
    """NumPy round-to-nearest forward of ``linear_regression`` under the policy of the test below:
    kernel symmetric 3-bit per output channel (``s = max |w| / 3``), input asymmetric 4-bit per
    tensor (``z = rn(-lo / s0)``, ``s = max(-lo / z, hi / (15 - z))``), ``rn(v) = floor(v + 1/2)``."""
    rn = lambda v: np.floor(v + np.float32(0.5))
    w = np.asarray(params["Dense_0"]["kernel"], np.float32)
    s_w = np.max(np.abs(w), axis=0, keepdims=True) / np.float32(3)
    w_q = np.clip(rn(w / s_w), -3, 3) * s_w
    x = np.asarray(x, np.float32)
    lo, hi = x.min(), x.max()
    assert lo < 0 < hi
    z = np.clip(rn(-lo / ((hi - lo) / np.float32(15))), 1, 14)
    s_x = max(-lo / z, hi / (np.float32(15) - z))
    x_q = (np.clip(rn(x / s_x) + z, 0, 15) - z) * s_x
    return x_q @ w_q + np.asarray(params["Dense_0"]["bias"], np.float32)


def test_qat_keys_flow_per_client_under_vmap():
    """Stochastic rounding draws from apply's key: vmapped clients with per-client keys
    match a loop, differ from each other, and key=None is round-to-nearest."""
    pol = quant.Policy((quant.Rule("kernel", quant.uniform(3, rounding="stochastic", axis=-1), quant.uniform(4, symmetric=False, rounding="stochastic")),))
    m = models.linear_regression(2, policy=pol)
    x, _ = _xy()
    clients = 3
    params = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *(np_params(m, x, c) for c in range(clients)))
    run = jax.random.key(42)
    ckeys = jnp.stack([jkeys.purpose_key(jkeys.step_key(jkeys.client_key(jkeys.round_key(run, 0), c), 0), jkeys.QUANT) for c in range(clients)])
    ys = jax.jit(jax.vmap(lambda p, k: m.apply(p, x, key=k)))(params, ckeys)
    one = jax.jit(lambda p, k: m.apply(p, x, key=k))
    for c in range(clients):
        p_c = jax.tree_util.tree_map(lambda a: a[c], params)
        np.testing.assert_allclose(ys[c], one(p_c, ckeys[c]), rtol=1e-6, atol=1e-6)
    p0 = jax.tree_util.tree_map(lambda a: a[0], params)
    assert not np.allclose(one(p0, ckeys[0]), one(p0, ckeys[1]))
    det = jax.jit(lambda p: m.apply(p, x, key=None))
    np.testing.assert_allclose(det(p0), _nearest_linear_reference(p0, x), rtol=1e-5, atol=1e-5)
    nearest = quant.Policy((quant.Rule("kernel", quant.uniform(3, axis=-1), quant.uniform(4, symmetric=False)),))
    m_near = models.linear_regression(2, policy=nearest)
    np.testing.assert_array_equal(det(p0), jax.jit(lambda p: m_near.apply(p, x))(p0))


@pytest.mark.parametrize("policy", ["full", "lsq4"])
def test_qat_training_under_vmap_reduces_loss(policy):
    m = models.mlp(hidden=(16,), num_outputs=2, policy=policy)
    x, y = _xy(64)
    clients = 2
    opt = optax.sgd(0.5)
    params = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *(np_params(m, x, c) for c in range(clients)))

    def loss(p, k):
        return optax.softmax_cross_entropy_with_integer_labels(m.apply(p, x, key=k), y).mean()

    def client(p, ckey):
        def step(carry, s):
            p, st = carry
            l, g = jax.value_and_grad(loss)(p, jax.random.fold_in(ckey, s))
            u, st = opt.update(g, st, p)
            return (optax.apply_updates(p, u), st), l
        (p, _), ls = jax.lax.scan(step, (p, opt.init(p)), jnp.arange(30))
        return p, ls

    p_new, ls = jax.jit(jax.vmap(client))(params, jax.random.split(jax.random.key(1), clients))
    assert np.all(np.asarray(ls[:, -1]) < 0.7 * np.asarray(ls[:, 0]))
    if policy == "lsq4":
        moved = np.asarray(p_new["Dense_0"]["kernel:scale"]) - np.asarray(params["Dense_0"]["kernel:scale"])
        assert np.all(moved != 0)  # the learned step sizes receive gradients


@pytest.mark.parametrize("policy", list(quant.PRESETS))
def test_export_round_trip_matches_fake_quant_inference_exactly(policy):
    m = models.mlp(hidden=(16, 8), num_outputs=3, policy=policy)
    x, _ = _xy(8)
    p = np_params(m, x)
    ex = quant.export(p, policy)
    y_fake = jax.jit(lambda p: m.apply(p, x))(p)
    y_int = jax.jit(lambda p: m.apply(p, x))(ex.params)
    np.testing.assert_array_equal(np.asarray(y_int), np.asarray(y_fake))
    leaves = jax.tree_util.tree_leaves(ex.params, is_leaf=lambda a: isinstance(a, quant.QTensor))
    qts = [a for a in leaves if isinstance(a, quant.QTensor)]
    if policy == "none":
        assert not qts and ex.quantized_bytes == ex.float_bytes
        return
    assert qts and ex.quantized_bytes < ex.float_bytes
    for a in qts:
        assert a.codes.dtype in (jnp.int8, jnp.uint8, jnp.int16, jnp.bfloat16, jnp.float8_e4m3fn)


def test_export_reports_bytes_before_and_after_for_the_cnn():
    m = models.cnn(policy="full")
    p = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    p = jax.tree_util.tree_map(lambda s: jnp.ones(s.shape, s.dtype), p)
    n_kernel = 5 * 5 * 32 + 5 * 5 * 32 * 64 + 3136 * 512 + 512 * 10
    n_bias = 32 + 64 + 512 + 10
    ex = quant.export(p, "full")
    assert ex.float_bytes == 4 * 1_663_370
    scales = 4 * (32 + 64 + 512 + 10)  # one float32 scale per output channel
    assert ex.quantized_bytes == ex.stored_bytes == n_kernel + scales + 4 * n_bias
    ex4 = quant.export(p, "w4a8")  # 4-bit codes, packed two per byte
    assert ex4.quantized_bytes == sum((k + 1) // 2 for k in (800, 51200, 3136 * 512, 5120)) + scales + 4 * n_bias
    assert ex4.stored_bytes == ex.stored_bytes  # int8 containers before packing


@pytest.mark.parametrize("bits,n", [(4, 3), (3, 5), (1, 9), (4, 8), (6, 7)])
def test_export_packs_codes_into_the_ceiling_of_bits_over_eight(bits, n):
    """``n`` codes of ``bits`` bits take ``ceil(n * bits / 8)`` bytes packed, odd counts included
    (a partial last byte is still a byte), plus the float32 per-tensor scale and the float bias."""
    weights = quant.binary() if bits == 1 else quant.uniform(bits)
    policy = quant.Policy((quant.Rule("kernel", weights),))
    params = {"Dense_0": {"kernel": jnp.linspace(-1.0, 1.0, n).reshape(n, 1), "bias": jnp.zeros((1,))}}
    ex = quant.export(params, policy)
    assert ex.quantized_bytes == -(-n * bits // 8) + 4 + 4
    assert ex.float_bytes == 4 * n + 4


class TinyCNN(nn.Module):
    """Two QAT-capable convolutions and a dense head, small enough to compile fast."""

    layers: object = None

    @nn.compact
    def __call__(self, x):
        conv = nn.Conv if self.layers is None else self.layers.conv
        dense = nn.Dense if self.layers is None else self.layers.dense
        x = nn.relu(conv(4, (3, 3), padding="SAME", name="Conv_0")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(conv(6, (3, 3), padding="VALID", name="Conv_1")(x))
        return dense(3, name="Dense_0")(x.reshape((x.shape[0], -1)))


@pytest.mark.parametrize("policy", ["mixed"])
def test_export_round_trip_conv_model(policy):
    m = models.from_flax(TinyCNN(), policy=policy)
    x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
    p = np_params(m, x)
    ex = quant.export(p, policy)
    assert isinstance(ex.params["Conv_1"]["kernel"], quant.QTensor)
    run = jax.jit(lambda p: m.apply(p, x))
    np.testing.assert_array_equal(np.asarray(run(ex.params)), np.asarray(run(p)))


def test_from_flax_with_policy_quantizes_a_module_with_or_without_a_layers_field():
    m = models.from_flax(models.MLP(hidden=(4,), num_outputs=2), policy="full")
    x, _ = _xy()
    p = np_params(m, x)
    assert jax.jit(m.apply)(p, x).shape == (16, 2)
    dense = models.from_flax(nn.Dense(3), policy="full")  # no layers field: the generic interception
    pd = dense.init(jax.random.key(0), x)
    assert not np.allclose(dense.apply(pd, x), models.from_flax(nn.Dense(3)).apply(pd, x))


def test_preset_predictions_do_not_depend_on_the_rest_of_the_batch():
    """Activation ranges are per example (axis 0), so evaluation batching cannot change results."""
    m = models.mlp(hidden=(8,), num_outputs=3, policy="mixed")
    x, _ = _xy(6)
    p = np_params(m, x)
    run = jax.jit(lambda p, x: m.apply(p, x))
    whole = np.asarray(run(p, x))
    halves = np.concatenate([np.asarray(run(p, x[:3])), np.asarray(run(p, x[3:] * 1.0))])
    np.testing.assert_array_equal(whole, halves)
