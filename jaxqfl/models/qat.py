"""Quantization-aware models: a module built with QAT layers, bound to a policy.

``qat_model(module_fn, policy)`` takes ``module_fn(layers) -> flax Module`` (a
module whose ``layers`` field picks its Dense/Conv classes; ``layers=None`` is
the float model) and returns a ``Model(init, apply)``:

* ``init(key, sample_x)``: resolves the policy against the float twin's
  parameter shapes (``jax.eval_shape``; this is where a rule matching nothing,
  a bad axis or an integer parameter is reported), then initialises the QAT
  module (jitted: it runs the fake-quantized forward pass once). The result holds the float parameters (same paths and values as the
  float model from the same key) plus any learned-quantizer parameters.
* ``apply(params, x, *, key=None)``: re-binds the policy to ``params`` (only
  paths and shapes, at trace time), then runs the module with ``key`` as its
  ``'quant'`` RNG stream. ``key=None`` is deterministic round-to-nearest. Under
  ``jax.vmap(apply, in_axes=(0, 0))`` over stacked client params and per-client
  keys (``jaxqfl.keys.purpose_key(step_key, keys.QUANT)``) every client gets its
  own stochastic rounding.

``policy=None`` / ``'none'`` returns the plain float model unchanged.
"""
from __future__ import annotations

from typing import Callable

import jax

from jaxqfl.models.core import Model, from_flax
from jaxqfl.models.layers import QUANT_RNG, QATLayers
from jaxqfl.quant.policy import bind, resolve


def _signature(params) -> tuple:
    """Tree structure, shapes and dtypes: everything binding reads from ``params``."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    return treedef, tuple((tuple(x.shape), str(x.dtype)) for x in leaves)


def qat_model(module_fn: Callable, policy) -> Model:
    """QAT model from ``module_fn(layers)`` and a policy (module docstring)."""
    policy = resolve(policy)
    float_module = module_fn(None)
    if policy is None:
        return from_flax(float_module)

    modules = {}  # parameter signature -> bound module: bind once per structure, not per trace

    def bound_module(params_like):
        sig = _signature(params_like)
        if sig not in modules:
            modules[sig] = module_fn(QATLayers(bind(policy, params_like)))
        return modules[sig]

    inits = {}  # jitted init per bound module: eager Flax init would dispatch (and
    # compile) every fake-quant op separately, which is many times slower

    def init(key, sample_x):
        shapes = jax.eval_shape(float_module.init, key, sample_x)["params"]
        module = bound_module(shapes)
        if id(module) not in inits:
            inits[id(module)] = jax.jit(lambda k, x: module.init(k, x)["params"])
        return inits[id(module)](key, sample_x)

    def apply(params, x, *, key=None):
        rngs = None if key is None else {QUANT_RNG: key}
        return bound_module(params).apply({"params": params}, x, rngs=rngs)

    return Model(init=init, apply=apply)
