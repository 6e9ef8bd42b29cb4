"""The model interface the engine sees: a pair of pure functions.

    init(key, sample_x) -> params            sample_x: [B, *feature_shape] float32
    apply(params, x, *, key=None) -> out      x: [B, *feature_shape] -> out: [B, num_outputs]

``params`` is a plain pytree of arrays (nested dicts for Flax models), so it can
be stacked along a leading client axis and vmapped. ``key`` carries the
randomness of stochastic quantization in quantization-aware training (QAT);
``key=None`` means deterministic (round-to-nearest) inference. Float models
ignore it. Nothing here depends on Flax: ``from_functions`` shows that any pair
of pure functions is a model (DESIGN.md, "Interfaces in the optax style").
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax

Params = Any


class Model(NamedTuple):
    """A model as two pure functions (see the module docstring)."""

    init: Callable[..., Params]
    apply: Callable[..., jax.Array]


def from_functions(init: Callable, apply: Callable) -> Model:
    """Wrap a plain ``init(key, sample_x)`` / ``apply(params, x, *, key=None)`` pair.

    ``apply`` may also take no ``key`` keyword; it is then called without one.
    """
    import inspect

    try:
        sig = inspect.signature(apply)
        takes_key = "key" in sig.parameters or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()
        )
    except (TypeError, ValueError):  # builtins / C functions: assume the full signature
        takes_key = True

    if takes_key:
        return Model(init=init, apply=apply)

    def apply_with_key(params, x, *, key=None):
        del key
        return apply(params, x)

    return Model(init=init, apply=apply_with_key)


def from_flax(module: nn.Module, policy=None, *, rng_collection: str = "quant") -> Model:
    """Wrap a Flax linen module whose only variable collection is ``'params'``.

    With a ``policy`` the module must have a ``layers`` field and build its
    Dense/Conv layers from it (``layers.dense(...)``, ``layers.conv(...)``; ``None``
    meaning ``flax.linen`` layers), as ``jaxqfl.models.MLP`` and ``CNN`` do; it is
    then cloned with QAT layers (``jaxqfl.models.qat.qat_model``).

    ``init`` returns the ``'params'`` collection itself (a nested dict of arrays),
    ``apply`` re-wraps it as ``{'params': params}``. A ``key`` given to ``apply``
    is passed to the module as the ``rng_collection`` stream (``'quant'`` by
    default, the stream the QAT layers of ``jaxqfl.models.layers`` draw from).
    Modules with mutable state (e.g. BatchNorm's ``batch_stats``) are rejected:
    FL engines exchange parameters only.
    """
    if not (policy is None or (isinstance(policy, str) and policy == "none")):
        if "layers" not in getattr(type(module), "__dataclass_fields__", {}):
            raise TypeError(
                f"from_flax: a policy needs a module with a `layers` field (see jaxqfl.models.MLP); "
                f"{type(module).__name__} has none"
            )
        from jaxqfl.models.qat import qat_model

        return qat_model(lambda layers: module.clone(layers=layers), policy)

    def init(key, sample_x):
        variables = module.init(key, sample_x)
        other = sorted(set(variables) - {"params"})
        if other:
            raise ValueError(
                f"from_flax: module {type(module).__name__} has variable collections {other} "
                "besides 'params'; only stateless (params-only) modules are supported"
            )
        return variables.get("params", {})

    def apply(params, x, *, key=None):
        rngs = None if key is None else {rng_collection: key}
        return module.apply({"params": params}, x, rngs=rngs)

    return Model(init=init, apply=apply)
