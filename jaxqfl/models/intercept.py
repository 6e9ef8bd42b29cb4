"""Quantization-aware training for ANY model, by interception of its matmuls and convolutions.

``quantize_model(model, policy) -> Model`` turns a float ``Model(init, apply)``
(Flax Linen, Flax NNX, Haiku, Equinox or plain functions: anything whose
``apply(params, x)`` is a JAX function of a params pytree) into its QAT twin:

* **weights**: every parameter leaf the policy gives a weight quantizer (rules
  are regexes on '/'-joined parameter paths, ``'Dense_0/kernel'``;
  ``jaxqfl.quant.policy``) is fake-quantized before the forward pass uses it;
* **activations**: the forward pass is traced to a jaxpr (``jax.make_jaxpr``,
  once per parameter signature) and re-evaluated primitive by primitive; for
  every ``dot_general`` or ``conv_general_dilated`` whose operand is a
  ``kernel`` leaf (directly, or through reshape / transpose / dtype casts /
  broadcasts, as Flax's ``DenseGeneral`` and ``promote_dtype`` do), the *other*
  operand (the layer input) is fake-quantized with the activation quantizer of
  that kernel's layer (its parent path, ``'Dense_0'``). Calls (``pjit``) are
  interpreted inline and ``scan`` bodies (``nn.RNN``, ``nn.scan``) are
  re-scanned with the same interception, so recurrent cells are covered.

The quantizers are jaxqfl's own (custom-VJP estimators, non-uniform codebooks,
LSQ / PACT): the interpreter only decides *where* they apply. Learned
quantizers' parameters live beside the parameter they serve, as with the QAT
layers: ``'<layer>/kernel:scale'`` and ``'<layer>/input:scale'`` (or
``input:alpha``), created by ``init`` from the initial kernel and from the
layer's input on the sample batch.

Keys: a stochastic quantizer of parameter (or layer input) at path ``p`` draws
``fold_in(fold_in(key, crc32(p)), role)`` from the ``key`` given to ``apply``
(the engine passes ``keys.purpose_key(step_key, keys.QUANT)`` per client and
step); ``key=None`` rounds to nearest. Inside a ``scan`` the same layer key
serves every step.

Why an interpreter and not Qwix: Qwix 0.1.8 intercepts the same three ops for
Linen and NNX modules and keeps parameter paths, but (1) its quantizers are
its own (no slot for a custom-VJP estimator, a codebook or per-client
stochastic rounding keys), (2) it does not reach plain functions, Haiku or
Equinox, and (3) its rules name *modules*, ours name parameters. The jaxpr
interpreter costs nothing at run time: it runs while JAX traces (under
``jit``), so the compiled program is the same as if the model had been
written with QAT layers; ``tests/test_any_model_qat.py`` checks that the zoo
MLP and CNN give exactly what the ``layers``-based QAT path gives.

Limits, stated: an operation inside ``while_loop`` / ``cond`` bodies is not
intercepted (an activation quantizer whose kernel is used only there is
refused at ``init``, naming the kernel); activation quantization needs a
``kernel`` leaf as a direct matmul/conv operand (an embedding ``take`` is a
gather: its table is weight-quantized if a rule says so, there is no layer
input to quantize).
"""
from __future__ import annotations

import zlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

from jaxqfl.models.core import Model
from jaxqfl.models.cost import op_macs
from jaxqfl.quant.policy import KERNEL, STATE_MARK, Binding, _key_name, bind, param_paths, resolve
from jaxqfl.quant.qtensor import LearnedQuantizer

# Ops through which a value is still "the parameter" (its layout or dtype changes, not its values' roles).
_TRANSPARENT = {"reshape", "transpose", "convert_element_type", "squeeze", "expand_dims", "broadcast_in_dim",
                "copy", "copy_p", "reduce_precision"}
_INTERCEPTED = {"dot_general", "conv_general_dilated"}
_CALLS = {"pjit", "closed_call", "core_call", "remat", "checkpoint"}
_WEIGHT_ROLE, _INPUT_ROLE = 0, 1


def _path_key(key, path: str, role: int):
    return jax.random.fold_in(jax.random.fold_in(key, zlib.crc32(path.encode()) & 0x7FFFFFFF), role)


