"""Integer inference equals the fake-quant model; fixed-point requantization and 4-bit packing are exact."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxqfl import models, quant
from jaxqfl.data.mnist import load_mnist
from jaxqfl.models.capture import layer_inputs
from jaxqfl.models.graphs import cnn_graph, mlp_graph
from jaxqfl.quant import calibrate as cal
from jaxqfl.quant.fixed_point import mul_shift, multiplier_value, quantize_multiplier, reference_mul_shift
from jaxqfl.quant.integer import bias_to_grid, export_integer, integer_apply, pack_nibbles, unpack_nibbles


def test_fixed_point_multiply_matches_big_integers():
    rng = np.random.default_rng(0)
    a = rng.integers(-(2**31) + 1, 2**31 - 1, 4000)
    a[:2000] = rng.integers(-5000, 5000, 2000)
    m = np.exp(rng.uniform(np.log(1e-9), np.log(50.0), 4000))
    m0, n = quantize_multiplier(m)
    assert np.all(np.abs(multiplier_value(m0, n) / m - 1) < 2.0**-30)
    got = np.asarray(mul_shift(jnp.asarray(a, jnp.int32), m0, n))
    ref = np.clip([reference_mul_shift(x, y, z) for x, y, z in zip(a, m0, n)], -(2**31) + 1, 2**31 - 1)
    np.testing.assert_array_equal(got, ref)
    # ties go up, as rounding.round_nearest: 5 * 0.5 = 2.5 -> 3, -5 * 0.5 = -2.5 -> -2
    m0h, nh = quantize_multiplier(np.array([0.5, 0.5]))
    np.testing.assert_array_equal(mul_shift(jnp.array([5, -5], jnp.int32), m0h, nh), [3, -2])


def test_nibble_packing_round_trips():
    codes = np.random.default_rng(1).integers(-7, 8, size=(5, 7, 3)).astype(np.int8)  # odd count
    packed = pack_nibbles(codes)
    assert packed.dtype == np.uint8 and packed.size == (codes.size + 1) // 2
    np.testing.assert_array_equal(unpack_nibbles(packed, codes.shape), codes)
    with pytest.raises(ValueError, match="\\[-8, 7\\]"):
        pack_nibbles(np.array([9]))


def _train(model, params, x, y, steps, lr=0.1, batch=64):
    opt = optax.sgd(lr, momentum=0.9)

    def loss(p, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xb), yb).mean()

    @jax.jit
    def run(params):
        def step(c, i):
            p, s = c
            idx = jax.random.randint(jax.random.key(i), (batch,), 0, x.shape[0])
            gr = jax.grad(loss)(p, x[idx], y[idx])
            u, s = opt.update(gr, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(steps))
        return p

    return run(params)


def _train_head(model, params, x, y, steps=200):
    """Random conv features, trained output layer: confident logits at the cost of a linear fit."""
    feats = layer_inputs(model, params, x)["Dense_1"]
    head = models.mlp((), policy=None)
    hp = _train(head, {"Dense_0": params["Dense_1"]}, feats, y, steps, lr=0.02)
    return {**params, "Dense_1": hp["Dense_0"]}


@pytest.fixture(scope="module")
def mnist(mnist_path):
    x, y, xt, yt = load_mnist(mnist_path)
    return jnp.asarray(x[:4000]), jnp.asarray(y[:4000]), np.asarray(xt[:1000])


_TRAINED = {}  # kind -> params, shared by the 8-bit and 4-bit cases


def _check(kind, policy, mnist):
    x, y, xt = mnist
    if kind == "mlp":
        make, graph, n_test = (lambda p=None: models.mlp((64, 32), policy=p)), mlp_graph(2), 1000
        fm = make()
        if kind not in _TRAINED:
            _TRAINED[kind] = _train(fm, fm.init(jax.random.key(0), x[:1]), x, y, 200)
    else:
        make, graph, n_test = (lambda p=None: models.cnn(policy=p)), cnn_graph(), 300
        fm = make()
        if kind not in _TRAINED:
            _TRAINED[kind] = _train_head(fm, fm.init(jax.random.key(0), x[:1]), x[:1000], y[:1000])
    params = _TRAINED[kind]
    calib = x[:256]
    cp = quant.calibrated_policy(policy, params, cal.calibrate(layer_inputs(fm, params, calib), "minmax"))
    params = bias_to_grid(params, cp, graph)
    im = export_integer(params, cp, graph)
    xs = xt[:n_test]
    fake = np.asarray(jax.jit(make(cp).apply)(params, xs))
    ints = np.asarray(integer_apply(im, xs))
    np.testing.assert_array_equal(ints.argmax(1), fake.argmax(1))
    logits = np.asarray(fm.apply(params, calib))
    step = (logits.max() - logits.min()) / 255  # one step of an 8-bit grid over the calibration logits
    assert np.max(np.abs(ints - fake)) <= step
    return im


@pytest.mark.parametrize("policy", ["full", "w4a8"])
def test_integer_mlp_equals_fake_quant(policy, mnist):
    im = _check("mlp", policy, mnist)
    kernel_codes = sum(int(np.prod(m.kernel_shape)) for m in im.meta)
    code_bytes = sum(int(im.arrays[m.path]["codes"].nbytes) for m in im.meta)
    assert code_bytes == (kernel_codes if policy == "full" else sum((int(np.prod(m.kernel_shape)) + 1) // 2 for m in im.meta))
    assert im.int_bytes < im.float_bytes / (3.5 if policy == "full" else 6.0)


@pytest.mark.parametrize("policy", ["full", "w4a8"])
def test_integer_cnn_equals_fake_quant(policy, mnist):
    _check("cnn", policy, mnist)


def test_integer_export_needs_static_input_ranges():
    fm = models.mlp((8,))
    params = fm.init(jax.random.key(0), jnp.zeros((1, 5)))
    with pytest.raises(ValueError, match="static activation"):
        export_integer(params, "full", mlp_graph(1))


# Bytes held by the MNIST models, counted by hand: int8 codes (4-bit: two per byte), int32 biases,
# int32 column sums (Dense only), int32 multiplier + int32 shift per channel of every layer but the
# last, float32 output scales of the last, 8 bytes (float32 scale, int32 zero) per input grid.
# MLP 784-200-200-10: codes 198,800 (4-bit 99,400) + 1,640 + 1,640 + 3,200 + 40 + 24.
# CNN: codes 1,662,752 (4-bit 831,376) + 2,472 + 2,088 (Dense 512 + 10) + 4,864 + 40 + 32.
HELD_BYTES = {("mlp", "full"): 205_344, ("mlp", "w4a8"): 105_944,
              ("cnn", "full"): 1_672_248, ("cnn", "w4a8"): 840_872}


@pytest.mark.parametrize("kind, policy", sorted(HELD_BYTES))
def test_integer_model_size_is_the_bytes_it_holds(kind, policy):
    fm, graph = (models.mlp((200, 200)), mlp_graph(2)) if kind == "mlp" else (models.cnn(), cnn_graph())
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(8, 28, 28, 1)).astype(np.float32)
    shapes = jax.eval_shape(fm.init, jax.random.key(0), x[:1])  # random weights: only the sizes matter
    params = jax.tree.map(lambda s: (0.05 * rng.normal(size=s.shape)).astype(np.float32), shapes)
    cp = quant.calibrated_policy(policy, params, cal.calibrate(layer_inputs(fm, params, x), "minmax"))
    im = export_integer(params, cp, graph)
    held = sum(int(a.nbytes) for layer in im.arrays.values() for a in layer.values()) + 8 * len(im.meta)
    assert im.int_bytes == held == HELD_BYTES[kind, policy]
