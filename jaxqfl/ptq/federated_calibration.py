"""Federated calibration: clients compute activation statistics on their own rows, the server combines them.

A calibration round is one compiled program (``jit`` of ``shard_map`` over the
mesh axis ``"clients"``): the cohort's client ids are split over the devices;
on each device a ``lax.scan`` over chunks of ``chunk_size`` clients ``vmap``s the
client side, which gathers the client's rows of the population
(``x[offsets[i] + j]``, ``j < rows_per_client``, masked beyond ``counts[i]``:
static shapes), runs the model once capturing every layer input
(``jaxqfl.models.capture.layer_inputs``) and reduces them to statistics that
aggregate exactly (``jaxqfl.quant.calibrate``):

* pass 1: per-layer ``min`` / ``max`` -> reduced by ``min`` / ``max`` over the chunk,
  the scan and ``lax.pmin`` / ``lax.pmax`` over devices;
* pass 2 (percentile, MSE): per-layer fixed-bin histograms over the pass-1 range
  -> summed (``lax.psum``): the same sum a secure aggregation of the clients'
  count vectors would return.

The server then turns the combined statistics into ranges
(``calibrate.range_from_stats``). Because every reduction is exact, calibrating
over all clients with ``rows_per_client >= max count`` equals centralised
calibration on the pooled rows (tested). A client holding more than
``rows_per_client`` rows contributes its first ``rows_per_client``. A population
memory-mapped from disk (``jaxqfl.data.packed``) is not copied to the devices:
the cohort's rows are gathered on the host first (the same statistics).
"""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxqfl.data.population import is_read_only_map
from jaxqfl.engine.mesh import CLIENTS, client_mesh
from jaxqfl.models.capture import layer_inputs
from jaxqfl.quant import calibrate as cal


def _cohort(population, client_ids, devices: int, chunk: int):
    ids = np.arange(population.num_clients) if client_ids is None else np.asarray(client_ids)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"client_ids must be a non-empty 1-D array of client indices, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):  # 0.5 and 1.7 were truncated to clients 0 and 1
        raise ValueError(f"client_ids must be integers (client indices), got dtype {ids.dtype}")
    if ids.min() < 0 or ids.max() >= population.num_clients:
        raise ValueError(f"client_ids must lie in [0, {population.num_clients}), got [{ids.min()}, {ids.max()}]")
    unit = devices * chunk
    pad = (-ids.size) % unit
    valid = np.concatenate([np.ones(ids.size, bool), np.zeros(pad, bool)])
    ids = np.concatenate([ids, np.zeros(pad, ids.dtype)]).astype(np.int32)
    return ids, valid


def _round(model, params, population, client_ids, rows_per_client, mesh, chunk_size, client_stats, reduce_chunk, reduce_devices):
    for name, value in (("chunk_size", chunk_size), ("rows_per_client", rows_per_client)):
        if value is not None and (not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{name} must be a positive integer{' or None (all rows)' if name != 'chunk_size' else ''}"
                             f", got {value!r}")
    mesh = client_mesh() if mesh is None else mesh
    d = mesh.devices.size
    ids, valid = _cohort(population, client_ids, d, chunk_size)
    most = int(population.counts[ids[valid]].max())
    # rows past a client's count are masked: more than the cohort's largest count reads nothing more (and padded
    # every client to it: rows_per_client=2**31 - 1 asked XLA for 12 TB)
    r = most if rows_per_client is None else min(int(rows_per_client), most)
    if is_read_only_map(population.x):  # rows on disk (jaxqfl.data.packed): read the cohort's first r rows only,
        # slot-major (slot i holds client ids[i]'s rows at i * r + j; rows past its count repeat, masked)
        counts_of = population.counts[ids].astype(np.int64)
        rows = population.offsets[ids].astype(np.int64)[:, None] + np.minimum(np.arange(r), counts_of[:, None] - 1)
        x_all = jnp.asarray(population.x[rows.reshape(-1)], jnp.float32)
        offsets = jnp.arange(ids.size, dtype=jnp.int32) * r
        counts = jnp.asarray(counts_of, jnp.int32)
        n, ids = ids.size * r, np.arange(ids.size, dtype=np.int32)
    else:
        x_all = jnp.asarray(population.x, jnp.float32)
        offsets = jnp.asarray(population.offsets, jnp.int32)
        counts = jnp.asarray(population.counts, jnp.int32)
        n = population.num_examples

    def one_client(p, cid, ok):
        j = jnp.arange(r, dtype=jnp.int32)
        rows = jnp.minimum(offsets[cid] + j, n - 1)
        mask = (j < counts[cid]) & ok
        return client_stats(layer_inputs(model, p, x_all[rows]), mask)

    def device_share(p, ids_d, valid_d):
        ids_c = ids_d.reshape(-1, chunk_size)
        valid_c = valid_d.reshape(-1, chunk_size)
        first = reduce_chunk(jax.vmap(one_client, in_axes=(None, 0, 0))(p, ids_c[0], valid_c[0]))

        def step(acc, inp):
            part = reduce_chunk(jax.vmap(one_client, in_axes=(None, 0, 0))(p, *inp))
            return reduce_chunk(jax.tree.map(lambda a, b: jnp.stack([a, b]), acc, part)), None

        acc, _ = jax.lax.scan(step, first, (ids_c[1:], valid_c[1:]))
        return reduce_devices(acc)

    fn = jax.jit(jax.shard_map(device_share, mesh=mesh, in_specs=(P(), P(CLIENTS), P(CLIENTS)), out_specs=P(),
                               check_vma=False))
    return fn(params, jnp.asarray(ids), jnp.asarray(valid))


