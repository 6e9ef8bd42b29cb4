"""Float models: shapes, parameter counts, deterministic init, vmap over clients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxqfl import models


def _count(params):
    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))


def test_cnn_parameter_count_matches_hand_count():
    m = models.cnn(num_outputs=10)
    params = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((2, 28, 28, 1)))
    conv1 = 5 * 5 * 1 * 32 + 32  # 832
    conv2 = 5 * 5 * 32 * 64 + 64  # 51,264
    dense1 = (7 * 7 * 64) * 512 + 512  # 1,606,144 (two 2x2 pools: 28 -> 14 -> 7)
    dense2 = 512 * 10 + 10  # 5,130
    assert _count(params) == conv1 + conv2 + dense1 + dense2 == 1_663_370
    assert params["Conv_0"]["kernel"].shape == (5, 5, 1, 32)
    assert params["Dense_0"]["kernel"].shape == (3136, 512)


def test_mlp_parameter_count_is_2nn():
    params = jax.eval_shape(models.mlp().init, jax.random.key(0), jnp.zeros((1, 28, 28)))
    assert _count(params) == 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10 == 199_210


def np_params(model, x, seed=0):
    """Parameters shaped like ``model.init``'s, filled by NumPy (skips the XLA compile of
    Flax's random initialisers, the dominant cost of these tests on a CPU)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.05, s.dtype), shapes)


@pytest.mark.parametrize(
    "factory, x_shape, out",
    [
        (lambda: models.mlp(hidden=(32, 16), num_outputs=7), (5, 28, 28), 7),
        (lambda: models.cnn(num_outputs=10), (3, 28, 28, 1), 10),
        (lambda: models.cnn(num_outputs=4), (3, 28, 28), 4),
        (lambda: models.logistic_regression(3), (6, 4, 5), 3),
        (lambda: models.linear_regression(), (6, 9), 1),
    ],
)
def test_output_shapes(factory, x_shape, out):
    m = factory()
    x = jnp.ones(x_shape, jnp.float32)
    params = jax.eval_shape(m.init, jax.random.key(1), x)
    y = jax.eval_shape(m.apply, params, x)
    assert y.shape == (x_shape[0], out)
    assert y.dtype == jnp.float32
    # a key is accepted (and ignored) by float models
    assert jax.eval_shape(lambda p, x, k: m.apply(p, x, key=k), params, x, jax.random.key(3)).shape == y.shape


def test_float_models_ignore_the_key():
    m = models.mlp(hidden=(4,), num_outputs=3)
    x = jnp.ones((2, 5))
    p = np_params(m, x)
    np.testing.assert_array_equal(m.apply(p, x, key=jax.random.key(3)), m.apply(p, x))


def test_logistic_and_linear_regression_are_affine():
    m = models.linear_regression(2)
    x = jax.random.normal(jax.random.key(0), (4, 3))
    p = m.init(jax.random.key(1), x)
    np.testing.assert_allclose(m.apply(p, x), x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], rtol=1e-6)
    assert _count(jax.eval_shape(models.logistic_regression(10).init, jax.random.key(0), jnp.zeros((1, 784)))) == 7850


def test_init_is_deterministic_given_key():
    m = models.mlp(hidden=(8,))
    x = jnp.zeros((2, 6))
    a, b, c = (m.init(jax.random.key(k), x) for k in (4, 4, 5))
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(a["Dense_0"]["kernel"], c["Dense_0"]["kernel"])


def test_vmap_over_stacked_client_params_matches_loop():
    m = models.cnn(num_outputs=10)
    x = jax.random.normal(jax.random.key(1), (3, 2, 28, 28, 1))  # [clients, B, ...]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *(np_params(m, x[0], c) for c in range(3)))
    assert stacked["Conv_0"]["kernel"].shape == (3, 5, 5, 1, 32)
    y = jax.jit(jax.vmap(m.apply))(stacked, x)
    assert y.shape == (3, 2, 10)
    one = jax.jit(m.apply)
    for c in range(3):
        p_c = jax.tree_util.tree_map(lambda a: a[c], stacked)
        np.testing.assert_allclose(y[c], one(p_c, x[c]), rtol=2e-5, atol=2e-5)


def test_grad_through_apply():
    m = models.mlp(hidden=(4,), num_outputs=3)
    x = jnp.ones((2, 5))
    p = m.init(jax.random.key(0), x)
    g = jax.grad(lambda p: jnp.sum(m.apply(p, x) ** 2))(p)
    assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(p)


def test_from_functions_plain_pair():
    def init(key, sample_x):
        return {"w": jax.random.normal(key, (sample_x.shape[-1], 2))}

    def apply(params, x):
        return x @ params["w"]

    m = models.from_functions(init, apply)
    p = m.init(jax.random.key(0), jnp.ones((3, 4)))
    assert m.apply(p, jnp.ones((3, 4)), key=None).shape == (3, 2)


def test_from_flax_wraps_any_module_and_rejects_state():
    import flax.linen as nn

    m = models.from_flax(nn.Dense(3))
    p = m.init(jax.random.key(0), jnp.ones((2, 4)))
    assert set(p) == {"kernel", "bias"}
    assert m.apply(p, jnp.ones((2, 4))).shape == (2, 3)

    class WithBN(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.BatchNorm(use_running_average=False)(x)

    with pytest.raises(ValueError, match="batch_stats"):
        models.from_flax(WithBN()).init(jax.random.key(0), jnp.ones((2, 4)))