def _split_state(params) -> tuple[dict, dict]:
    """``(model params, quantizer state)``: leaves whose path carries ``STATE_MARK`` are quantizer state."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    state = {}
    for path, leaf in flat:
        names = "/".join(_key_name(k) for k in path)
        if STATE_MARK in names:
            state[names] = leaf
    return _without_state(params), state


def _without_state(tree):
    if isinstance(tree, dict):
        return {k: _without_state(v) for k, v in tree.items() if STATE_MARK not in str(k)}
    return tree


def _set_path(tree: dict, path: str, value) -> dict:
    """A copy of the nested dict ``tree`` with ``value`` at the '/'-joined ``path``."""
    head, _, rest = path.partition("/")
    out = dict(tree)
    out[head] = value if not rest else _set_path(tree.get(head, {}), rest, value)
    return out


def _fake_quant(q, value, state: dict, state_path: str, key, path: str, role: int):
    k = None if key is None or not q.needs_key else _path_key(key, path, role)
    if isinstance(q, LearnedQuantizer):
        return q.fake_quant(value, state[state_path], k)
    return q.fake_quant(value, k)


class _Interpreter:
    """Evaluates a jaxpr, fake-quantizing the layer inputs of intercepted ops (module docstring)."""

    def __init__(self, binding: Binding, state: dict, key, initialising: bool):
        self.binding, self.state, self.key = binding, state, key
        self.initialising = initialising  # at init: learned activation quantizers create their parameter in state
        self.seen: set[str] = set()
        self.macs: dict[str, int] = {}  # layer -> multiply-accumulates of its matmuls/convs (jaxqfl.models.cost)
        self.repeat = 1  # how many times the jaxpr being run executes (scan bodies: their length)

    @staticmethod
    def layer_of(origin):
        """The layers whose kernels ``origin`` (a path, or a tuple of paths for concatenated kernels) holds."""
        paths = (origin,) if isinstance(origin, str) else origin
        if not paths or any(p is None or p.rsplit("/", 1)[-1] != KERNEL for p in paths):
            return None
        return tuple(p.rsplit("/", 1)[0] if "/" in p else "" for p in paths)

    def quantize_input(self, layers: tuple, x):
        """``x`` entering the (possibly concatenated) kernels of ``layers``: the first layer's input quantizer."""
        self.seen.update(layers)
        layer = layers[0]
        q = self.binding.activation(layer)
        if q is None:
            return x
        prefix = f"{layer}/" if layer else ""
        state_path = f"{prefix}input{STATE_MARK}{getattr(q, 'param_name', '')}"
        if isinstance(q, LearnedQuantizer) and state_path not in self.state:
            if not self.initialising:
                raise ValueError(f"the learned activation quantizer of layer {layer!r} has no parameter "
                                 f"{state_path!r} in params: initialise the model with its init")
            self.state[state_path] = q.init(x)  # as Flax creates a layer's parameter at its first call
        return _fake_quant(q, x, self.state, state_path, self.key, f"{prefix}input", _INPUT_ROLE)

    def after_op(self, eqn, invals, in_origins, out):
        """The output of an intercepted op (``eqn``, its inputs and their origins); subclasses add to it
        (``jaxqfl.lora`` adds the low-rank term of an adapted kernel)."""
        del eqn, invals, in_origins
        return out

    def run(self, jaxpr, consts, args, origins):
        env, where = {}, {}

        def read(v):
            return v.val if isinstance(v, jex_core.Literal) else env[v]

        def write(vs, vals, src=None):
            for v, val in zip(vs, vals):
                env[v] = val
                if src is not None:
                    where[v] = src

        write(jaxpr.constvars, consts)
        for v, val, o in zip(jaxpr.invars, args, origins):
            env[v] = val
            where[v] = o
        for eqn in jaxpr.eqns:
            invals = [read(v) for v in eqn.invars]
            in_origins = [None if isinstance(v, jex_core.Literal) else where.get(v) for v in eqn.invars]
            name = eqn.primitive.name
            if name in _INTERCEPTED:
                lhs_layer, rhs_layer = self.layer_of(in_origins[0]), self.layer_of(in_origins[1])
                if rhs_layer is not None and lhs_layer is None:
                    invals[0] = self.quantize_input(rhs_layer, invals[0])
                elif lhs_layer is not None and rhs_layer is None:
                    invals[1] = self.quantize_input(lhs_layer, invals[1])
                layer = rhs_layer if lhs_layer is None else lhs_layer
                if layer is not None:
                    self.macs[layer[0]] = self.macs.get(layer[0], 0) + self.repeat * op_macs(eqn)
            if name in _CALLS and "jaxpr" in eqn.params:
                inner = eqn.params["jaxpr"]
                inner_jaxpr, inner_consts = (inner.jaxpr, inner.consts) if hasattr(inner, "consts") else (inner, ())
                outs = self.run(inner_jaxpr, inner_consts, invals, in_origins)
            elif name == "scan":
                outs = self._scan(eqn, invals, in_origins)
            else:
                with eqn.ctx.manager:
                    outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
                if not eqn.primitive.multiple_results:
                    outs = [outs]
                if name in _INTERCEPTED:
                    outs = [self.after_op(eqn, invals, in_origins, outs[0])]
            src = in_origins[0] if name in _TRANSPARENT else None
            if name == "concatenate" and all(isinstance(o, str) for o in in_origins):
                src = tuple(in_origins)  # fused kernels (e.g. Flax's OptimizedLSTMCell): one matmul, one input
            write(eqn.outvars, outs, src)
        return [read(v) for v in jaxpr.outvars]

    def _scan(self, eqn, invals, in_origins):
        p = eqn.params
        body, n_consts, n_carry = p["jaxpr"], p["num_consts"], p["num_carry"]
        consts, init, xs = invals[:n_consts], invals[n_consts:n_consts + n_carry], invals[n_consts + n_carry:]
        origins = list(in_origins[:n_consts]) + [None] * (len(invals) - n_consts)

        def step(carry, x):
            outs = self.run(body.jaxpr, body.consts, [*consts, *carry, *x], origins)
            return outs[:n_carry], outs[n_carry:]

        self.repeat *= p["length"]  # the body is traced once, and runs `length` times
        try:
            carry, ys = jax.lax.scan(step, list(init), list(xs), length=p["length"], reverse=p["reverse"],
                                     unroll=p.get("unroll", 1))
        finally:
            self.repeat //= p["length"]
        return [*carry, *ys]


