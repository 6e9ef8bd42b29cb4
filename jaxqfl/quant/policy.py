"""Quantization policies: which quantizer applies to which parameter and layer input.

A ``Policy`` is an ordered tuple of ``Rule(pattern, weights, activations)``.
``pattern`` is a regular expression searched (``re.search``) in the '/'-joined
path of each parameter, e.g. ``'Dense_0/kernel'`` or ``'Conv_1/bias'``; or one of
the selectors ``FIRST`` (``'<first>'``) / ``LAST`` (``'<last>'``): the kernel of the
first / last layer, in the natural order of layer paths (numbers inside names
compare as numbers, so ``Dense_2`` precedes ``Dense_10``; Flax numbers
auto-named layers in call order).

For each parameter the FIRST rule whose pattern matches decides (later rules
never override earlier ones; ``Policy.add`` puts a user rule in front of the
preset's rules). The rule's ``weights`` quantizer fake-quantizes that parameter
(``None`` = float). If the parameter is a layer's ``kernel``, the rule's
``activations`` quantizer fake-quantizes that layer's input.

Binding (``bind(policy, params)``) resolves the rules against a model's actual
parameters and is where mistakes surface, with the offending value named: a
rule whose pattern matches no parameter, a quantizer whose channel axis does
not exist for the parameter it matched, or an integer parameter.

Parameters created by learned quantizers are named ``'<param>:<name>'`` (e.g.
``'kernel:scale'`` for LSQ, ``'input:alpha'`` for PACT); the ``':'`` marks them as
quantizer state, which binding skips.

Presets (``preset(name)``), named as users say them:

==========  ===============================================================
``none``    float32 everywhere (no rules)
``full``    int8 weights (symmetric, per output channel) and int8 inputs
            (asymmetric, min-max, per example) for every layer
``half``    every parameter and layer input in bfloat16
``mixed``   first and last layers as ``full`` (8-bit), the other layers
            4-bit weights and 4-bit inputs
``w4a8``    4-bit per-channel weights, 8-bit inputs
``w8``      int8 weights only (float inputs)
``log4``    4-bit power-of-two weights (Miyashita et al. 2016), float inputs
``nf4``     NF4 weights per output channel, float inputs
``fp8``     float8 e4m3 weights and inputs (scaled per output channel /
            per example)
``lsq4``    LSQ-learned 4-bit weights, 8-bit inputs
``binary``  1-bit weights (XNOR-Net scale per output channel), 8-bit inputs;
            first and last layers 8-bit
==========  ===============================================================

Kernels' output-channel axis is the last one for Flax ``Dense`` (``[in, out]``)
and ``Conv`` (``[kh, kw, in, out]``) alike, hence ``axis=-1`` for weights in the
presets. Activations are quantized dynamically with one range per example
(``axis=0``, the batch axis of a layer input ``[B, ...]``; under the engine's vmap
over clients that is each client's batch): a prediction then never depends on
which other examples share its batch, so evaluation batch size does not change
results, and integer inference can compute the scale on the fly (as per-token
activation quantization does).
"""
from __future__ import annotations

import re
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from jaxqfl.quant.floats import cast
from jaxqfl.quant.learned import lsq
from jaxqfl.quant.nonuniform import nf4, power_of_two
from jaxqfl.quant.qtensor import LearnedQuantizer, QTensor, Quantizer
from jaxqfl.quant.uniform import uniform

FIRST = "<first>"
LAST = "<last>"
_SELECTORS = (FIRST, LAST)
KERNEL = "kernel"
STATE_MARK = ":"  # quantizer-owned parameters: '<param>:<name>'


class Rule(NamedTuple):
    """``pattern`` -> quantizer of the matched parameters (``weights``) and of the
    input of the layers whose kernel it matched (``activations``)."""

    pattern: str
    weights: Any = None  # Quantizer | LearnedQuantizer | None
    activations: Any = None


