"""Export: trained float parameters + policy -> integer (or narrow-float) tensors.

``export(params, policy)`` replaces every parameter the policy quantizes by the
``QTensor`` its weight quantizer produces with round-to-nearest (``key=None``),
drops the learned quantizers' own weight-step parameters (their value now lives
in ``QTensor.scale``), and keeps everything else (biases, activation-quantizer
parameters such as PACT's ``alpha``) as is. The QAT layers of
``jaxqfl.models`` accept these ``QTensor`` leaves in place of float kernels and
dequantize them instead of fake-quantizing, so

    model.apply(export(params, policy).params, x) == model.apply(params, x)

holds bit for bit: fake quantization is computed as ``dequantize(quantize(w))``
with the very same functions.

Sizes: ``float_bytes`` is what the parameters take as they are;
``quantized_bytes`` counts each QTensor's codes at ``bits`` per element, packed
(``ceil(n * bits / 8)``), plus its scales, zero points and codebook, plus every
parameter left in float. ``stored_bytes`` is what the arrays actually occupy in
memory (codes in ``int8``/``uint8`` containers, unpacked).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxqfl.quant.policy import STATE_MARK, bind, param_paths
from jaxqfl.quant.qtensor import LearnedQuantizer, QTensor, static_bits


class Exported(NamedTuple):
    params: Any  # the params pytree with QTensor leaves where quantized
    float_bytes: int
    quantized_bytes: int
    stored_bytes: int
    quantizers: dict  # path -> quantizer name


def _nbytes(x) -> int:
    return int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize


def _qtensor_bytes(q: QTensor, bits: int) -> tuple[int, int]:
    extra = sum(_nbytes(a) for a in (q.scale, q.zero_point, q.codebook) if a is not None)
    n = int(np.prod(q.codes.shape))
    return math.ceil(n * bits / 8) + extra, _nbytes(q.codes) + extra


def _copy_dicts(tree):
    return {k: _copy_dicts(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def export(params, policy) -> Exported:
    """Quantize ``params`` (a nested dict, e.g. Flax params) under ``policy`` (module docstring)."""
    binding = bind(policy, params)
    out = _copy_dicts(params)
    float_bytes = sum(_nbytes(x) for x in jax.tree_util.tree_leaves(params))
    names = {}
    for path, q in binding.weights.items():
        parts = path.split("/")
        node = out
        for n in parts[:-1]:
            node = node[n]
        w = node[parts[-1]]
        if isinstance(w, QTensor):  # already exported
            continue
        if isinstance(q, LearnedQuantizer):
            state_name = f"{parts[-1]}{STATE_MARK}{q.param_name}"
            qt = q.quantize(w, node.pop(state_name), None)
        else:
            qt = q.quantize(w, None)
        node[parts[-1]] = qt
        names[path] = q.name

    quantized_bytes = stored_bytes = 0
    for path, leaf in param_paths(out).items():
        if isinstance(leaf, QTensor):
            packed, stored = _qtensor_bytes(leaf, static_bits(binding.weights[path], f"export of {path!r}"))
            quantized_bytes += packed
            stored_bytes += stored
        else:
            quantized_bytes += _nbytes(leaf)
            stored_bytes += _nbytes(leaf)
    # quantizer state that stayed (e.g. PACT alpha) is counted too
    state = [
        leaf
        for kp, leaf in jax.tree_util.tree_flatten_with_path(out, is_leaf=lambda x: isinstance(x, QTensor))[0]
        if any(STATE_MARK in str(getattr(k, "key", k)) for k in kp)
    ]
    extra = sum(_nbytes(x) for x in state)
    return Exported(out, float_bytes, quantized_bytes + extra, stored_bytes + extra, names)
