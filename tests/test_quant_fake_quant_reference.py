"""The fast fake-quant path equals a plain reference: forward values and gradients.

``uniform(...).fake_quant`` computes ``dequantize(quantize(x))`` in float32 without
integer codes and reduces weight ranges with folded halves (jaxqfl.quant.uniform,
issue 13 item 4). Here it is checked against the formulas written out plainly in
NumPy (per tensor and per channel, symmetric weights and asymmetric per-example
activations), against its own two-step ``dequantize(quantize(x))`` bit for bit,
and, inside the QAT MLP, against a reference model whose fake quantization is
``x + stop_gradient(reference(x) - x)`` (the straight-through estimator by hand).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxqfl import models
from jaxqfl.quant import uniform

TINY = np.finfo(np.float32).tiny


def _keep(x, axis):
    """Axes to reduce over for a per-channel (``axis``) or per-tensor (None) range."""
    return tuple(a for a in range(x.ndim) if axis is None or a != axis % x.ndim)


def ref_symmetric(x, axis, bits=8):
    """s = max|x| / Q (1 where that is zero), y = clip(floor(x / s + 1/2), -Q, Q) s."""
    x = np.asarray(x, np.float32)
    q = 2 ** (bits - 1) - 1
    s = np.max(np.abs(x), axis=_keep(x, axis), keepdims=True) / np.float32(q)
    s = np.where(s >= TINY, s, np.float32(1)).astype(np.float32)
    return (np.clip(np.floor(x / s + np.float32(0.5)), -q, q) * s).astype(np.float32)


def ref_asymmetric(x, axis, bits=8):
    """lo = min x, hi = max x, s0 = (hi - lo) / Qmax, z = clip(rn(-lo / s0), 1, Qmax - 1)
    (0 if lo = 0, Qmax if hi = 0), s = max(-lo / z, hi / (Qmax - z)), y = (clip(rn(x / s) + z, 0, Qmax) - z) s.

    As ``uniform`` computes it: lo and hi are the plain minimum and maximum (its module
    docstring says ``min(lo, 0)`` and ``max(hi, 0)``, which differs when a row has one sign:
    all-positive rows get z = 1 and s = hi / (Qmax - 1) instead of z = 0, s = hi / Qmax).
    """
    x = np.asarray(x, np.float32)
    qmax = np.float32(2**bits - 1)
    ax = _keep(x, axis)
    lo = np.min(x, axis=ax, keepdims=True).astype(np.float32)
    hi = np.max(x, axis=ax, keepdims=True).astype(np.float32)
    s0 = (hi - lo) / qmax
    s0 = np.where(s0 >= TINY, s0, np.float32(1))
    z = np.clip(np.floor(-lo / s0 + np.float32(0.5)), 1, qmax - 1)
    z = np.where(lo == 0, 0, np.where(hi == 0, qmax, z)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.maximum(np.where(z > 0, -lo / np.maximum(z, 1), 0), np.where(z < qmax, hi / np.maximum(qmax - z, 1), 0))
    s = np.where(s >= TINY, s, np.float32(1)).astype(np.float32)
    return ((np.clip(np.floor(x / s + np.float32(0.5)) + z, 0, qmax) - z) * s).astype(np.float32)


# shapes: a Dense kernel whose input axis folds (64 -> 32 -> 16 -> 8 rows), one that does not
# (odd extent), a conv kernel, a per-example activation batch, one with a zero row
CASES = [
    ("weight per-channel", True, -1, (64, 24)),
    ("weight per-channel odd", True, -1, (33, 5)),
    ("conv weight per-channel", True, -1, (5, 5, 32, 16)),
    ("weight per-tensor", True, None, (48, 20)),
    ("activation per-example", False, 0, (16, 80)),
    ("activation per-tensor", False, None, (16, 40)),
    ("activation per-channel", False, -1, (32, 6)),
]


def _data(shape, seed, sign="signed"):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 0.3
    if sign == "relu":  # a ReLU output: exercises lo = 0 (z = 0)
        x = np.maximum(x, 0)
    if sign == "positive":  # no zero, one sign: z = 1
        x = np.abs(x) + 0.01
    return x


@pytest.mark.parametrize("name,symmetric,axis,shape", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("sign", ["signed", "relu", "positive"])
def test_forward_and_gradient_equal_reference(name, symmetric, axis, shape, sign):
    q = uniform(8, symmetric=symmetric, axis=axis)
    x = _data(shape, 1, sign)
    if len(shape) == 2 and not symmetric:
        x[3] = 0.0  # an all-zero example: scale 1, zero codes
    ref = (ref_symmetric if symmetric else ref_asymmetric)(x, axis)
    y, vjp = jax.vjp(lambda v: q.fake_quant(v, None), jnp.asarray(x))
    scale_bound = float(np.max(np.abs(x))) / 127 + 1e-12
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-6, atol=1e-6 * scale_bound)
    g = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    (gx,) = vjp(jnp.asarray(g))
    # absmax / min-max grids cover x: the straight-through estimator passes the cotangent unchanged
    np.testing.assert_array_equal(np.asarray(gx), g)


@pytest.mark.parametrize("name,symmetric,axis,shape", CASES, ids=[c[0] for c in CASES])
def test_batched_forward_equals_reference_per_client(name, symmetric, axis, shape):
    """Under the engine's vmap over clients (a leading client axis) each client is quantized alone."""
    q = uniform(8, symmetric=symmetric, axis=axis)
    xs = np.stack([_data(shape, 10 + c) * (c + 1) for c in range(3)])
    ys = np.asarray(jax.vmap(lambda v: q.fake_quant(v, None))(jnp.asarray(xs)))
    ref = ref_symmetric if symmetric else ref_asymmetric
    for c in range(3):
        np.testing.assert_allclose(ys[c], ref(xs[c], axis), rtol=1e-6, atol=1e-6 * float(np.max(np.abs(xs[c]))) / 127)


