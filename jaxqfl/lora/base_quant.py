"""A frozen base stored in low precision and dequantized inside the forward (QLoRA, Dettmers et al. 2023).

``quantize_base(params, fmt)`` stores every floating leaf of two or more
dimensions (kernels, embeddings) in ``fmt``; vectors (biases, norm scales) stay
float32. ``dequantize_base(frozen)`` gives the float32 params back, traceable, so
the engine dequantizes on the fly inside each program (the stored form is what
lives on the device).

Block-wise absmax quantization (QLoRA sec. 3): a leaf is flattened, zero-padded
to a multiple of ``block`` (64) and cut into blocks; block j has the scale
``c_j = max |w|`` over the block (1 for an all-zero block) and each value the
code of ``w / c_j``:

    int8:  q = round(127 w / c)     in [-127, 127],  w ~ c q / 127
    int4:  q = round(7 w / c)       in [-7, 7],      w ~ c q / 7       (stored q + 8: a nibble)
    nf4:   q = argmin_k |w / c - T_k|,  T the 16 NormalFloat4 values, w ~ c T_q   (a nibble)

Two nibbles share a byte (the first in the low four bits). Double quantization
(QLoRA's, ``double_quant=True``): the float32 scales of a leaf, minus their mean
m, are themselves cut into blocks of ``SCALE_BLOCK`` (256) and stored as int8
with one float32 absmax ``c2`` per block: ``c ~ c2 q2 / 127 + m``.

Storage per quantized parameter: int8 8 + 32/64 bits (8.5; 8 + 8/64 + 32/(64 x 256)
~ 8.127 with double quantization), int4 and nf4 4 + 32/64 (4.5; ~4.127 with
double quantization, QLoRA's figure), bf16 16, none 32.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxqfl.quant.nonuniform import nf4_table

FORMATS = ("none", "bf16", "int8", "int4", "nf4")
BLOCK = 64
SCALE_BLOCK = 256
_LEVELS = {"int8": 127, "int4": 7}


@jax.tree_util.register_pytree_node_class
class PackedLeaf:
    """A leaf in block-quantized form: arrays as children, its format and shape as static aux data.

    ``codes`` the weights' codes; ``scales`` the float32 block scales, or with double
    quantization their int8 codes, with ``scale_absmax`` [blocks of 256] and ``scale_mean`` ().
    """

    def __init__(self, codes, scales, scale_absmax, scale_mean, *, fmt: str, shape: tuple, block: int):
        self.codes, self.scales, self.scale_absmax, self.scale_mean = codes, scales, scale_absmax, scale_mean
        self.fmt, self.shape, self.block = fmt, tuple(shape), block

    def tree_flatten(self):
        return (self.codes, self.scales, self.scale_absmax, self.scale_mean), (self.fmt, self.shape, self.block)

    @classmethod
    def tree_unflatten(cls, aux, children):
        fmt, shape, block = aux
        return cls(*children, fmt=fmt, shape=shape, block=block)

    @property
    def double_quant(self) -> bool:
        return self.scale_absmax is not None


def _check(fmt, block):
    if fmt not in FORMATS:
        raise ValueError(f"base_quant: format must be one of {FORMATS}, got {fmt!r}")
    if not isinstance(block, int) or isinstance(block, bool) or block < 2 or block % 2:
        raise ValueError(f"base_quant: block must be a positive even integer, got {block!r}")


def _blocks(flat: jax.Array, size: int) -> jax.Array:
    n = math.ceil(flat.size / size) * size
    return jnp.pad(flat, (0, n - flat.size)).reshape(-1, size)


def _pack_nibbles(q):  # [n] uint8 in 0..15, n even -> [n / 2] uint8
    q = q.reshape(-1, 2)
    return (q[:, 0] | (q[:, 1] << 4)).astype(jnp.uint8)


def _unpack_nibbles(packed):
    return jnp.stack([packed & 0xF, packed >> 4], axis=-1).reshape(-1)


def _quantize_leaf(w, fmt: str, block: int, double_quant: bool) -> PackedLeaf:
    blocks = _blocks(jnp.asarray(w, jnp.float32).reshape(-1), block)
    absmax = jnp.max(jnp.abs(blocks), axis=1)
    scales = jnp.where(absmax > 0, absmax, 1.0)
    unit = blocks / scales[:, None]
    if fmt == "nf4":
        table = jnp.asarray(nf4_table())
        codes = _pack_nibbles(jnp.argmin(jnp.abs(unit[..., None] - table), axis=-1).astype(jnp.uint8).reshape(-1))
    else:
        levels = _LEVELS[fmt]
        q = jnp.clip(jnp.round(unit * levels), -levels, levels).astype(jnp.int32)
        codes = q.astype(jnp.int8).reshape(-1) if fmt == "int8" else _pack_nibbles((q + 8).astype(jnp.uint8).reshape(-1))
    if not double_quant:
        return PackedLeaf(codes, scales, None, None, fmt=fmt, shape=np.shape(w), block=block)
    mean = jnp.mean(scales)
    centred = _blocks(scales - mean, SCALE_BLOCK)
    c2 = jnp.max(jnp.abs(centred), axis=1)
    c2 = jnp.where(c2 > 0, c2, 1.0)
    q2 = jnp.clip(jnp.round(centred / c2[:, None] * 127), -127, 127).astype(jnp.int8).reshape(-1)[:scales.size]
    return PackedLeaf(codes, q2, c2, mean, fmt=fmt, shape=np.shape(w), block=block)


def _block_scales(leaf: PackedLeaf) -> jax.Array:
    if not leaf.double_quant:
        return leaf.scales
    n = leaf.scales.shape[0]
    q2 = _blocks(leaf.scales.astype(jnp.float32), SCALE_BLOCK)
    return (q2 * (leaf.scale_absmax[:, None] / 127)).reshape(-1)[:n] + leaf.scale_mean


def _dequantize_leaf(leaf: PackedLeaf) -> jax.Array:
    scales = _block_scales(leaf)
    if leaf.fmt == "nf4":
        unit = jnp.asarray(nf4_table())[_unpack_nibbles(leaf.codes).astype(jnp.int32)]
    elif leaf.fmt == "int8":
        unit = leaf.codes.astype(jnp.float32) / 127
    else:
        unit = (_unpack_nibbles(leaf.codes).astype(jnp.float32) - 8) / 7
    values = (unit.reshape(-1, leaf.block) * scales[:, None]).reshape(-1)
    return values[:math.prod(leaf.shape)].reshape(leaf.shape)


def _is_packed(x) -> bool:
    return isinstance(x, PackedLeaf)


def quantize_base(params, fmt: str, *, block: int = BLOCK, double_quant: bool = True):
    """``params`` (nested dict of arrays) stored in ``fmt`` (module docstring): float leaves or ``PackedLeaf``s."""
    _check(fmt, block)
    if not isinstance(params, dict):
        raise ValueError(f"base_quant: params must be a nested dict of arrays, got {type(params).__name__}")

    def one(w):
        w = jnp.asarray(w)
        if not jnp.issubdtype(w.dtype, jnp.floating) or fmt == "none":
            return w
        if fmt == "bf16":
            return w.astype(jnp.bfloat16)
        if w.ndim < 2:
            return w.astype(jnp.float32)
        return _quantize_leaf(w, fmt, block, double_quant)

    return jax.tree.map(one, params)


def dequantize_base(frozen):
    """The float32 params of a ``quantize_base`` result (traceable: runs inside jit, vmap and grad)."""

    def one(x):
        if _is_packed(x):
            return _dequantize_leaf(x)
        return x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(one, frozen, is_leaf=_is_packed)


def base_bytes(frozen) -> int:
    """Bytes the stored base takes (codes, scales, double-quantization constants and kept leaves)."""
    return int(sum(np.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(frozen)))


def num_base_params(frozen) -> int:
    """Parameters of the base (of the original params, whatever their storage)."""
    leaves = jax.tree.leaves(frozen, is_leaf=_is_packed)
    return int(sum(math.prod(x.shape) for x in leaves))


_PACKED = "__packed__"  # marks a PackedLeaf in the plain tree written to disk


def to_tree(frozen) -> dict:
    """``frozen`` as nested dicts of arrays and plain values (msgpack-ready): each ``PackedLeaf`` a marked dict."""

    def one(x):
        if not _is_packed(x):
            return np.asarray(x)
        out = {_PACKED: x.fmt, "shape": list(x.shape), "block": x.block, "codes": np.asarray(x.codes),
               "scales": np.asarray(x.scales)}
        if x.double_quant:
            out.update(scale_absmax=np.asarray(x.scale_absmax), scale_mean=np.asarray(x.scale_mean))
        return out

    return jax.tree.map(one, frozen, is_leaf=_is_packed)


def from_tree(tree):
    """The inverse of :func:`to_tree` (a stored base read back, ready for :func:`dequantize_base`)."""
    if isinstance(tree, dict) and _PACKED in tree:
        fmt = str(tree[_PACKED])
        if fmt not in FORMATS:
            raise ValueError(f"base_quant: a stored leaf has format {fmt!r}; expected one of {FORMATS}")
        double = "scale_absmax" in tree
        return PackedLeaf(jnp.asarray(tree["codes"]), jnp.asarray(tree["scales"]),
                          jnp.asarray(tree["scale_absmax"]) if double else None,
                          jnp.asarray(tree["scale_mean"]) if double else None,
                          fmt=fmt, shape=tuple(int(d) for d in tree["shape"]), block=int(tree["block"]))
    if isinstance(tree, dict):
        return {k: from_tree(v) for k, v in tree.items()}
    return jnp.asarray(tree)


def save(path, frozen) -> None:
    """Write a stored base (e.g. a merged LoRA model re-quantized for serving) as Flax msgpack, atomically."""
    from jaxqfl.models.serialization import save_params

    save_params(path, to_tree(frozen))


def load(path):
    """Read what :func:`save` wrote; ``dequantize_base(load(path))`` gives the float params."""
    from jaxqfl.models.serialization import load_params

    return from_tree(load_params(path))
