"""Calibration: static activation ranges from data, through exactly-aggregatable statistics.

A layer input ``x`` (``[B, ..., C]``, channels last) is summarised in two passes,
each a statistic that sums (or min/max-reduces) exactly across any split of the
rows, so clients can compute it on their own rows and a server (or a secure
aggregation) combine it with no loss (``jaxqfl.ptq.federated_calibration``):

1. ``minmax_stats``: ``min x`` and ``max x`` (per tensor, or per channel along the last axis);
2. ``histogram_stats``: counts of ``x`` in ``bins`` equal-width bins over the range of pass 1
   (values at the upper end fall in the last bin).

Both take a row mask (``[B]``, padded rows excluded), so static shapes hold.
``combine_minmax`` / ``combine_histograms`` merge statistics: ``min`` of minima,
``max`` of maxima, sum of counts.

Ranges (``range_from_stats``), with ``[m, M]`` the min-max range and ``F`` the
histogram's cumulative distribution (bin upper edges):

* ``'minmax'``: ``[m, M]`` (Jacob et al. 2018);
* ``'percentile'``: ``lo = lower edge of the first bin with F >= (100 - p) / 100``,
  ``hi = upper edge of the first bin with F >= p / 100`` (values beyond clip);
  within one bin width of the exact percentile;
* ``'mse'``: the range ``a [m, M]``, ``a`` in ``candidates`` equally spaced in (0, 1],
  minimising the expected squared quantization error of the histogram's mass at
  its bin centres, ``sum_k n_k (c_k - fq_a(c_k))^2`` for the asymmetric ``bits``-bit
  grid of that range (clipping error plus rounding error; Banner et al. 2019,
  Nagel et al. 2021 "A white paper on neural network quantization", sec. 3.2).

``calibrated_policy(policy, params, ranges)`` turns ranges into a policy whose
layer inputs are quantized by ``static_uniform`` (``jaxqfl.quant.static``) with the
bits (and asymmetry) of the policy's activation quantizer for that layer; weight
quantizers stay as they are.
"""
from __future__ import annotations

import math
import numbers
import re
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxqfl.quant.policy import Policy, Rule, bind, resolve
from jaxqfl.quant.qtensor import static_bits
from jaxqfl.quant.static import grid_of_range, static_uniform
from jaxqfl.quant import rounding as rnd
from jaxqfl.quant.uniform import code_range

METHODS = ("minmax", "percentile", "mse")


class MinMax(NamedTuple):
    lo: jax.Array  # [] or [C]
    hi: jax.Array


class Histogram(NamedTuple):
    counts: jax.Array  # [bins] or [C, bins], float32 (exact for counts < 2^24)
    lo: jax.Array  # the bin range, [] or [C]
    hi: jax.Array