def _traced(apply: Callable, params, x):
    """``(closed jaxpr, leaf paths, out tree)`` of ``apply(params, x)`` with params flattened (first inputs)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    paths = list(param_paths(params))
    if len(paths) != len(leaves):
        raise ValueError("quantize_model: parameter leaves must each have a unique path")

    def flat_apply(leaves, x):
        return apply(jax.tree_util.tree_unflatten(treedef, leaves), x)

    closed, out_shape = jax.make_jaxpr(flat_apply, return_shape=True)(leaves, x)
    return closed, paths, jax.tree_util.tree_structure(out_shape)


def _forward(apply, binding: Binding, params, state: dict, x, key, initialising: bool = False):
    """The QAT forward: weights fake-quantized, then the interpreted float forward."""
    leaves_by_path = param_paths(params)
    quantized = params
    for path, leaf in leaves_by_path.items():
        q = binding.weight(path)
        if q is not None:
            value = _fake_quant(q, leaf, state, f"{path}{STATE_MARK}{getattr(q, 'param_name', '')}", key, path,
                                _WEIGHT_ROLE)
            quantized = _set_path(quantized, path, value) if isinstance(quantized, dict) else quantized
    closed, paths, out_tree = _traced(apply, quantized, x)
    leaves = jax.tree_util.tree_leaves(quantized)
    interp = _Interpreter(binding, state, key, initialising)
    outs = interp.run(closed.jaxpr, closed.consts, [*leaves, *jax.tree_util.tree_leaves(x)],
                      [*paths, *([None] * len(jax.tree_util.tree_leaves(x)))])
    missing = sorted(set(binding.activations) - interp.seen)
    if missing:
        raise ValueError(f"quantize_model: the policy gives layer input quantizers to {missing}, but their kernels "
                         "never meet an input in a matmul or convolution outside while/cond bodies; "
                         "drop the activation quantizer for them")
    return jax.tree_util.tree_unflatten(out_tree, outs)


def quantize_model(model: Model, policy) -> Model:
    """The QAT twin of any float ``model`` under ``policy`` (module docstring); ``None``/``'none'``: ``model``."""
    policy = resolve(policy)
    if policy is None:
        return model
    if not isinstance(model, Model):
        raise TypeError(f"quantize_model takes a jaxqfl.models.Model, got {type(model).__name__}")
    def float_apply(key):  # the float forward; the key reaches the model's own randomness (dropout)
        return lambda p, x: model.apply(p, x, key=key)

    def init(key, sample_x):
        params = model.init(key, sample_x)
        if not isinstance(params, dict):
            raise TypeError("quantize_model: the model's params must be a nested dict of arrays "
                            f"(got {type(params).__name__}) so that policy rules can name them by path")
        binding = bind(policy, params)
        state = {}
        for path, q in binding.weights.items():
            if isinstance(q, LearnedQuantizer):
                state[f"{path}{STATE_MARK}{q.param_name}"] = q.init(param_paths(params)[path])
        _forward(float_apply(None), binding, params, state, sample_x, None, initialising=True)  # fills state
        for state_path, value in state.items():
            params = _set_path(params, state_path, value)
        return params

    def apply(params, x, *, key=None):
        float_params, state = _split_state(params)
        binding = bind(policy, float_params)
        return _forward(float_apply(key), binding, float_params, state, x, key)

    def train_apply(params, x, *, key=None, mask=None):  # models with running statistics: (outputs, new statistics)
        float_params, state = _split_state(params)
        binding = bind(policy, float_params)
        return _forward(lambda p, x: model.train_apply(p, x, key=key, mask=mask), binding, float_params, state, x,
                        key)

    return model._replace(init=init, apply=apply, train_apply=train_apply if model.train_apply is not None else None)
