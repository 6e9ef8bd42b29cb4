"""What a quantized model costs: multiply-accumulates, BOPs and bytes, per layer and in total.

For a layer whose kernel meets its input in a ``dot_general`` or
``conv_general_dilated`` (the ops :mod:`jaxqfl.models.intercept` quantizes):

    MACs   = multiply-accumulates for one example (a ``dot_general`` with
             output shape O and contracted size K: prod(O) * K; a convolution:
             prod(O) * in-channels * prod(window)); inside a ``lax.scan`` (an
             LSTM's steps) times the scan's length
    BOPs   = MACs * b_w * b_a   (bit operations, van Baalen et al. 2020,
             "Bayesian Bits: Unifying Quantization and Pruning", eq. 12)

with ``b_w`` the bits of the layer's weight quantizer and ``b_a`` those of its
input quantizer under the policy (32 for a float operand). Model bytes are
``sum over parameters of size * bits / 8``: a parameter the policy quantizes
counts its quantizer's ``bits`` (codes only: per-channel scales, 4 bytes per
output channel, are not counted), every other parameter 32 bits. MACs are
counted from the model's own jaxpr for one example (traced, never run), so
any model the interception handles is costed, zoo or not. A matmul between two
activations (attention scores) has no kernel and is not a layer's MAC; fused
kernels (an LSTM cell's gates) count under their first kernel's layer.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

FLOAT_BITS = 32


def dot_macs(eqn) -> int:
    """MACs of a ``dot_general`` equation: output size x contracted size."""
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs, out = eqn.invars[0].aval, eqn.outvars[0].aval
    return math.prod(out.shape) * math.prod(lhs.shape[d] for d in lhs_contract)


def conv_macs(eqn) -> int:
    """MACs of a ``conv_general_dilated`` equation: output size x (in-channels x window)."""
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out-channel dim, in-channel dim, *spatial dims)
    rhs, out = eqn.invars[1].aval, eqn.outvars[0].aval
    return math.prod(out.shape) * rhs.shape[rhs_spec[1]] * math.prod(rhs.shape[d] for d in rhs_spec[2:])


def op_macs(eqn) -> int:
    return dot_macs(eqn) if eqn.primitive.name == "dot_general" else conv_macs(eqn)


class LayerCost(NamedTuple):
    layer: str  # the kernel's layer path ('Dense_0')
    macs: int  # per example
    weight_bits: int
    activation_bits: int
    bops: int  # macs * weight_bits * activation_bits


class ModelCost(NamedTuple):
    layers: tuple  # LayerCost per layer, in the order the forward meets them
    macs: int
    bops: int
    model_bytes: float  # parameters at their quantized widths (codes; scales not counted)
    float_bytes: int  # the same parameters at 32 bits

    def as_dict(self) -> dict:
        """JSON-ready: totals and a per-layer table."""
        return {"macs": self.macs, "bops": self.bops, "model_bytes": self.model_bytes, "float_bytes": self.float_bytes,
                "layers": [c._asdict() for c in self.layers]}


def model_cost(model, policy, sample_x) -> ModelCost:
    """The cost of float ``model`` (a ``jaxqfl.models.Model``) quantized by ``policy``, for one example.

    ``sample_x``: one example's input with a leading batch axis of 1 (e.g. ``zeros((1, 28, 28, 1))``).
    ``policy``: a ``jaxqfl.quant`` policy, preset name, or None (float: 32 x 32 BOPs per MAC).
    """
    from jaxqfl.models.intercept import _Interpreter, _traced
    from jaxqfl.quant.policy import Binding, bind, param_paths
    from jaxqfl.quant.qtensor import static_bits

    if jnp.shape(sample_x)[:1] != (1,):
        raise ValueError(f"model_cost: sample_x must hold one example (leading axis 1), got shape {jnp.shape(sample_x)}")
    sample_x = jax.ShapeDtypeStruct(jnp.shape(sample_x), jnp.asarray(sample_x).dtype)
    params = jax.eval_shape(model.init, jax.random.key(0), sample_x)  # shapes only: nothing is computed
    binding = bind(policy, params)
    closed, paths, _ = _traced(lambda p, x: model.apply(p, x), params, sample_x)
    counter = _Interpreter(Binding({}, {}), {}, None, False)  # counts MACs while tracing; quantizes nothing
    origins = [*paths, None]
    jax.eval_shape(lambda leaves, x: counter.run(closed.jaxpr, closed.consts, [*leaves, x], origins),
                   jax.tree_util.tree_leaves(params), sample_x)

    def bits(q) -> int:  # a traced width (a bit family's policy) is refused: BOPs need the count
        return FLOAT_BITS if q is None else static_bits(q, "model_cost")

    layers = []
    for layer, macs in counter.macs.items():
        w = bits(binding.weight(f"{layer}/kernel" if layer else "kernel"))
        a = bits(binding.activation(layer))
        layers.append(LayerCost(layer, macs, w, a, macs * w * a))
    sizes = {path: math.prod(jnp.shape(leaf)) for path, leaf in param_paths(params).items()}
    model_bytes = sum(n * bits(binding.weight(path)) / 8 for path, n in sizes.items())
    return ModelCost(tuple(layers), sum(c.macs for c in layers), sum(c.bops for c in layers), model_bytes,
                     FLOAT_BITS // 8 * sum(sizes.values()))
