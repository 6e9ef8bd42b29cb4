"""LSQ and PACT: forward grids and the custom-VJP gradients against their formulas."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxqfl import quant


def _grads(q, x, p, w):
    return jax.grad(lambda x_, p_: jnp.sum(w * q.fake_quant(x_, p_)), argnums=(0, 1))(x, p)


@pytest.mark.parametrize("bits,signed", [(2, True), (4, True), (3, False), (8, False)])
def test_lsq_gradients_match_the_three_region_formula(bits, signed):
    q_n, q_p = quant.lsq_grid(bits, signed)
    x = jax.random.normal(jax.random.key(0), (6, 7)) * 2.0
    s = jnp.asarray(0.3)
    w = jax.random.normal(jax.random.key(1), x.shape)
    q = quant.lsq(bits, signed=signed)
    gx, gs = _grads(q, x, s, w)
    v = np.asarray(x) / 0.3
    inside = (v > -q_n) & (v < q_p)
    assert inside.any() and (~inside).any()  # every region is exercised
    np.testing.assert_array_equal(np.asarray(gx), np.where(inside, np.asarray(w), 0.0))
    region = np.where(v <= -q_n, -q_n, np.where(v >= q_p, q_p, -v + np.floor(v + 0.5)))
    g = 1.0 / math.sqrt(x.size * q_p)
    np.testing.assert_allclose(float(gs), g * np.sum(np.asarray(w) * region), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(quant.lsq_step_grad(jnp.asarray(v), q_n, q_p)), region, atol=1e-5)
    # forward: round(clip(v, -Q_N, Q_P)) * s, codes in range
    qt = q.quantize(x, s)
    assert int(qt.codes.min()) >= -q_n and int(qt.codes.max()) <= q_p
    np.testing.assert_allclose(np.asarray(q.fake_quant(x, s)), np.floor(np.clip(v, -q_n, q_p) + 0.5) * 0.3, rtol=1e-6)


def test_lsq_scale_gradient_agrees_with_finite_differences_where_differentiable():
    """Where x/s is clipped, v_hat = +-Q s is differentiable in s and LSQ's gradient is
    its true derivative. Inside the range round() is piecewise constant: the true
    derivative of s*round(x/s) is round(x/s), and LSQ adds the straight-through term -x/s."""
    q = quant.lsq(4, grad_scale=1.0)
    s0 = 0.25
    x = jnp.array([-9.0, -3.0, 2.5, 7.0, 0.61, -0.86, 1.12])  # 4 clipped, 3 inside (away from rounding jumps)
    h = 1e-3

    def f(s, i):
        return q.fake_quant(x, s)[i]

    for i in range(x.size):
        fd = (f(s0 + h, i) - f(s0 - h, i)) / (2 * h)
        g = jax.grad(f)(jnp.asarray(s0), i)
        v = float(x[i]) / s0
        if i < 4:
            np.testing.assert_allclose(float(g), float(fd), rtol=1e-3)
        else:
            np.testing.assert_allclose(float(g), float(fd) - v, rtol=1e-3)


def test_lsq_per_example_gradient_scale_and_init():
    x = jax.random.normal(jax.random.key(0), (8, 5))
    q = quant.lsq(4, signed=False, per_example=True)
    s = q.init(x)
    np.testing.assert_allclose(float(s), 2 * float(jnp.mean(jnp.abs(x))) / math.sqrt(15), rtol=1e-6)
    q1 = quant.lsq(4, signed=False, grad_scale=1.0)
    _, gs = _grads(q, x, s, jnp.ones_like(x))
    _, gs1 = _grads(q1, x, s, jnp.ones_like(x))
    np.testing.assert_allclose(float(gs), float(gs1) / math.sqrt(5 * 15), rtol=1e-5)  # N_F = 5 features
    assert np.isfinite(float(quant.lsq(4).init(jnp.zeros(3))))
    assert np.all(np.asarray(quant.lsq(4).fake_quant(jnp.zeros(3), quant.lsq(4).init(jnp.zeros(3)))) == 0)


def test_pact_forward_and_gradients():
    q = quant.pact(2)
    alpha = jnp.asarray(1.5)
    x = jnp.array([-1.0, 0.0, 0.2, 0.74, 1.0, 1.5, 3.0])
    y = np.asarray(q.fake_quant(x, alpha))
    np.testing.assert_allclose(y, [0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 1.5], atol=1e-6)
    w = jnp.arange(1.0, 8.0)
    gx, ga = _grads(q, x, alpha, w)
    np.testing.assert_array_equal(np.asarray(gx), [0, 2, 3, 4, 5, 0, 0])  # 1[0 <= x < alpha]
    assert float(ga) == 6 + 7  # sum over x >= alpha
    # finite differences in alpha on the clipped elements (y = alpha there)
    fd = (q.fake_quant(x, alpha + 1e-3) - q.fake_quant(x, alpha - 1e-3)) / 2e-3
    np.testing.assert_allclose(np.asarray(fd)[5:], 1.0, rtol=1e-3)
    qt = q.quantize(x, alpha)
    assert qt.codes.dtype == jnp.uint8 and int(qt.codes.max()) <= 3


def test_learned_quantizers_under_jit_vmap_grad_and_stochastic_rounding():
    q = quant.lsq(3, rounding="stochastic")
    xs = jax.random.normal(jax.random.key(0), (4, 10))
    ss = jnp.full((4,), 0.4)
    keys = jax.random.split(jax.random.key(1), 4)
    loss = lambda x, s, k: jnp.sum(q.fake_quant(x, s, k) ** 2)
    gs = jax.jit(jax.vmap(jax.grad(loss, argnums=1)))(xs, ss, keys)
    assert gs.shape == (4,) and np.all(np.isfinite(np.asarray(gs)))
    ys = jax.jit(jax.vmap(lambda k: q.fake_quant(xs[0], 0.4, k)))(jax.random.split(jax.random.key(2), 3000))
    inside = np.abs(np.asarray(xs[0]) / 0.4) < 3
    np.testing.assert_array_less(np.abs(np.asarray(ys.mean(0) - xs[0]))[inside], 5 * 0.4 / (2 * np.sqrt(3000)))


def test_learned_quantizer_errors():
    with pytest.raises(ValueError, match="bits=1"):
        quant.lsq(1)
    with pytest.raises(ValueError, match="alpha_init=0"):
        quant.pact(4, alpha_init=0)
    with pytest.raises(TypeError, match="int8"):
        quant.lsq(4).fake_quant(jnp.ones(3, jnp.int8), 1.0)
