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

from jaxqfl import keys
from jaxqfl.models import stats

Params = Any


class Model(NamedTuple):
    """A model as two pure functions (see the module docstring)."""

    init: Callable[..., Params]
    apply: Callable[..., jax.Array]
    # models with running statistics (BatchNorm; jaxqfl.models.stats): the training forward
    # train_apply(params, x, *, key, mask=None) -> (outputs, new statistics), whether clients keep their
    # statistics (SiloBN) and whether they keep their BatchNorm layers' parameters too (FedBN)
    train_apply: Callable | None = None
    local_stats: bool = False
    local_layers: bool = False
    # a frozen part the model reads but never trains (a LoRA base, jaxqfl.lora): its values, a pytree of
    # arrays held once per device and handed to the compiled programs as an argument (never per client,
    # never a constant of the program), and bind(frozen) -> the Model that reads those (traced) values
    frozen: Params = ()
    bind: Callable[[Params], "Model"] | None = None


def bound(model: Model, frozen=None) -> Model:
    """``model`` reading ``frozen`` (default: its own ``model.frozen``); ``model`` itself when it has no frozen part.

    The engine calls it inside each program with the frozen values that program
    received as an argument, so one copy serves every client of the program.
    """
    if model.bind is None:
        return model
    return model.bind(model.frozen if frozen is None else frozen)


