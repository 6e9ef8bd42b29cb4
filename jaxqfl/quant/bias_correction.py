"""Bias correction (Nagel et al. 2019, "Data-free quantization through weight equalization
and bias correction", sec. 4.2), in its empirical form.

Quantizing a layer shifts the expected value of its outputs: with ``fq_w`` the weight
and ``fq_a`` the input quantizer of the layer under the policy,

    E[y_q - y] = E[f(fq_a(x), fq_w(W)) - f(x, W)]        (per output channel)

which for a Dense layer with float inputs is ``(fq_w(W) - W)^T E[x]``. The correction
folds the estimate on calibration inputs into the bias,

    b' = b - mean over calibration rows (and positions, for a Conv) of [f(fq_a(x), fq_w(W)) - f(x, W)],

so the quantized layer's mean output equals the float layer's on that data
(exactly, up to float rounding). Each layer is corrected on its float input
(``inputs``, e.g. from ``jaxqfl.models.capture.layer_inputs`` of the float model).
"""
from __future__ import annotations

import jax.numpy as jnp

from jaxqfl.quant import graph as g
from jaxqfl.quant.policy import bind


def _copy(tree):
    return {k: _copy(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def quantized_layer(binding, op, x, kernel):
    """``f(fq_a(x), fq_w(W))`` without bias (round to nearest)."""
    qa = binding.activation(op.path)
    qw = binding.weight(f"{op.path}/kernel")
    xq = x if qa is None else qa.fake_quant(x, None)
    wq = kernel if qw is None else qw.fake_quant(kernel, None)
    return g.linear(op, xq, wq)


def bias_correction(params, policy, inputs: dict, graph) -> dict:
    """Params with the bias of every layer in ``inputs`` corrected (module docstring).

    Args:
      params: float parameters (nested dict, Flax layout).
      policy: the quantization policy (name or ``Policy``) the model will be quantized with.
      inputs: ``{layer path: float input [B, ...]}`` on calibration data.
      graph: the model's ``jaxqfl.quant.graph`` ops (gives each layer's kind, strides, padding).
    Returns:
      a copy of ``params`` with corrected biases.
    """
    binding = bind(policy, params)
    out = _copy(params)
    for path, x in inputs.items():
        op = g.layer_op(graph, path)
        p = g.node(out, path)
        if "bias" not in p:
            raise ValueError(f"bias_correction: layer {path!r} has no bias to correct")
        x = jnp.asarray(x, jnp.float32)
        shift = quantized_layer(binding, op, x, p["kernel"]) - g.linear(op, x, p["kernel"])
        p["bias"] = p["bias"] - jnp.mean(shift.reshape(-1, shift.shape[-1]), axis=0)
    return out
