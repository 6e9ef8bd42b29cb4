"""Saving and loading parameters and integer models (flax.serialization msgpack).

``save_params(path, params)`` writes a params pytree (nested dicts of arrays, as
``Model.init`` returns) as msgpack; ``load_params(path)`` reads it back as nested
dicts of NumPy arrays, loadable into the model that wrote it.

``save_integer_model(path, model)`` / ``load_integer_model(path)`` do the same for a
``jaxqfl.quant.IntegerModel``: its arrays (packed codes, int32 biases, fixed-point
multipliers) plus its graph and per-layer static facts as plain values.
"""
from __future__ import annotations

import pathlib

import numpy as np
from flax import serialization

from jaxqfl.quant import graph as g
from jaxqfl.quant.integer import IntegerModel, LayerMeta

_OPS = {"Dense": g.Dense, "Conv": g.Conv, "Relu": g.Relu, "MaxPool": g.MaxPool, "Flatten": g.Flatten}


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {str(k): _to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, (str, list)):  # plain values beside the arrays (a stored base's formats and shapes)
        return tree
    return np.asarray(tree)


def save_params(path, params) -> None:
    """Write ``params`` (nested dicts of arrays) to ``path`` as msgpack (atomically: a temporary file renamed)."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(serialization.msgpack_serialize(_to_numpy(params)))
    tmp.replace(path)


def load_params(path) -> dict:
    """Read params written by ``save_params`` (nested dicts of NumPy arrays)."""
    return serialization.msgpack_restore(pathlib.Path(path).read_bytes())


def save_integer_model(path, model: IntegerModel) -> None:
    """Write an ``IntegerModel`` (module docstring)."""
    blob = {
        "graph": {str(i): {"op": type(op).__name__, **{k: (list(v) if isinstance(v, tuple) else v)
                                                         for k, v in op._asdict().items()}}
                  for i, op in enumerate(model.graph)},
        "meta": {str(i): {k: (list(v) if isinstance(v, tuple) else (-1 if v is None else v))
                          for k, v in m._asdict().items()} for i, m in enumerate(model.meta)},
        "arrays": _to_numpy(model.arrays),
        "float_bytes": model.float_bytes,
        "int_bytes": model.int_bytes,
    }
    pathlib.Path(path).write_bytes(serialization.msgpack_serialize(blob))


def load_integer_model(path) -> IntegerModel:
    """Read an ``IntegerModel`` written by ``save_integer_model``."""
    import jax.numpy as jnp

    blob = serialization.msgpack_restore(pathlib.Path(path).read_bytes())
    graph = []
    for i in range(len(blob["graph"])):
        d = dict(blob["graph"][str(i)])
        op = _OPS[d.pop("op")]
        graph.append(op(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}))
    meta = []
    for i in range(len(blob["meta"])):
        d = blob["meta"][str(i)]
        meta.append(LayerMeta(str(d["path"]), int(d["bits"]), tuple(int(s) for s in d["kernel_shape"]),
                              float(d["in_scale"]), int(d["in_zero"]), int(d["in_bits"]),
                              None if int(d["out_zero"]) < 0 else int(d["out_zero"]),
                              None if int(d["out_bits"]) < 0 else int(d["out_bits"])))
    arrays = {k: {kk: jnp.asarray(vv) for kk, vv in v.items()} for k, v in blob["arrays"].items()}
    return IntegerModel(tuple(graph), tuple(meta), arrays, int(blob["float_bytes"]), int(blob["int_bytes"]))
