"""Capture the input of every Dense / Conv layer of a Flax-backed model in one forward pass.

``layer_inputs(model, params, x) -> {layer path: input}`` runs ``model.apply``
under ``flax.linen.intercept_methods`` and records the first argument of each
``nn.Dense`` / ``nn.Conv`` / ``QDense`` / ``QConv`` call, keyed by the layer's
path (``'Dense_0'``, ``'Conv_1'``), the same path the quantization policy uses.
It is a pure function of ``(params, x)``: the recorded arrays are outputs of the
same trace, so it composes with ``jit`` and ``vmap`` (federated calibration runs
it per client). A layer called twice keeps its last input.
"""
from __future__ import annotations

import flax.linen as nn

from jaxqfl.models.layers import QConv, QDense

_LAYERS = (nn.Dense, nn.Conv, QDense, QConv)


def layer_inputs(model, params, x) -> dict:
    """``{layer path: input array}`` of every Dense/Conv layer (module docstring)."""
    captured = {}

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, _LAYERS):
            path = "/".join(str(p) for p in context.module.scope.path)
            captured[path] = args[0]
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        model.apply(params, x)
    if not captured:
        raise ValueError("layer_inputs: the model called no Flax Dense/Conv layer (is it a Flax-backed model?)")
    return dict(captured)
