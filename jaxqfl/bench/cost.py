"""The work a round must do, counted analytically: FLOPs and bytes.

Forward FLOPs of a model are counted from its jaxpr: every ``dot_general``
costs ``2 * prod(output shape) * prod(contracted sizes)`` and every
``conv_general_dilated`` costs ``2 * prod(output shape) * (C_in / groups) *
prod(kernel window)``; elementwise work (activations, softmax, fake
quantization) is not counted. Loops multiply their body by their trip count
(``scan``); ``cond`` counts its most expensive branch.

A round of ``M`` clients, each scanning ``S`` local steps of ``B`` examples,
with ``f`` forward FLOPs per example, ``P`` parameters, ``O`` optimizer-state
floats per client, and ``r`` bytes per example row (features + label, or the
``T`` next-token targets of a window):

    FLOPs  = 3 * f * B * S * M
             (forward + backward ~ 3x forward: the backward pass computes a
             gradient w.r.t. the weights and one w.r.t. the activations, each
             about one forward. It over-counts the first layer, whose input
             gradient is never needed, so the true count is a little lower.)
    bytes  = M * S * (4 * (2 P + 2 P + 2 O) + B * r)
             (each client's parameters, gradients and optimizer state are read
             and written once per local step, float32, plus its batch rows read)
    floor  = max(FLOPs / peak_flops, bytes / peak_bw)

The bytes term is an upper bound on memory traffic: a client whose working set
stays in cache between steps moves less, so a well-chunked program can run
below the bytes floor. Padding clients (added to fill chunks) and masked steps
are not counted: the formula is the work the workload asks for.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from jaxqfl.algorithms.base import Algorithm
from jaxqfl import keys
from jaxqfl.data.population import Population
from jaxqfl.engine.layout import local_state_floats
from jaxqfl.engine.schedule import LocalSchedule
from jaxqfl.models.cost import conv_macs, dot_macs

FLOAT_BYTES = 4
FORWARD_BACKWARD_FACTOR = 3


class RoundCost(NamedTuple):
    """Analytic work of one round (see module docstring)."""

    flops: float  # FLOPs of one round
    bytes: float  # bytes moved by one round
    client_steps: int  # M * S
    examples: int  # M * S * B
    forward_flops_per_example: float  # f
    num_params: int  # P
    optimizer_floats: int  # O

    def floor_seconds(self, peak_flops: float, peak_bandwidth: float) -> tuple[float, str]:
        """``(max(FLOPs / peak_flops, bytes / peak_bw), which term)``."""
        t_flops, t_bytes = self.flops / peak_flops, self.bytes / peak_bandwidth
        return (t_flops, "flops") if t_flops >= t_bytes else (t_bytes, "bytes")


def _prod(xs) -> int:
    return int(math.prod(int(x) for x in xs))


def _dot_flops(eqn) -> int:
    return 2 * dot_macs(eqn)


def _conv_flops(eqn) -> int:
    return 2 * conv_macs(eqn)


def _sub_jaxprs(value):
    if isinstance(value, jex_core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jex_core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def _jaxpr_flops(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "cond":
            total += max((_jaxpr_flops(b.jaxpr) for b in eqn.params["branches"]), default=0)
        else:
            inner = sum(_jaxpr_flops(j) for v in eqn.params.values() for j in _sub_jaxprs(v))
            total += inner * (int(eqn.params["length"]) if name == "scan" else 1)
    return total


def matmul_flops(fn, *args) -> int:
    """FLOPs of the matrix products and convolutions ``fn(*args)`` performs (jaxpr count)."""
    return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def forward_flops_per_example(model, feature_shape: tuple[int, ...], batch: int = 8) -> float:
    """``f``: matmul/conv FLOPs of one example's forward pass (counted on a batch, divided)."""
    x = jax.ShapeDtypeStruct((batch,) + tuple(feature_shape), jnp.float32)  # shapes only: nothing is computed
    params = jax.eval_shape(model.init, keys.abstract_key(), jax.ShapeDtypeStruct((1,) + x.shape[1:], x.dtype))
    flops = matmul_flops(lambda p, x: model.apply(p, x, key=None), params, x)
    return flops / batch


def _float_count(tree) -> int:
    return sum(
        _prod(a.shape) for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)
    )


def round_cost(
    population: Population, model, algorithm: Algorithm, schedule: LocalSchedule, cohort_size: int
) -> RoundCost:
    """The analytic FLOPs and bytes of one round of this workload (module docstring)."""
    max_count = population.max_count
    B, S, M = schedule.batch(max_count), schedule.num_steps(max_count), cohort_size
    x1 = jax.ShapeDtypeStruct((1,) + population.feature_shape, jnp.float32)
    params = jax.eval_shape(model.init, keys.abstract_key(), x1)
    P = _float_count(params)
    O = local_state_floats(algorithm, params) - P  # optimizer (and algorithm) floats beside the params
    f = forward_flops_per_example(model, population.feature_shape)
    row = FLOAT_BYTES * int(np.prod(population.feature_shape)) + population.y.dtype.itemsize * int(
        np.prod(population.y.shape[1:]))  # targets [N] or [N, T] (next-token)
    flops = FORWARD_BACKWARD_FACTOR * f * B * S * M
    moved = M * S * (FLOAT_BYTES * (2 * P + 2 * P + 2 * O) + B * row)
    return RoundCost(float(flops), float(moved), M * S, M * S * B, float(f), P, O)