def from_functions(init: Callable, apply: Callable, policy=None) -> Model:
    """Wrap a plain ``init(key, sample_x)`` / ``apply(params, x, *, key=None)`` pair.

    ``apply`` may also take no ``key`` keyword; it is then called without one.
    With a ``policy`` (a ``jaxqfl.quant`` policy or preset name) the pair is made
    quantization-aware by interception of its matmuls and convolutions
    (``jaxqfl.models.intercept``); ``params`` must then be a nested dict.
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
        model = Model(init=init, apply=apply)
    else:
        def apply_with_key(params, x, *, key=None):
            del key
            return apply(params, x)

        model = Model(init=init, apply=apply_with_key)
    return _quantized(model, policy)


def _quantized(model: Model, policy) -> Model:
    if policy is None or (isinstance(policy, str) and policy == "none"):
        return model
    from jaxqfl.models.intercept import quantize_model

    return quantize_model(model, policy)


def from_flax(module: nn.Module, policy=None, *, rng_collection: str = "quant", train_arg: str | None = None,
              batch_stats: str | None = None) -> Model:
    """Wrap a Flax linen module whose only variable collection is ``'params'``.

    With a ``policy``, any module is made quantization-aware by interception of
    its matmuls and convolutions (``jaxqfl.models.intercept``: weights by their
    parameter paths, the inputs that meet each kernel by its layer's path). A
    module with a ``layers`` field (``jaxqfl.models.MLP``, ``CNN``) is instead
    cloned with the QAT layers (``jaxqfl.models.qat.qat_model``); both give the
    same forward pass for deterministic quantizers (``tests/test_any_model_qat.py``).

    ``init`` returns the ``'params'`` collection itself (a nested dict of arrays),
    ``apply`` re-wraps it as ``{'params': params}``. A ``key`` given to ``apply``
    is passed to the module as the ``rng_collection`` stream (``'quant'`` by
    default, the stream the QAT layers of ``jaxqfl.models.layers`` draw from).
    BatchNorm: a module with a ``batch_stats`` collection (``nn.BatchNorm(
    use_running_average=not train)``) needs ``train_arg`` and
    ``batch_stats="local"`` (each client keeps its own statistics, SiloBN),
    ``"fedbn"`` (each client keeps its BatchNorm layers, statistics and scale
    and bias, FedBN) or ``"averaged"`` (averaged like parameters); its params dict then holds the
    statistics under ``'batch_stats'`` (``jaxqfl.models.stats``). Other
    mutable collections are refused.

    Dropout: ``apply`` with a key (every local training step: the engine passes
    the step's model key, ``keys.purpose_key(keys.step_key(client_key, s),
    keys.QUANT)``) also gives the module the ``'dropout'`` stream
    ``keys.purpose_key(key, keys.DROPOUT)``, so each client and step draws its
    own masks from the run key, whatever the layout; ``apply`` without a key
    (evaluation) gives none. With ``train_arg="train"`` the module's
    ``__call__`` receives ``train=True`` when a key is given and ``train=False``
    otherwise (and at ``init``), the usual Linen switch
    ``nn.Dropout(rate, deterministic=not train)``: dropout is on in local
    training and off at evaluation.
    """
    generic = False
    if not (policy is None or (isinstance(policy, str) and policy == "none")):
        field = getattr(type(module), "__dataclass_fields__", {}).get("layers")
        if field is not None and field.default is None:  # a `layers: QATLayers | None = None` field
            from jaxqfl.models.qat import qat_model

            return qat_model(lambda layers: module.clone(layers=layers), policy)
        generic = True

    if train_arg is not None and not (isinstance(train_arg, str) and train_arg.isidentifier()):
        raise ValueError(f"from_flax: train_arg must be the name of the module's train flag (e.g. 'train'), "
                         f"got {train_arg!r}")

    if batch_stats is not None and batch_stats not in stats.MODES:
        raise ValueError(f"from_flax: batch_stats must be None or one of {stats.MODES}, got {batch_stats!r}")
    if batch_stats is not None and train_arg is None:
        raise ValueError("from_flax: batch_stats needs train_arg, the module's train flag (e.g. train_arg='train'), "
                         "so that BatchNorm uses batch statistics in training and running ones at evaluation")
    stateful = batch_stats is not None
    name = type(module).__name__

    def mode(training: bool) -> dict:
        return {} if train_arg is None else {train_arg: training}

    def rngs(key):
        return None if key is None else {rng_collection: key, "dropout": keys.purpose_key(key, keys.DROPOUT)}

    def variables_of(params):
        if not stateful:
            return {"params": params}
        trainable, running = stats.split(params)
        return {"params": trainable, stats.STATS: running}

    def init(key, sample_x):
        variables = module.init({"params": key, "dropout": keys.purpose_key(key, keys.DROPOUT)}, sample_x,
                                **mode(False))
        other = sorted(set(variables) - {"params", stats.STATS})
        if other:
            raise ValueError(f"from_flax: module {name} has variable collections {other} besides 'params' and "
                             f"'{stats.STATS}'; they are not supported")
        params = variables.get("params", {})
        if (stats.STATS in variables) != stateful:
            raise ValueError(
                f"from_flax: module {name} has a '{stats.STATS}' collection (BatchNorm): pass batch_stats='local' "
                "(SiloBN), 'fedbn' or 'averaged', and train_arg" if stateful is False else
                f"from_flax: batch_stats={batch_stats!r} was given but module {name} has no '{stats.STATS}' collection")
        if stateful:
            if stats.STATS in params:
                raise ValueError(f"from_flax: module {name} has a parameter named '{stats.STATS}', a name reserved "
                                 "for the running statistics")
            params = stats.with_stats(params, variables[stats.STATS])
        return params

    def apply(params, x, *, key=None):
        if stateful and key is not None:  # the training forward, statistics discarded
            return train_apply(params, x, key=key)[0]
        return module.apply(variables_of(params), x, rngs=rngs(key), **mode(key is not None))

    def train_apply(params, x, *, key=None, mask=None):  # mask [B]: the rows BatchNorm's moments count
        with nn.intercept_methods(stats.linen_row_mask(mask)):
            out, updated = module.apply(variables_of(params), x, rngs=rngs(key), mutable=[stats.STATS],
                                        **mode(True))
        return out, updated[stats.STATS]

    model = Model(init=init, apply=apply, train_apply=train_apply if stateful else None,
                  local_stats=batch_stats in ("local", "fedbn"), local_layers=batch_stats == "fedbn")
    return _quantized(model, policy) if generic else model