class Policy(NamedTuple):
    """An ordered tuple of rules; the first matching rule decides (module docstring)."""

    rules: tuple = ()
    name: str = "custom"

    def add(self, pattern: str, weights=None, activations=None) -> "Policy":
        """A new policy with ``Rule(pattern, weights, activations)`` in front (it wins)."""
        return Policy((Rule(pattern, weights, activations),) + tuple(self.rules), self.name)

    def extend(self, pattern: str, weights=None, activations=None) -> "Policy":
        """A new policy with the rule at the back (applies where no earlier rule matches)."""
        return Policy(tuple(self.rules) + (Rule(pattern, weights, activations),), self.name)


class Binding(NamedTuple):
    """A policy resolved against one model's parameters.

    weights: parameter path -> quantizer (paths without a quantizer are absent);
    activations: layer path (the kernel's parent, e.g. ``'Dense_0'``) -> quantizer.
    """

    weights: Mapping[str, Any]
    activations: Mapping[str, Any]

    def weight(self, path: str):
        return self.weights.get(path)

    def activation(self, layer_path: str):
        return self.activations.get(layer_path)


def _is_quantizer(q) -> bool:
    return isinstance(q, (Quantizer, LearnedQuantizer))


def _natural_key(path: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def param_paths(params) -> dict[str, Any]:
    """'/'-joined path -> leaf (a QTensor counts as one leaf), quantizer state skipped."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: isinstance(x, QTensor))
    out = {}
    for path, leaf in flat:
        names = [_key_name(k) for k in path]
        if any(STATE_MARK in n for n in names):
            continue
        out["/".join(names)] = leaf
    return out


def _check_quantizer(q, what: str, pattern: str):
    if q is not None and not _is_quantizer(q):
        raise TypeError(
            f"policy rule {pattern!r}: {what} must be a jaxqfl.quant Quantizer/LearnedQuantizer or None, "
            f"got {type(q).__name__}"
        )


def bind(policy, params) -> Binding:
    """Resolve ``policy`` (a Policy, preset name or None) against ``params`` (module docstring).

    ``params`` may hold arrays, tracers or ``jax.ShapeDtypeStruct``s; only paths,
    shapes and dtypes are read.
    """
    policy = resolve(policy)
    if policy is None:
        return Binding({}, {})
    leaves = param_paths(params)
    paths = list(leaves)
    kernels = sorted((p for p in paths if p.rsplit("/", 1)[-1] == KERNEL), key=_natural_key)

    matched: list[set[str]] = []
    for rule in policy.rules:
        if not isinstance(rule, Rule):
            raise TypeError(f"policy {policy.name!r}: rules must be jaxqfl.quant.Rule, got {rule!r}")
        _check_quantizer(rule.weights, "weights", rule.pattern)
        _check_quantizer(rule.activations, "activations", rule.pattern)
        if rule.pattern == FIRST:
            m = set(kernels[:1])
        elif rule.pattern == LAST:
            m = set(kernels[-1:])
        else:
            try:
                rx = re.compile(rule.pattern)
            except re.error as e:
                raise ValueError(f"policy rule {rule.pattern!r} is not a valid regular expression: {e}") from e
            m = {p for p in paths if rx.search(p)}
        if not m:
            raise ValueError(
                f"policy {policy.name!r}: rule {rule.pattern!r} matches no parameter; "
                f"the parameter paths are {sorted(paths, key=_natural_key)}"
            )
        matched.append(m)

    weights, activations = {}, {}
    for path in paths:
        rule = next((r for r, m in zip(policy.rules, matched) if path in m), None)
        if rule is None:
            continue
        leaf = leaves[path]
        if rule.weights is not None:
            dtype = leaf.codes.dtype if isinstance(leaf, QTensor) else leaf.dtype
            if not isinstance(leaf, QTensor) and not jnp.issubdtype(dtype, jnp.floating):
                raise TypeError(
                    f"policy rule {rule.pattern!r} matches parameter {path!r} of integer dtype {dtype}; "
                    "only floating parameters can be quantized"
                )
            if not isinstance(leaf, QTensor):
                _check_shape(rule.weights, leaf, path, rule.pattern)
            weights[path] = rule.weights
        if rule.activations is not None and path.rsplit("/", 1)[-1] == KERNEL:
            activations[path.rsplit("/", 1)[0] if "/" in path else ""] = rule.activations
    return Binding(weights, activations)


def _check_shape(q, leaf, path, pattern):
    """Trace ``quantize`` on the parameter's shape so a bad axis fails here, naming the parameter."""
    spec = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)
    try:
        if isinstance(q, LearnedQuantizer):
            jax.eval_shape(lambda x: q.quantize(x, q.init(x), None), spec)
        else:
            jax.eval_shape(lambda x: q.quantize(x, None), spec)
    except (ValueError, TypeError) as e:
        raise ValueError(f"policy rule {pattern!r}, parameter {path!r} of shape {tuple(leaf.shape)}: {e}") from e


