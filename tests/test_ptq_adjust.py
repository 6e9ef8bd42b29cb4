"""Adjust step of PTQ: bias correction, cross-layer equalization, AdaRound."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxqfl import models, quant
from jaxqfl.models.capture import layer_inputs
from jaxqfl.models.graphs import cnn_graph, mlp_graph
from jaxqfl.quant import graph as g
from jaxqfl.quant.adaround import adaround
from jaxqfl.quant.bias_correction import bias_correction, quantized_layer
from jaxqfl.quant.equalize import equalize


def _imbalanced_mlp(seed=0):
    """An MLP whose hidden channels have ranges spread over two orders of magnitude."""
    model = models.mlp(hidden=(32, 16), num_outputs=5)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(256, 12)).astype(np.float32)
    params = model.init(jax.random.key(seed), x[:1])
    params = jax.tree.map(lambda a: a, params)
    for name, n in (("Dense_0", 32), ("Dense_1", 16)):
        s = np.exp(rng.normal(size=n) * 1.5).astype(np.float32)
        params[name]["kernel"] = params[name]["kernel"] * s
        params[name]["bias"] = jnp.asarray(rng.normal(size=n).astype(np.float32)) * 0.1 * s
    return model, params, x


def test_graphs_match_the_models():
    model, params, x = _imbalanced_mlp()
    np.testing.assert_allclose(g.float_apply(mlp_graph(2), params, x), model.apply(params, x), rtol=1e-5, atol=1e-5)
    cnn = models.cnn()
    xi = np.random.default_rng(1).uniform(size=(3, 28, 28, 1)).astype(np.float32)
    cp = cnn.init(jax.random.key(1), xi[:1])
    np.testing.assert_allclose(g.float_apply(cnn_graph(), cp, xi), cnn.apply(cp, xi), rtol=1e-4, atol=1e-5)


def test_bias_correction_makes_mean_outputs_equal():
    model, params, x = _imbalanced_mlp()
    inputs = layer_inputs(model, params, x)
    binding = quant.bind("w4a8", params)
    fixed = bias_correction(params, "w4a8", inputs, mlp_graph(2))
    for op in g.linear_layers(mlp_graph(2)):
        xin = inputs[op.path]
        float_out = g.linear(op, xin, params[op.path]["kernel"], params[op.path]["bias"]).mean(0)
        before = (quantized_layer(binding, op, xin, params[op.path]["kernel"]) + params[op.path]["bias"]).mean(0)
        after = (quantized_layer(binding, op, xin, fixed[op.path]["kernel"]) + fixed[op.path]["bias"]).mean(0)
        assert float(jnp.max(jnp.abs(before - float_out))) > 1e-3  # there was a shift to correct
        np.testing.assert_allclose(after, float_out, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(float_out)) + 1))
        np.testing.assert_array_equal(fixed[op.path]["kernel"], params[op.path]["kernel"])


def _spread(w):
    r = jnp.max(jnp.abs(w.reshape(-1, w.shape[-1])), axis=0)
    return float(r.max() / r.min())


def test_equalization_keeps_the_function_and_evens_ranges():
    model, params, x = _imbalanced_mlp()
    eq = equalize(params, mlp_graph(2))
    ref = model.apply(params, x)
    np.testing.assert_allclose(model.apply(eq, x), ref, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(ref))))
    for name in ("Dense_0", "Dense_1"):
        assert _spread(eq[name]["kernel"]) < 0.5 * _spread(params[name]["kernel"])


def test_equalization_of_the_cnn_keeps_its_function():
    cnn = models.cnn()
    xi = np.random.default_rng(2).uniform(size=(4, 28, 28, 1)).astype(np.float32)
    cp = cnn.init(jax.random.key(2), xi[:1])
    s = jnp.exp(jnp.asarray(np.random.default_rng(3).normal(size=32), jnp.float32))
    cp["Conv_0"]["kernel"] = cp["Conv_0"]["kernel"] * s
    eq = equalize(cp, cnn_graph())
    ref = cnn.apply(cp, xi)
    np.testing.assert_allclose(cnn.apply(eq, xi), ref, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(ref))))
    assert _spread(eq["Conv_0"]["kernel"]) < _spread(cp["Conv_0"]["kernel"])


def test_adaround_moves_at_most_one_step_and_beats_nearest():
    policy = "w4a8"  # 4-bit weights: where rounding choices matter most
    model, params, x = _imbalanced_mlp()
    inputs = layer_inputs(model, params, x)
    graph = mlp_graph(2)
    out = adaround(params, policy, inputs, graph, steps=200, batch_size=128)
    binding = quant.bind(policy, params)
    for op in g.linear_layers(graph):
        w = params[op.path]["kernel"]
        qw = binding.weight(f"{op.path}/kernel")
        s = qw.quantize(w, None).scale
        wa = out[op.path]["kernel"]
        codes = wa / s
        np.testing.assert_allclose(codes, jnp.round(codes), atol=1e-3)  # on the grid
        assert float(jnp.max(jnp.abs(wa - w) / s)) <= 1.0 + 1e-4  # at most one grid step
        exported = qw.quantize(wa, None)  # export keeps the grid and the AdaRound codes
        np.testing.assert_allclose(exported.scale, s, rtol=1e-6)
        np.testing.assert_array_equal(exported.codes, np.round(np.asarray(codes)).astype(np.int8))
        xin = inputs[op.path]
        target = g.linear(op, xin, w)
        err_ada = float(jnp.mean((target - quantized_layer(binding, op, xin, wa)) ** 2))
        err_near = float(jnp.mean((target - quantized_layer(binding, op, xin, w)) ** 2))
        assert err_ada < err_near, (op.path, err_ada, err_near)
