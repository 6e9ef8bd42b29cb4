"""A model's layer sequence, as plain data: what integer inference and equalization walk.

Post-training steps that look across layers (cross-layer equalization,
integer inference) need the order of the network's operations, not just its
parameters. A graph is a tuple of ops applied in order:

    Dense(path)                          y = x @ params[path]['kernel'] + bias
    Conv(path, strides, padding)         channels-last conv (NHWC, HWIO), + bias
    Relu()                               max(x, 0)
    MaxPool(window, strides)             over the spatial axes, 'VALID'
    Flatten()                            [B, ...] -> [B, prod(...)]

``jaxqfl.models.mlp_graph`` / ``cnn_graph`` describe the zoo models;
``float_apply(graph, params, x)`` runs a graph in float32 and equals the Flax
model (tested), so a graph that drifts from its model is caught.
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax


class Dense(NamedTuple):
    path: str


class Conv(NamedTuple):
    path: str
    strides: tuple = (1, 1)
    padding: str = "SAME"


class Relu(NamedTuple):
    pass


class MaxPool(NamedTuple):
    window: tuple = (2, 2)
    strides: tuple = (2, 2)


class Flatten(NamedTuple):
    pass


LINEAR = (Dense, Conv)


def linear_layers(graph) -> list:
    """The Dense/Conv ops of ``graph``, in order."""
    return [op for op in graph if isinstance(op, LINEAR)]


def layer_op(graph, path: str):
    for op in linear_layers(graph):
        if op.path == path:
            return op
    raise ValueError(f"layer {path!r} is not in the graph; its layers are {[op.path for op in linear_layers(graph)]}")


def node(params, path: str) -> dict:
    n = params
    for part in path.split("/"):
        n = n[part]
    return n


def linear(op, x, kernel, bias=None):
    """The layer's float output for input ``x`` (bias added when given)."""
    if isinstance(op, Dense):
        y = lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    else:
        if x.ndim == 3:
            x = x[..., None]
        y = lax.conv_general_dilated(x, kernel, tuple(op.strides), op.padding,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y if bias is None else y + bias


def max_pool(x, op: MaxPool):
    w = (1,) + tuple(op.window) + (1,)
    s = (1,) + tuple(op.strides) + (1,)
    init = jnp.array(-jnp.inf, x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
    return lax.reduce_window(x, init, lax.max, w, s, "VALID")


def float_apply(graph, params, x):
    """Run the graph in float32 (reference; equals the Flax model)."""
    x = jnp.asarray(x, jnp.float32)
    for op in graph:
        if isinstance(op, LINEAR):
            p = node(params, op.path)
            x = linear(op, x, p["kernel"], p.get("bias"))
        elif isinstance(op, Relu):
            x = jnp.maximum(x, 0)
        elif isinstance(op, MaxPool):
            x = max_pool(x, op)
        elif isinstance(op, Flatten):
            x = x.reshape((x.shape[0], -1))
        else:
            raise TypeError(f"unknown graph op {op!r}")
    return x
