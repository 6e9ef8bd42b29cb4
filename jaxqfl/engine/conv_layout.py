"""Convolutions in XLA:CPU's fast (canonical) dimension order, also inside loops.

XLA:CPU runs a convolution on its fast path only when its dimension numbers are
canonical: input ``(batch, *spatial, feature)``, kernel ``(*spatial, in, out)``,
output ``(batch, *spatial, feature)`` ("NHWC/HWIO" in 2-D). Its
``ConvCanonicalization`` pass transposes other convolutions into that order,
but only at the top level of a module: a convolution inside a ``while`` body --
every local step of a ``lax.scan`` -- keeps the order autodiff gave it. The
weight gradient of a convolution comes out as ``f01b_i01o->01bf`` (features as
the batch, batch as the contraction), and XLA:CPU then takes a generic path
that ran the McMahan CNN's second-layer weight gradient about 10x slower
(12 ms per SGD step at the top level, 120 ms inside a scan, on a 2-core EPYC).

:func:`canonical_convolutions` wraps a function so that every
``conv_general_dilated`` it performs is written as

    transpose(lhs) -> canonical convolution -> transpose(output)

with the same window, padding, dilations and group counts: the same
mathematical operation in the order the fast path wants. Functions without
convolutions are returned unchanged in effect (their jaxpr has nothing to
rewrite); the engine applies the wrapper on CPU only.
"""
from __future__ import annotations

import jax
from jax import lax
from jax.extend import core as jex_core

_CONV = "conv_general_dilated"


def _canonical_numbers(nd: int) -> lax.ConvDimensionNumbers:
    spatial = tuple(range(1, nd + 1))
    return lax.ConvDimensionNumbers(
        lhs_spec=(0, nd + 1, *spatial), rhs_spec=(nd + 1, nd, *range(nd)), out_spec=(0, nd + 1, *spatial)
    )


def _is_canonical(dn: lax.ConvDimensionNumbers) -> bool:
    return tuple(dn) == tuple(_canonical_numbers(len(dn.lhs_spec) - 2))


def _canonical_conv(lhs, rhs, params):
    """``conv_general_dilated`` with canonical dimension numbers; the output in the original order."""
    dn = params["dimension_numbers"]
    nd = len(dn.lhs_spec) - 2
    lhs_c = lax.transpose(lhs, (dn.lhs_spec[0], *dn.lhs_spec[2:], dn.lhs_spec[1]))  # [N, *S, C]
    rhs_c = lax.transpose(rhs, (*dn.rhs_spec[2:], dn.rhs_spec[1], dn.rhs_spec[0]))  # [*S, I, O]
    out_c = lax.conv_general_dilated(
        lhs_c, rhs_c,
        window_strides=params["window_strides"], padding=params["padding"],
        lhs_dilation=params["lhs_dilation"], rhs_dilation=params["rhs_dilation"],
        dimension_numbers=_canonical_numbers(nd),
        feature_group_count=params["feature_group_count"], batch_group_count=params["batch_group_count"],
        precision=params["precision"], preferred_element_type=params["preferred_element_type"],
    )  # [N, *S', O]
    perm = [0] * (nd + 2)  # original output axis -> canonical axis
    perm[dn.out_spec[0]], perm[dn.out_spec[1]] = 0, nd + 1
    for k, axis in enumerate(dn.out_spec[2:]):
        perm[axis] = 1 + k
    return lax.transpose(out_c, tuple(perm))


def contains_convolution(jaxpr) -> bool:
    """Whether ``jaxpr`` (or any jaxpr inside it) performs a ``conv_general_dilated``."""
    return any(
        eqn.primitive.name == _CONV or any(contains_convolution(j) for j in jex_core.jaxprs_in_params(eqn.params))
        for eqn in jaxpr.eqns
    )


def _has_conv(jaxpr) -> bool:
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == _CONV and not _is_canonical(eqn.params["dimension_numbers"]):
            return True
        for sub in jex_core.jaxprs_in_params(eqn.params):
            if _has_conv(sub):
                return True
    return False


def _eval(jaxpr, consts, *args):
    """Evaluate ``jaxpr`` with non-canonical convolutions rewritten; ``pjit`` bodies are inlined."""
    env = {}

    def read(v):
        return v.val if isinstance(v, jex_core.Literal) else env[v]

    for var, value in zip(jaxpr.constvars, consts):
        env[var] = value
    for var, value in zip(jaxpr.invars, args):
        env[var] = value
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name == _CONV and not _is_canonical(eqn.params["dimension_numbers"]):
            outvals = [_canonical_conv(*invals, eqn.params)]
        elif name in ("pjit", "jit") and _has_conv(eqn.params["jaxpr"].jaxpr):
            inner = eqn.params["jaxpr"]
            outvals = _eval(inner.jaxpr, inner.consts, *invals)
        else:
            with eqn.ctx.manager:
                out = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
            outvals = out if eqn.primitive.multiple_results else [out]
        for var, value in zip(eqn.outvars, outvals):
            env[var] = value
    return [read(v) for v in jaxpr.outvars]


def canonical_convolutions(fn):
    """``fn`` with every convolution it performs in XLA:CPU's canonical order (module docstring)."""

    def wrapped(*args):
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        if not _has_conv(closed.jaxpr):
            return fn(*args)
        flat = _eval(closed.jaxpr, closed.consts, *jax.tree.leaves(args))
        return jax.tree.unflatten(jax.tree.structure(out_shape), flat)

    return wrapped
