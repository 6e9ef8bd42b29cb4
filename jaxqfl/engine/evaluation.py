"""Evaluation of a global model on the held-out test rows, split over the mesh."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxqfl.data.population import Population
from jaxqfl.engine import client_metrics
from jaxqfl.engine.mesh import CLIENTS
from jaxqfl.models.core import bound


def label_dtype(population: Population):
    """Labels travel as int32 class ids (classification) or float32 targets (regression)."""
    return np.int32 if population.is_classification else np.float32


def build_evaluate(population: Population, model, task, mesh, eval_batch_size: int):
    """``evaluate(params) -> {metric: mean over the test rows}`` (the task's per-example metrics).

    When the test rows are the clients' own (``population.test_counts``), the
    same program also sums each metric per client (a ``segment_sum`` by the
    row's client), and ``evaluate`` adds the spread over clients
    (``jaxqfl.engine.client_metrics``): e.g. ``client_accuracy_mean``,
    ``_p10``, ``_min``, ``_std``.
    """
    D = mesh.devices.size
    n = population.x_test.shape[0]
    eb = min(eval_batch_size, math.ceil(n / D))
    per_device = math.ceil(n / (D * eb)) * eb
    pad = per_device * D - n
    y_dtype = label_dtype(population)
    x = np.concatenate([population.x_test.astype(np.float32), np.zeros((pad,) + population.feature_shape, np.float32)])
    y = np.concatenate([population.y_test.astype(y_dtype), np.zeros((pad,) + population.y_test.shape[1:], y_dtype)])
    mask = np.arange(per_device * D) < n
    per_client = population.test_counts is not None
    C = population.num_clients
    # rows of no client (past sum(test_counts)) and padding rows: segment C, dropped
    owner = np.concatenate([np.repeat(np.arange(C, dtype=np.int32), population.test_counts),
                            np.full(per_device * D - int(np.sum(population.test_counts)), C, np.int32)]) \
        if per_client else np.zeros(per_device * D, np.int32)
    sharded = NamedSharding(mesh, P(CLIENTS))
    x, y, mask, owner = (jax.device_put(a, sharded) for a in (x, y, mask, owner))

    frozen = jax.device_put(model.frozen, NamedSharding(mesh, P()))  # a frozen base: once per device, an argument

    def per_device_eval(params, frozen, x, y, mask, owner):
        xb, yb, mb, ob = (a.reshape((-1, eb) + a.shape[1:]) for a in (x, y, mask, owner))
        reading = bound(model, frozen)

        def metrics_of(xi, yi):
            return task.metrics(reading.apply(params, xi, key=None), yi)

        def one(acc, args):
            xi, yi, mi, oi = args
            m = metrics_of(xi, yi)
            if per_client:
                acc = {k: acc[k] + jax.ops.segment_sum(v * mi, oi, num_segments=C + 1) for k, v in m.items()}
            return acc, {k: jnp.sum(v * mi) for k, v in m.items()}

        shapes = jax.eval_shape(metrics_of, xb[0], yb[0])
        acc0 = {k: jnp.zeros(C + 1, jnp.float32) for k in shapes} if per_client else {}
        acc, sums = jax.lax.scan(one, acc0, (xb, yb, mb, ob))
        sums = jax.tree.map(lambda a: jnp.sum(a, 0), sums)
        return jax.lax.psum((sums, acc), CLIENTS)

    fn = jax.jit(
        jax.shard_map(
            per_device_eval, mesh=mesh, in_specs=(P(), P(), P(CLIENTS), P(CLIENTS), P(CLIENTS), P(CLIENTS)),
            out_specs=P(), check_vma=False,
        )
    )

    finish = task.finish(population.y_test) if getattr(task, "finish", None) else None

    def evaluate(params) -> dict[str, float]:
        sums, client_sums = jax.device_get(fn(params, frozen, x, y, mask, owner))
        means = {k: float(v) / n for k, v in sums.items()}
        out = finish(means) if finish is not None else means
        if per_client:
            out.update(client_metrics.spread({k: v[:C] for k, v in client_sums.items()}, population.test_counts))
        return out

    def prepare(params) -> None:
        """Compile the evaluation program for ``params`` now, without running it (``evaluate`` reuses it)."""
        fn.lower(params, frozen, x, y, mask, owner).compile()

    evaluate.prepare = prepare
    return evaluate