# ----------------------------------------------------------------------------- presets


def _w8():
    return uniform(8, symmetric=True, axis=-1)


def _a8():
    return uniform(8, symmetric=False, axis=0)


def _a4():
    return uniform(4, symmetric=False, axis=0)


def _preset_none():
    return Policy((), "none")


def _preset_full():
    return Policy((Rule(r"(^|/)kernel$", _w8(), _a8()),), "full")


def _preset_half():
    bf16 = cast("bfloat16")
    return Policy((Rule(r".", bf16, bf16),), "half")


def _preset_mixed():
    return Policy(
        (
            Rule(FIRST, _w8(), _a8()),
            Rule(LAST, _w8(), _a8()),
            Rule(r"(^|/)kernel$", uniform(4, symmetric=True, axis=-1), _a4()),
        ),
        "mixed",
    )


def _preset_w4a8():
    return Policy((Rule(r"(^|/)kernel$", uniform(4, symmetric=True, axis=-1), _a8()),), "w4a8")


def _preset_w8():
    return Policy((Rule(r"(^|/)kernel$", _w8(), None),), "w8")


def _preset_log4():
    return Policy((Rule(r"(^|/)kernel$", power_of_two(4, axis=-1), None),), "log4")


def _preset_nf4():
    return Policy((Rule(r"(^|/)kernel$", nf4(axis=-1), None),), "nf4")


def _preset_fp8():
    return Policy(
        (Rule(r"(^|/)kernel$", cast("float8_e4m3fn", scaled=True, axis=-1), cast("float8_e4m3fn", scaled=True, axis=0)),),
        "fp8",
    )


def _preset_lsq4():
    return Policy((Rule(r"(^|/)kernel$", lsq(4, signed=True), _a8()),), "lsq4")


def _preset_binary():
    return Policy(
        (
            Rule(FIRST, _w8(), _a8()),
            Rule(LAST, _w8(), _a8()),
            Rule(r"(^|/)kernel$", uniform(1, axis=-1), _a8()),
        ),
        "binary",
    )


PRESETS = {
    "none": _preset_none,
    "full": _preset_full,
    "half": _preset_half,
    "mixed": _preset_mixed,
    "w4a8": _preset_w4a8,
    "w8": _preset_w8,
    "log4": _preset_log4,
    "nf4": _preset_nf4,
    "fp8": _preset_fp8,
    "lsq4": _preset_lsq4,
    "binary": _preset_binary,
}


def preset(name: str) -> Policy:
    """The named preset policy (table in the module docstring)."""
    if name not in PRESETS:
        raise ValueError(f"unknown quantization preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]()


def resolve(policy) -> Policy | None:
    """``None``, ``'none'`` and rule-less policies -> ``None`` (float); a name -> its preset."""
    if policy is None:
        return None
    if isinstance(policy, str):
        policy = preset(policy)
    if not isinstance(policy, Policy):
        raise TypeError(f"a quantization policy must be a jaxqfl.quant.Policy, a preset name or None; got {policy!r}")
    return policy if policy.rules else None
