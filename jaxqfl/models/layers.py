"""Quantization-aware (QAT) Flax layers: ``QDense`` and ``QConv``.

Each layer looks itself up in a ``jaxqfl.quant.Binding`` (a policy resolved
against the model's parameters) by its own path, and

* fake-quantizes its input with the binding's activation quantizer for the
  layer (``x -> fake_quant(x)``),
* fake-quantizes each of its parameters (``kernel``, ``bias``) that has a weight
  quantizer,
* creates the learned quantizers' parameters beside the weights, named
  ``'<param>:<name>'`` (``'kernel:scale'``, ``'input:scale'``, ``'input:alpha'``),
  initialised by ``LearnedQuantizer.init`` from the freshly initialised kernel /
  the sample input,
* draws a fresh key from the ``'quant'`` RNG stream for every stochastic
  quantization (deterministic quantizers draw none) (``make_rng('quant')``: Flax folds in the layer path and a call
  counter, so every layer and tensor gets its own key); without a ``'quant'``
  stream (``apply(..., key=None)``) it rounds to nearest,
* accepts exported ``QTensor`` parameters (``jaxqfl.quant.export``) in place of
  float ones and dequantizes them instead of fake-quantizing: inference from the
  integer form computes exactly what fake-quant inference computes.

Parameter names, shapes and initialisers are those of ``flax.linen.Dense`` /
``flax.linen.Conv`` (``lecun_normal`` kernels, zero biases), so a float model and
its QAT twin share parameters and initialise identically from the same key.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from jaxqfl.quant.policy import STATE_MARK, Binding
from jaxqfl.quant.qtensor import LearnedQuantizer, QTensor

QUANT_RNG = "quant"


def _key(module: nn.Module, q):
    """A fresh key for a stochastic quantizer; ``None`` for deterministic ones or without a stream."""
    return module.make_rng(QUANT_RNG) if q.needs_key and module.has_rng(QUANT_RNG) else None


def _layer_path(module: nn.Module) -> str:
    return "/".join(str(p) for p in module.scope.path)


def quantize_param(module: nn.Module, binding: Binding, name: str, value):
    """The parameter as the forward pass should see it (see the module docstring)."""
    layer = _layer_path(module)
    path = f"{layer}/{name}" if layer else name
    q = binding.weight(path)
    if isinstance(value, QTensor):
        if q is None:
            raise ValueError(f"parameter {path!r} is an exported QTensor but the policy has no quantizer for it")
        return q.dequantize(value)
    return _fake_quant(module, q, value, name)


def quantize_input(module: nn.Module, binding: Binding, x):
    """The layer input after the binding's activation quantizer (identity if none)."""
    q = binding.activation(_layer_path(module))
    return _fake_quant(module, q, x, "input")


def _fake_quant(module: nn.Module, q, value, owner: str):
    """``q``'s fake quantization of ``value`` (identity if ``q`` is None); a learned
    quantizer's parameter lives in ``module`` as ``{owner}{STATE_MARK}{param_name}``."""
    if q is None:
        return value
    if isinstance(q, LearnedQuantizer):
        p = module.param(f"{owner}{STATE_MARK}{q.param_name}", lambda _rng: q.init(value))
        return q.fake_quant(value, p, _key(module, q))
    return q.fake_quant(value, _key(module, q))


class QDense(nn.Module):
    """``y = fq_a(x) @ fq_w(kernel) + fq_b(bias)``; kernel ``[in, features]``."""

    features: int
    binding: Binding
    use_bias: bool = True
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (jnp.shape(x)[-1], self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32) if self.use_bias else None
        x = quantize_input(self, self.binding, x)
        kernel = quantize_param(self, self.binding, "kernel", kernel)
        y = lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))  # [..., features]
        if bias is not None:
            y = y + quantize_param(self, self.binding, "bias", bias)
        return y


_CONV_SPECS = {
    1: ("NWC", "WIO", "NWC"),
    2: ("NHWC", "HWIO", "NHWC"),
    3: ("NDHWC", "DHWIO", "NDHWC"),
}


class QConv(nn.Module):
    """Channels-last convolution ``y = conv(fq_a(x), fq_w(kernel)) + fq_b(bias)``;
    kernel ``[*kernel_size, in, features]``; input ``[B, *spatial, in]``."""

    features: int
    kernel_size: Sequence[int]
    binding: Binding
    strides: int | Sequence[int] = 1
    padding: Any = "SAME"
    use_bias: bool = True
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x):
        ks = tuple(self.kernel_size)
        n = len(ks)
        if n not in _CONV_SPECS or x.ndim != n + 2:
            raise ValueError(f"QConv: kernel_size={ks} needs a [B, *spatial({n}), C] input, got shape {x.shape}")
        kernel = self.param("kernel", self.kernel_init, ks + (jnp.shape(x)[-1], self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32) if self.use_bias else None
        x = quantize_input(self, self.binding, x)
        kernel = quantize_param(self, self.binding, "kernel", kernel)
        strides = (self.strides,) * n if isinstance(self.strides, int) else tuple(self.strides)
        padding = self.padding if isinstance(self.padding, str) else tuple(tuple(p) for p in self.padding)
        y = lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_CONV_SPECS[n])
        if bias is not None:
            y = y + quantize_param(self, self.binding, "bias", bias)
        return y


class QATLayers(NamedTuple):
    """The layer factory a zoo module uses when a policy is set (``layers`` field)."""

    binding: Binding

    def dense(self, features: int, *, name: str | None = None, **kwargs) -> QDense:
        return QDense(features, binding=self.binding, name=name, **kwargs)

    def conv(self, features: int, kernel_size, *, padding="SAME", name: str | None = None, **kwargs) -> QConv:
        return QConv(features, tuple(kernel_size), binding=self.binding, padding=padding, name=name, **kwargs)
