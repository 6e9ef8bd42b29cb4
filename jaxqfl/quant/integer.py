"""Integer inference: Dense and Conv layers as int8 x int8 -> int32, requantized in fixed point.

``export_integer(params, policy, graph)`` turns float parameters and a *calibrated*
policy (per-tensor static input quantizers, ``jaxqfl.quant.calibrated_policy``;
symmetric uniform weight quantizers of at most 8 bits) into an ``IntegerModel``;
``integer_apply(model, x)`` runs it. For a layer with input grid ``(s_x, z_x)``
(``b_x`` bits), weight codes ``q_w`` with per-channel scales ``s_w``, bias ``b`` and,
if another linear layer follows, that layer's input grid ``(s_y, z_y)``:

    x8   = q_x - o                   int8, o = 128 for 8-bit inputs, 0 below
    acc  = x8 (*) q_w + (o - z_x) S   int32 (``preferred_element_type=jnp.int32``);
                                      S = x (*) q_w with x = 1 inside the input (Dense:
                                      column sums; Conv: per position, zero padding)
         = sum (q_x - z_x) q_w
    t    = acc + rn(b / (s_x s_w))    int32 bias on the accumulator's grid
    q_y  = clip(rn(M t) + z_y, 0, 2^b_y - 1),   M = s_x s_w / s_y = m0 2^-n  (fixed point,
                                      ``jaxqfl.quant.fixed_point``)

ReLU, max-pooling and flattening act on the codes ``q_y`` directly: quantization is
monotone and maps 0 to ``z_y``, so ``relu`` is ``max(q_y, z_y)`` and pooling commutes.
The last layer returns float logits ``s_x s_w t``. The first layer's input is
quantized from float with its static quantizer, exactly as fake quantization does.

Against the fake-quant model (float ``fq_a(x) @ fq_w(W) + b``) the only differences
are the bias rounded to the accumulator grid (at most half a unit of ``s_x s_w``),
the 31-bit multiplier and float round-off of the fake-quant sums: an intermediate
code can flip by one where a value sits within ~1e-3 of a rounding boundary. Tests
check identical argmax on every test row and logits within one quantization step.

Storage: weight codes of at most 4 bits are packed two per byte (``pack_nibbles``);
``int_bytes`` is the bytes of every array the model holds, counted on the held
arrays themselves (codes, int32 biases, int32 multipliers and shifts, int32 column
sums, float32 output scales), plus 8 bytes per static input grid (a float32 scale
and an int32 zero point).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxqfl.quant import graph as g
from jaxqfl.quant.fixed_point import mul_shift, quantize_multiplier
from jaxqfl.quant.policy import bind
from jaxqfl.quant.qtensor import static_bits
from jaxqfl.quant.static import static_grid


def pack_nibbles(codes) -> np.ndarray:
    """Signed codes in ``[-8, 7]`` -> uint8, two per byte (element ``2i`` in the low nibble)."""
    flat = np.asarray(codes, np.int16).reshape(-1)
    if flat.size and (flat.min() < -8 or flat.max() > 7):
        raise ValueError(f"pack_nibbles: codes must lie in [-8, 7], got [{flat.min()}, {flat.max()}]")
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int16)])
    u = (flat + 8).astype(np.uint8)
    return (u[0::2] | (u[1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed, shape) -> jax.Array:
    """Inverse of ``pack_nibbles``: int8 codes of ``shape``."""
    p = jnp.asarray(packed, jnp.uint8)
    lo = (p & jnp.uint8(15)).astype(jnp.int8) - jnp.int8(8)
    hi = jnp.right_shift(p, jnp.uint8(4)).astype(jnp.int8) - jnp.int8(8)
    n = int(np.prod(shape))
    return jnp.stack([lo, hi], axis=-1).reshape(-1)[:n].reshape(shape)


class LayerMeta(NamedTuple):
    """Static facts of one layer (hashable: the jitted program is specialised on them)."""

    path: str
    bits: int  # weight bits
    kernel_shape: tuple
    in_scale: float
    in_zero: int
    in_bits: int
    out_zero: int | None  # next layer's input zero point; None for the last layer
    out_bits: int | None


class IntegerModel(NamedTuple):
    graph: tuple
    meta: tuple  # LayerMeta per linear layer, in graph order
    arrays: dict  # path -> {'codes', 'bias', 'colsum'?, 'multiplier', 'shift' | 'out_scale'}
    float_bytes: int
    int_bytes: int


def _weight_codes(q, kernel, path):
    if q is not None:
        static_bits(q, f"integer export of layer {path!r}")
    if not (q is not None and q.name.startswith("int") and "/sym/" in q.name and q.bits <= 8):
        raise ValueError(f"integer export: layer {path!r} needs a symmetric uniform weight quantizer of at most 8 bits, "
                         f"got {None if q is None else q.name!r}")
    qt = q.quantize(jnp.asarray(kernel, jnp.float32), None)
    c = kernel.shape[-1]
    s = np.broadcast_to(np.asarray(qt.scale, np.float64).reshape(-1) if np.size(qt.scale) == c
                        else np.asarray(qt.scale, np.float64).reshape(()), (c,))
    return np.asarray(qt.codes, np.int8), s


def _copy(tree):
    return {k: _copy(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def _input_grids(binding, layers) -> dict:
    grids = {}
    for op in layers:
        qa = binding.activation(op.path)
        if qa is None:
            raise ValueError(f"integer export: layer {op.path!r} has no input quantizer; calibrate the policy first "
                             "(jaxqfl.quant.calibrated_policy)")
        static_bits(qa, f"integer export of layer {op.path!r}")
        s, z = static_grid(qa)
        if qa.bits > 8:
            raise ValueError(f"integer export: layer {op.path!r} input quantizer has {qa.bits} bits; at most 8")
        grids[op.path] = (s, z, qa.bits)
    return grids


def bias_to_grid(params, policy, graph) -> dict:
    """Params whose biases are rounded to the accumulator grid, ``b' = s_x s_w rn(b / (s_x s_w))``:
    the int32 biases of integer inference, as floats. The fake-quant model with these
    biases is the model ``export_integer`` implements (the int32 bias quantization of
    Jacob et al. 2018); apply it before comparing the two."""
    binding = bind(policy, params)
    layers = g.linear_layers(graph)
    grids = _input_grids(binding, layers)
    out = _copy(params)
    for op in layers:
        p = g.node(out, op.path)
        if "bias" not in p:
            continue
        _, s_w = _weight_codes(binding.weight(f"{op.path}/kernel"), p["kernel"], op.path)
        acc_scale = grids[op.path][0] * s_w
        b = np.asarray(p["bias"], np.float64)
        p["bias"] = jnp.asarray((np.floor(b / acc_scale + 0.5) * acc_scale).astype(np.float32))
    return out


def export_integer(params, policy, graph) -> IntegerModel:
    """Integer model of ``params`` under a calibrated ``policy`` (module docstring)."""
    binding = bind(policy, params)
    layers = g.linear_layers(graph)
    grids = _input_grids(binding, layers)
    metas, arrays, int_bytes = [], {}, 0
    for i, op in enumerate(layers):
        p = g.node(params, op.path)
        codes, s_w = _weight_codes(binding.weight(f"{op.path}/kernel"), p["kernel"], op.path)
        bits = binding.weight(f"{op.path}/kernel").bits
        s_x, z_x, b_x = grids[op.path]
        acc_scale = s_x * s_w  # float64 [C]
        bias = np.asarray(p.get("bias", np.zeros(codes.shape[-1])), np.float64)
        a = {"codes": pack_nibbles(codes) if bits <= 4 else codes,
             "bias": np.clip(np.floor(bias / acc_scale + 0.5), -(2**31) + 1, 2**31 - 1).astype(np.int32)}
        if isinstance(op, g.Dense):
            a["colsum"] = codes.astype(np.int32).sum(0, dtype=np.int32)  # NumPy's default sum would be int64
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if nxt is not None:
            s_y, z_y, b_y = grids[nxt.path]
            a["multiplier"], a["shift"] = quantize_multiplier(acc_scale / s_y)
            out = (z_y, b_y)
        else:
            a["out_scale"] = acc_scale.astype(np.float32)
            out = (None, None)
        metas.append(LayerMeta(op.path, bits, tuple(codes.shape), s_x, z_x, b_x, *out))
        arrays[op.path] = {k: jnp.asarray(v) for k, v in a.items()}
        int_bytes += sum(int(v.nbytes) for v in arrays[op.path].values()) + 8  # what is held; 8: the input grid
    float_bytes = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(params))
    return IntegerModel(tuple(graph), tuple(metas), arrays, float_bytes, int_bytes)


def _int_linear(op, x8, w8):
    if isinstance(op, g.Dense):
        return lax.dot_general(x8, w8, (((x8.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
    return lax.conv_general_dilated(x8, w8, tuple(op.strides), op.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    preferred_element_type=jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _run(graph, meta, arrays, x):
    metas = {m.path: m for m in meta}
    first = meta[0]
    x = jnp.asarray(x, jnp.float32)
    q = jnp.clip(jnp.floor(x / jnp.float32(first.in_scale) + 0.5) + first.in_zero, 0, 2**first.in_bits - 1)
    q = q.astype(jnp.int32)
    out = None
    for op in graph:
        if isinstance(op, g.LINEAR):
            m = metas[op.path]
            a = arrays[op.path]
            w8 = unpack_nibbles(a["codes"], m.kernel_shape) if m.bits <= 4 else a["codes"]
            if isinstance(op, g.Conv) and q.ndim == 3:
                q = q[..., None]
            o = 128 if m.in_bits == 8 else 0
            x8 = (q - o).astype(jnp.int8)
            acc = _int_linear(op, x8, w8)
            if isinstance(op, g.Dense):
                ones_term = a["colsum"]
            else:
                ones_term = _int_linear(op, jnp.ones((1,) + x8.shape[1:], jnp.int8), w8)
            t = acc + (o - m.in_zero) * ones_term + a["bias"]
            if m.out_zero is None:
                out = t.astype(jnp.float32) * a["out_scale"]
                q = None
            else:
                q = jnp.clip(mul_shift(t, a["multiplier"], a["shift"]) + m.out_zero, 0, 2**m.out_bits - 1)
                zero = m.out_zero
        elif isinstance(op, g.Relu):
            if q is None:
                out = jnp.maximum(out, 0)
            else:
                q = jnp.maximum(q, zero)
        elif isinstance(op, g.MaxPool):
            q = g.max_pool(q, op)
        elif isinstance(op, g.Flatten):
            q = q.reshape((q.shape[0], -1))
        else:
            raise TypeError(f"unknown graph op {op!r}")
    return out


def integer_apply(model: IntegerModel, x) -> jax.Array:
    """Logits of the integer model (module docstring); jitted, specialised on the model's static facts."""
    return _run(model.graph, model.meta, model.arrays, x)