def _rows_mask(x, mask):
    """``mask`` [B] broadcast to x's shape (all rows when None)."""
    if mask is None:
        return jnp.ones(x.shape, bool)
    m = jnp.asarray(mask, bool).reshape((x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.broadcast_to(m, x.shape)


def minmax_stats(x: jax.Array, mask=None, *, per_channel: bool = False) -> MinMax:
    """Masked ``min`` / ``max`` of ``x`` over all axes (per tensor) or all but the last (per channel).
    An all-masked input gives ``(+inf, -inf)``, the identity of ``combine_minmax``."""
    x = x.astype(jnp.float32)
    m = _rows_mask(x, mask)
    axes = tuple(range(x.ndim - 1)) if per_channel else None
    lo = jnp.min(jnp.where(m, x, jnp.inf), axis=axes)
    hi = jnp.max(jnp.where(m, x, -jnp.inf), axis=axes)
    return MinMax(lo, hi)


def combine_minmax(a: MinMax, b: MinMax) -> MinMax:
    return MinMax(jnp.minimum(a.lo, b.lo), jnp.maximum(a.hi, b.hi))


def bin_index(x, lo, hi, bins: int):
    """Bin of each element: ``clip(floor((x - lo) / (hi - lo) * bins), 0, bins - 1)`` (int32)."""
    width = jnp.where(hi > lo, hi - lo, 1.0)
    return jnp.clip(jnp.floor((x - lo) / width * bins), 0, bins - 1).astype(jnp.int32)


def histogram_stats(x: jax.Array, lo, hi, bins: int = 2048, mask=None, *, per_channel: bool = False) -> Histogram:
    """Masked counts of ``x`` in ``bins`` equal bins over ``[lo, hi]`` (module docstring)."""
    x = x.astype(jnp.float32)
    m = _rows_mask(x, mask).astype(jnp.float32)
    lo = jnp.asarray(lo, jnp.float32)
    hi = jnp.asarray(hi, jnp.float32)
    if per_channel:
        c = x.shape[-1]
        idx = bin_index(x, lo, hi, bins) + jnp.arange(c, dtype=jnp.int32) * bins  # [..., C]
        counts = jnp.zeros((c * bins,), jnp.float32).at[idx.reshape(-1)].add(m.reshape(-1)).reshape(c, bins)
    else:
        idx = bin_index(x, lo, hi, bins)
        counts = jnp.zeros((bins,), jnp.float32).at[idx.reshape(-1)].add(m.reshape(-1))
    return Histogram(counts, lo, hi)


def combine_histograms(a: Histogram, b: Histogram) -> Histogram:
    return Histogram(a.counts + b.counts, a.lo, a.hi)


def _edges(h: Histogram):
    bins = h.counts.shape[-1]
    t = jnp.arange(bins + 1, dtype=jnp.float32) / bins
    return h.lo[..., None] + (h.hi - h.lo)[..., None] * t  # [..., bins + 1]


def percentile_range(h: Histogram, p: float = 99.99):
    """``(lo, hi)`` from the histogram's CDF (module docstring)."""
    cdf = jnp.cumsum(h.counts, axis=-1)
    total = cdf[..., -1:]
    edges = _edges(h)
    i_hi = jnp.argmax(cdf >= total * (p / 100.0), axis=-1)
    i_lo = jnp.argmax(cdf >= total * ((100.0 - p) / 100.0), axis=-1)
    hi = jnp.take_along_axis(edges, (i_hi + 1)[..., None], axis=-1)[..., 0]
    lo = jnp.take_along_axis(edges, i_lo[..., None], axis=-1)[..., 0]
    return lo, hi


def mse_range(h: Histogram, bits: int = 8, candidates: int = 100, symmetric: bool = False):
    """``(lo, hi) = a* [m, M]`` minimising the histogram's expected squared error (module docstring)."""
    edges = _edges(h)
    centres = 0.5 * (edges[..., 1:] + edges[..., :-1])  # [..., bins]
    alphas = jnp.arange(1, candidates + 1, dtype=jnp.float32) / candidates  # [K]
    lo_k = alphas[:, None] * jnp.reshape(h.lo, (1, -1))  # [K, C or 1]
    hi_k = alphas[:, None] * jnp.reshape(h.hi, (1, -1))
    qmin, qmax = code_range(bits, symmetric)
    s, z = grid_of_range(lo_k, hi_k, bits, symmetric)
    z = 0.0 if z is None else z
    c = jnp.reshape(centres, (1, -1, centres.shape[-1]))  # [1, C or 1, bins]
    s3, z3 = s[..., None], (z[..., None] if not isinstance(z, float) else z)
    fq = (jnp.clip(rnd.round_nearest(c / s3) + z3, qmin, qmax) - z3) * s3
    n = jnp.reshape(h.counts, (1, -1, h.counts.shape[-1]))
    err = jnp.sum(n * (c - fq) ** 2, axis=-1)  # [K, C or 1]
    best = jnp.argmin(err, axis=0)  # [C or 1]
    lo = jnp.take_along_axis(lo_k, best[None], axis=0)[0]
    hi = jnp.take_along_axis(hi_k, best[None], axis=0)[0]
    return jnp.reshape(lo, jnp.shape(h.lo)), jnp.reshape(hi, jnp.shape(h.hi))


def check_settings(method: str, *, bins, bits, percentile) -> None:
    """Refuse, by name, a method, bin count, bit width or percentile the ranges cannot be computed from."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")
    for name, value, low, high in (("bins", bins, 2, 2**24), ("bits", bits, 1, 32)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    if (not isinstance(percentile, numbers.Real) or isinstance(percentile, bool) or not math.isfinite(percentile)
            or not 0 < percentile <= 100):
        raise ValueError(f"percentile must be a number in (0, 100], got {percentile!r}")


def check_finite_ranges(ranges: Mapping[str, tuple]) -> Mapping[str, tuple]:
    """``ranges`` unchanged, or ``ValueError`` naming the first layer whose inputs held NaN or Inf (their min-max,
    percentile or MSE range would be (inf, -inf) or NaN: a grid of nothing)."""
    for layer, (lo, hi) in ranges.items():
        if not (np.all(np.isfinite(np.asarray(lo))) and np.all(np.isfinite(np.asarray(hi)))):
            raise ValueError(f"the inputs of layer {layer!r} hold NaN or Inf (from the params or the data): no "
                             f"calibration range; check the model's params")
    return ranges


def range_from_stats(method: str, minmax: MinMax, hist: Histogram | None = None, *, bits: int = 8,
                     percentile: float = 99.99, candidates: int = 100):
    """``(lo, hi)`` by ``method`` in ``('minmax', 'percentile', 'mse')`` (module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")
    if method == "minmax":
        return minmax.lo, minmax.hi
    if hist is None:
        raise ValueError(f"calibration method {method!r} needs a histogram (pass 2)")
    if method == "percentile":
        return percentile_range(hist, percentile)
    return mse_range(hist, bits, candidates)


def needs_histogram(method: str) -> bool:
    return method != "minmax"


def calibrate(inputs: Mapping[str, jax.Array], method: str = "minmax", *, bins: int = 2048, per_channel: bool = False,
              bits: int = 8, percentile: float = 99.99) -> dict:
    """Centralised calibration: ``{layer: input [B, ...]}`` -> ``{layer: (lo, hi)}`` (both passes on all rows)."""
    check_settings(method, bins=bins, bits=bits, percentile=percentile)
    out = {}
    for layer, x in inputs.items():
        mm = minmax_stats(x, per_channel=per_channel)
        h = histogram_stats(x, mm.lo, mm.hi, bins, per_channel=per_channel) if needs_histogram(method) else None
        out[layer] = range_from_stats(method, mm, h, bits=bits, percentile=percentile)
    return check_finite_ranges(out)


def calibrated_policy(policy, params, ranges: Mapping[str, tuple]) -> Policy:
    """``policy`` with each calibrated layer's input quantizer replaced by ``static_uniform``.

    ``ranges``: layer path (``'Dense_0'``) -> ``(lo, hi)``, scalars or per-channel 1-D
    arrays (channel = last axis). The static quantizer takes the bits of the layer's
    activation quantizer under ``policy`` (8 if it has none) and is asymmetric.
    """
    policy = resolve(policy)
    if policy is None:
        raise ValueError("calibrated_policy: a quantization policy is needed (got none)")
    binding = bind(policy, params)
    rules = []
    for layer, (lo, hi) in ranges.items():
        kernel = f"{layer}/kernel" if layer else "kernel"
        if kernel not in binding.weights and layer not in binding.activations:
            raise ValueError(f"calibrated_policy: layer {layer!r} is not quantized by policy {policy.name!r}")
        act = binding.activation(layer)
        bits = static_bits(act, f"calibrated_policy, layer {layer!r}") if act is not None else 8
        bits = bits if 2 <= bits <= 16 else 8
        lo, hi = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
        q = static_uniform(bits, lo, hi, axis=-1 if lo.ndim == 1 else None)
        rules.append(Rule("^" + re.escape(kernel) + "$", binding.weight(kernel), q))
    return Policy(tuple(rules) + tuple(policy.rules), f"{policy.name}+static")
