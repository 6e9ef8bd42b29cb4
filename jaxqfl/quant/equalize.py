"""Cross-layer equalization for ReLU networks (Nagel et al. 2019, "Data-free quantization
through weight equalization and bias correction", sec. 4.1).

For consecutive layers ``y = W2 relu(W1 x + b1) + b2`` and any positive per-channel
scales ``s`` (one per output channel of layer 1), ``relu(v / s) = relu(v) / s`` gives

    W1[..., i] / s_i,   b1[i] / s_i,   W2[rows of channel i] * s_i

the same function. With ``r1_i`` the range (``max |.|``) of layer 1's output channel i and
``r2_i`` that of layer 2's input channel i, the choice ``s_i = sqrt(r1_i / r2_i)`` makes
both ranges ``sqrt(r1_i r2_i)``: per-channel ranges become even, so a per-tensor (or
coarser) weight grid wastes less of its range. Max-pooling commutes with the scaling
and a flatten maps channel ``i`` of an NHWC map to the Dense rows ``k`` with
``k % C == i``, so pairs may be separated by ReLU, MaxPool and Flatten ops.
Equalizing every adjacent pair, repeated ``iterations`` times, converges (the paper).
"""
from __future__ import annotations

import jax.numpy as jnp

from jaxqfl.quant import graph as g


def _copy(tree):
    return {k: _copy(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def layer_pairs(graph) -> list:
    """Adjacent linear layers with only ReLU / MaxPool / Flatten between them (and at least one ReLU)."""
    pairs, prev, relu = [], None, False
    for op in graph:
        if isinstance(op, g.LINEAR):
            if prev is not None and relu:
                pairs.append((prev, op))
            prev, relu = op, False
        elif isinstance(op, g.Relu):
            relu = True
        elif not isinstance(op, (g.MaxPool, g.Flatten)):
            prev = None
    return pairs


def _input_channel_rows(kernel2, c: int):
    """Layer 2's kernel as ``[C, rest]``: row i holds every weight reading channel i."""
    if kernel2.ndim == 2:  # Dense: input rows k, channel k % C (NHWC flatten)
        k = kernel2.shape[0]
        if k % c:
            raise ValueError(f"equalize: a Dense input of {k} rows does not split into {c} channels")
        return kernel2.reshape(k // c, c, -1).transpose(1, 0, 2).reshape(c, -1)
    return jnp.moveaxis(kernel2, -2, 0).reshape(c, -1)  # Conv: [kh, kw, C, out]


def _scale_rows(kernel2, s):
    c = s.shape[0]
    if kernel2.ndim == 2:
        k = kernel2.shape[0]
        return (kernel2.reshape(k // c, c, -1) * s[None, :, None]).reshape(kernel2.shape)
    return kernel2 * s[:, None]


def equalize(params, graph, *, iterations: int = 20) -> dict:
    """Cross-layer equalized copy of ``params`` (module docstring). Float function unchanged."""
    out = _copy(params)
    pairs = layer_pairs(graph)
    if not pairs:
        raise ValueError("equalize: the graph has no pair of linear layers separated by a ReLU")
    for _ in range(iterations):
        for op1, op2 in pairs:
            p1, p2 = g.node(out, op1.path), g.node(out, op2.path)
            w1, w2 = p1["kernel"], p2["kernel"]
            c = w1.shape[-1]
            r1 = jnp.max(jnp.abs(w1.reshape(-1, c)), axis=0)
            r2 = jnp.max(jnp.abs(_input_channel_rows(w2, c)), axis=1)
            ok = (r1 > 0) & (r2 > 0)
            s = jnp.where(ok, jnp.sqrt(r1 / jnp.where(ok, r2, 1.0)), 1.0)
            p1["kernel"] = w1 / s
            if "bias" in p1:
                p1["bias"] = p1["bias"] / s
            p2["kernel"] = _scale_rows(w2, s)
    return out
