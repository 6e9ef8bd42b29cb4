"""Evaluation of a global model on the held-out test rows, split over the mesh."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxqfl.data.population import Population
from jaxqfl.engine.mesh import CLIENTS


def label_dtype(population: Population):
    """Labels travel as int32 class ids (classification) or float32 targets (regression)."""
    return np.int32 if population.is_classification else np.float32


def build_evaluate(population: Population, model, task, mesh, eval_batch_size: int):
    """``evaluate(params) -> {metric: mean over the test rows}`` (the task's per-example metrics)."""
    D = mesh.devices.size
    n = population.x_test.shape[0]
    eb = min(eval_batch_size, math.ceil(n / D))
    per_device = math.ceil(n / (D * eb)) * eb
    pad = per_device * D - n
    y_dtype = label_dtype(population)
    x = np.concatenate([population.x_test.astype(np.float32), np.zeros((pad,) + population.feature_shape, np.float32)])
    y = np.concatenate([population.y_test.astype(y_dtype), np.zeros((pad,) + population.y_test.shape[1:], y_dtype)])
    mask = np.arange(per_device * D) < n
    sharded = NamedSharding(mesh, P(CLIENTS))
    x, y, mask = (jax.device_put(a, sharded) for a in (x, y, mask))

    def per_device_eval(params, x, y, mask):
        xb, yb, mb = (a.reshape((-1, eb) + a.shape[1:]) for a in (x, y, mask))

        def one(args):
            xi, yi, mi = args
            m = task.metrics(model.apply(params, xi, key=None), yi)
            return {k: jnp.sum(v * mi) for k, v in m.items()}

        sums = jax.tree.map(lambda a: jnp.sum(a, 0), jax.lax.map(one, (xb, yb, mb)))
        return jax.lax.psum(sums, CLIENTS)

    fn = jax.jit(
        jax.shard_map(
            per_device_eval, mesh=mesh, in_specs=(P(), P(CLIENTS), P(CLIENTS), P(CLIENTS)), out_specs=P(),
            check_vma=False,
        )
    )

    finish = task.finish(population.y_test) if getattr(task, "finish", None) else None

    def evaluate(params) -> dict[str, float]:
        sums = jax.device_get(fn(params, x, y, mask))
        means = {k: float(v) / n for k, v in sums.items()}
        return finish(means) if finish is not None else means

    return evaluate
