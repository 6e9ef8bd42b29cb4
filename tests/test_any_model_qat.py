"""QAT for any model by interception (jaxqfl.models.intercept).

Each test states a property: the intercepted forward equals a hand-written
fake-quant reference of the same network (Linen and NNX), its gradients are the
reference's (the quantizers' estimators), the generic path gives exactly what
the ``layers``-based QAT path gives on the zoo MLP and CNN, stochastic rounding
follows the key, and what cannot be intercepted is refused.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from jaxqfl import models
from jaxqfl.quant import Policy, Rule
from jaxqfl.quant.uniform import uniform

W8 = uniform(8, symmetric=True, axis=-1)  # the `full` preset's quantizers, written out
A8 = uniform(8, symmetric=False, axis=0)


class ConvNet(nn.Module):
    """An ordinary Linen model: no `layers` field, nothing written for jaxqfl."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3))(x)
        x = nn.GroupNorm(num_groups=2)(x)
        x = nn.relu(x)
        return nn.Dense(5)(x.reshape(x.shape[0], -1))


def _group_norm(h, scale, bias, groups=2, eps=1e-6):
    b, hh, ww, c = h.shape
    g = h.reshape(b, hh, ww, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = ((g - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / jnp.sqrt(var + eps)).reshape(h.shape) * scale + bias


def _reference(p, x):
    """ConvNet under `full`, by hand: fq_a on each layer input, fq_w on each kernel."""
    fq_w = lambda w: W8.fake_quant(w, None)  # noqa: E731
    fq_a = lambda a: A8.fake_quant(a, None)  # noqa: E731
    h = lax.conv_general_dilated(fq_a(x), fq_w(p["Conv_0"]["kernel"]), (1, 1), "SAME",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["Conv_0"]["bias"]
    h = jax.nn.relu(_group_norm(h, p["GroupNorm_0"]["scale"], p["GroupNorm_0"]["bias"]))
    h = h.reshape(h.shape[0], -1)
    return fq_a(h) @ fq_w(p["Dense_0"]["kernel"]) + p["Dense_0"]["bias"]


def test_an_ordinary_linen_model_quantized_equals_the_hand_written_reference_and_its_gradients():
    x = jax.random.normal(jax.random.key(1), (4, 6, 6, 2))
    model = models.from_flax(ConvNet(), "full")
    params = model.init(jax.random.key(0), x)
    assert set(params) == {"Conv_0", "GroupNorm_0", "Dense_0"}  # the float model's paths, nothing added
    got, want = model.apply(params, x), _reference(params, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    float_out = models.from_flax(ConvNet()).apply(params, x)
    assert float(jnp.abs(float_out - want).max()) > 1e-3  # the quantization is really there
    g_model = jax.grad(lambda p: jnp.sum(model.apply(p, x) ** 2))(params)
    g_ref = jax.grad(lambda p: jnp.sum(_reference(p, x) ** 2))(params)
    for a, b in zip(jax.tree.leaves(g_model), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


class TwoLayers(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(5, 8, rngs=rngs)
        self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x)))


def test_an_nnx_model_quantized_equals_the_hand_written_reference():
    a4 = uniform(4, symmetric=False, axis=0)
    w4 = uniform(4, symmetric=True, axis=-1)
    policy = Policy((Rule(r"(^|/)kernel$", w4, a4),), "w4a4")
    model = models.from_nnx(TwoLayers(nnx.Rngs(0)), policy)
    x = jax.random.normal(jax.random.key(3), (6, 5))
    p = model.init(None, x)
    assert set(p) == {"hidden", "out"}
    h = jax.nn.relu(a4.fake_quant(x, None) @ w4.fake_quant(p["hidden"]["kernel"], None) + p["hidden"]["bias"])
    want = a4.fake_quant(h, None) @ w4.fake_quant(p["out"]["kernel"], None) + p["out"]["bias"]
    np.testing.assert_allclose(model.apply(p, x), want, rtol=1e-5, atol=1e-5)
    stacked = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), p)  # per-client params under vmap
    out = jax.vmap(model.apply)(stacked, jnp.stack([x, x]))
    np.testing.assert_allclose(out[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("zoo,preset", [("mlp", p) for p in ("full", "mixed", "w4a8", "half", "nf4", "lsq4",
                                                                  "binary", "fp8")]
                         + [pytest.param("cnn", "full", marks=pytest.mark.slow),  # CI time: 10-17 s; cnn-lsq4 stays
                            ("cnn", "lsq4")])
def test_the_generic_path_gives_exactly_what_the_layers_path_gives(zoo, preset):
    if zoo == "mlp":
        x = jax.random.normal(jax.random.key(2), (5, 12))
        old = models.mlp(hidden=(16, 8), num_outputs=3, policy=preset)
        module = models.MLP(hidden=(16, 8), num_outputs=3)
    else:
        x = jax.random.normal(jax.random.key(2), (2, 28, 28, 1))
        old = models.cnn(num_outputs=4, policy=preset)
        module = models.CNN(num_outputs=4)
    new = models.quantize_model(models.from_flax(module), preset)
    p_old, p_new = old.init(jax.random.key(0), x), new.init(jax.random.key(0), x)
    assert jax.tree.structure(p_old) == jax.tree.structure(p_new)
    for a, b in zip(jax.tree.leaves(p_old), jax.tree.leaves(p_new)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # learned scales: jitted vs eager init
    np.testing.assert_array_equal(old.apply(p_old, x), new.apply(p_old, x))


def test_stochastic_rounding_draws_from_the_apply_key():
    sr = uniform(2, symmetric=True, axis=-1, rounding="stochastic")
    model = models.quantize_model(models.from_flax(models.MLP(hidden=(), num_outputs=2)),
                                  Policy((Rule(r"(^|/)kernel$", sr, None),), "sr2"))
    x = jax.random.normal(jax.random.key(5), (3, 4))
    p = model.init(jax.random.key(0), x)
    y1 = model.apply(p, x, key=jax.random.key(7))
    np.testing.assert_array_equal(y1, model.apply(p, x, key=jax.random.key(7)))
    assert not np.array_equal(y1, model.apply(p, x, key=jax.random.key(8)))
    # unbiased (one linear layer, E[Q(W)] = W): the mean output over keys is the float output within 5 sigma
    n = 2000
    ys = jax.vmap(lambda k: model.apply(p, x, key=k))(jax.random.split(jax.random.key(9), n))
    float_y = models.from_flax(models.MLP(hidden=(), num_outputs=2)).apply(p, x)
    err = np.abs(np.asarray(ys.mean(0) - float_y))
    assert np.all(err <= 5 * np.asarray(ys.std(0)) / np.sqrt(n) + 1e-6), err


def test_recurrent_and_attention_models_are_intercepted_inside_scans_and_calls():
    x = jnp.asarray(np.random.RandomState(0).randint(0, 256, (2, 12)))
    for m_q, m_f in [(models.char_lstm(vocab=257, embed_dim=4, hidden=8, layers=1, policy="full"),
                      models.char_lstm(vocab=257, embed_dim=4, hidden=8, layers=1)),
                     (models.transformer(vocab=257, width=8, depth=1, heads=2, context=12, policy="full"),
                      models.transformer(vocab=257, width=8, depth=1, heads=2, context=12))]:
        p = m_q.init(jax.random.key(0), x)  # refuses if any kernel's input was never intercepted
        assert jax.tree.structure(p) == jax.tree.structure(m_f.init(jax.random.key(0), x))
        assert float(jnp.abs(m_q.apply(p, x) - m_f.apply(p, x)).max()) > 1e-4


def test_what_cannot_be_intercepted_is_refused_naming_it():
    def init(key, x):
        return {"Dense_0": {"kernel": jax.random.normal(key, (x.shape[-1], 3))}}

    def apply_in_while(p, x):  # the kernel meets the input only inside a while_loop body
        return lax.while_loop(lambda c: c[0] < 1, lambda c: (c[0] + 1, x @ p["Dense_0"]["kernel"]),
                              (0, jnp.zeros((x.shape[0], 3))))[1]

    x = jnp.ones((2, 4))
    with pytest.raises(ValueError, match="Dense_0"):
        models.from_functions(init, apply_in_while, policy="full").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="matches no parameter"):
        models.from_functions(init, lambda p, x: x @ p["Dense_0"]["kernel"],
                              policy=Policy((Rule("Conv", W8, None),), "c")).init(jax.random.key(0), x)
    plain = models.from_functions(init, lambda p, x: x @ p["Dense_0"]["kernel"], policy="full")
    p = plain.init(jax.random.key(0), x)
    np.testing.assert_allclose(plain.apply(p, x), A8.fake_quant(x, None) @ W8.fake_quant(p["Dense_0"]["kernel"], None),
                               rtol=1e-6)