@pytest.mark.parametrize(
    "q",
    [
        uniform(8, symmetric=True, axis=-1),
        uniform(8, symmetric=False, axis=0),
        uniform(4, symmetric=True, axis=None),
        uniform(8, symmetric=True, axis=-1, rounding="stochastic"),
        uniform(4, symmetric=False, axis=0, rounding="stochastic"),
        uniform(12, symmetric=False, axis=None),
    ],
    ids=lambda q: q.name,
)
def test_fake_quant_is_dequantize_of_quantize_bit_for_bit(q):
    """The float32 forward skips the integer codes; it must still equal them exactly."""
    x = jnp.asarray(_data((64, 24), 3))
    key = jax.random.key(7)
    np.testing.assert_array_equal(np.asarray(q.fake_quant(x, key)), np.asarray(q.dequantize(q.quantize(x, key))))


def _ste(ref):
    """Fake quantization by hand: forward ``ref(x)``, gradient the identity."""
    return lambda x: x + jax.lax.stop_gradient(ref(x) - x)


def _jnp_symmetric(w):  # per output channel (last axis) of a [in, out] kernel
    s = jnp.max(jnp.abs(w), axis=0, keepdims=True) / 127
    s = jnp.where(s >= TINY, s, 1.0)
    return jnp.clip(jnp.floor(w / s + 0.5), -127, 127) * s


def _jnp_asymmetric(x):  # per example (first axis) of a [B, features] input; as ref_asymmetric
    lo = jnp.min(x, axis=1, keepdims=True)
    hi = jnp.max(x, axis=1, keepdims=True)
    s0 = (hi - lo) / 255
    s0 = jnp.where(s0 >= TINY, s0, 1.0)
    z = jnp.clip(jnp.floor(-lo / s0 + 0.5), 1, 254)
    z = jnp.where(lo == 0, 0.0, jnp.where(hi == 0, 255.0, z))
    s = jnp.maximum(jnp.where(z > 0, -lo / jnp.maximum(z, 1.0), 0.0), jnp.where(z < 255, hi / jnp.maximum(255 - z, 1.0), 0.0))
    s = jnp.where(s >= TINY, s, 1.0)
    return (jnp.clip(jnp.floor(x / s + 0.5) + z, 0, 255) - z) * s


def test_qat_mlp_loss_and_gradient_equal_reference_model():
    """models.mlp(policy='full') against the same MLP written out with the reference fake quantization."""
    model = models.mlp(hidden=(32,), num_outputs=10, policy="full")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((16, 64), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, 16), jnp.int32)
    params = model.init(jax.random.key(0), x)
    fq_w, fq_a = _ste(_jnp_symmetric), _ste(_jnp_asymmetric)

    def ref_apply(p, x):
        h = jax.nn.relu(fq_a(x) @ fq_w(p["Dense_0"]["kernel"]) + p["Dense_0"]["bias"])
        return fq_a(h) @ fq_w(p["Dense_1"]["kernel"]) + p["Dense_1"]["bias"]

    def loss(apply, p):
        return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()

    l_ours, g_ours = jax.jit(jax.value_and_grad(lambda p: loss(lambda p, v: model.apply(p, v), p)))(params)
    l_ref, g_ref = jax.jit(jax.value_and_grad(lambda p: loss(ref_apply, p)))(params)
    np.testing.assert_allclose(float(l_ours), float(l_ref), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    # and the QAT gradient is not the float one (the check would be empty otherwise)
    float_model = models.mlp(hidden=(32,), num_outputs=10)
    g_float = jax.jit(jax.grad(lambda p: loss(lambda p, v: float_model.apply(p, v), p)))(params)
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_float))) > 1e-6