def federated_minmax(model, params, population, *, client_ids=None, rows_per_client=None, per_channel=False,
                     mesh=None, chunk_size: int = 4) -> dict:
    """Pass 1: ``{layer: MinMax}`` over the cohort's rows (module docstring)."""

    def stats(inputs, mask):
        return {k: cal.minmax_stats(v, mask, per_channel=per_channel) for k, v in inputs.items()}

    def reduce_chunk(s):
        return {k: cal.MinMax(v.lo.min(0), v.hi.max(0)) for k, v in s.items()}

    def reduce_devices(s):
        return {k: cal.MinMax(jax.lax.pmin(v.lo, CLIENTS), jax.lax.pmax(v.hi, CLIENTS)) for k, v in s.items()}

    return _round(model, params, population, client_ids, rows_per_client, mesh, chunk_size, stats, reduce_chunk, reduce_devices)


def federated_histograms(model, params, population, ranges: dict, *, bins: int = 2048, client_ids=None,
                         rows_per_client=None, per_channel=False, mesh=None, chunk_size: int = 4) -> dict:
    """Pass 2: ``{layer: Histogram}`` of the cohort's rows over the given ``{layer: MinMax}`` ranges."""

    def stats(inputs, mask):
        return {k: cal.histogram_stats(v, ranges[k].lo, ranges[k].hi, bins, mask, per_channel=per_channel).counts
                for k, v in inputs.items()}

    def reduce_chunk(s):
        return {k: v.sum(0) for k, v in s.items()}

    def reduce_devices(s):
        return {k: jax.lax.psum(v, CLIENTS) for k, v in s.items()}

    counts = _round(model, params, population, client_ids, rows_per_client, mesh, chunk_size, stats, reduce_chunk,
                    reduce_devices)
    return {k: cal.Histogram(counts[k], jnp.asarray(ranges[k].lo), jnp.asarray(ranges[k].hi)) for k in counts}


def federated_calibrate(model, params, population, method: str = "minmax", *, client_ids=None, rows_per_client=None,
                        bins: int = 2048, per_channel: bool = False, bits: int = 8, percentile: float = 99.99,
                        mesh=None, chunk_size: int = 4) -> dict:
    """``{layer: (lo, hi)}`` from one (min-max) or two (percentile, MSE) federated rounds.

    Args:
      model: a Flax-backed ``jaxqfl.models.Model`` (usually the float model).
      params: its parameters.
      population: a ``jaxqfl.data.Population``; ``client_ids`` the cohort (default: every client).
      method: ``'minmax'``, ``'percentile'`` or ``'mse'`` (``jaxqfl.quant.calibrate``).
      rows_per_client: rows each client contributes (default: the cohort's largest count, i.e. all).
      mesh: a 1-D mesh over ``"clients"`` (default ``client_mesh()``: every device).
    """
    cal.check_settings(method, bins=bins, bits=bits, percentile=percentile)
    kw = dict(client_ids=client_ids, rows_per_client=rows_per_client, per_channel=per_channel, mesh=mesh,
              chunk_size=chunk_size)
    mm = federated_minmax(model, params, population, **kw)
    hist = federated_histograms(model, params, population, mm, bins=bins, **kw) if cal.needs_histogram(method) else {}
    return cal.check_finite_ranges({k: cal.range_from_stats(method, mm[k], hist.get(k), bits=bits,
                                                            percentile=percentile) for k in mm})
