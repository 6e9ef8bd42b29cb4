"""Per-client evaluation of the model each client uses: its personal model, or the global one fine-tuned.

At an evaluation of round t, client c (every client of the population, not a
cohort) uses

    m_c = personalize(w_t, s_c)       the algorithm's personal model (Ditto's v_c, FedRep's (phi, h_c));
                                      w_t itself for an algorithm without one
    m_c = with_local(m_c, b_c)        its own BatchNorm part when the model keeps one (SiloBN / FedBN)
    K fine-tuning steps (``FineTune``, TFF's personalization evaluation):
        m_c <- m_c - eta grad F_c(m_c; batch_s),   s = 0 .. K-1

with batches drawn as local training draws them (``LocalSchedule(local_steps=K,
batch_size=B)``) under ``purpose_key(client_key(round_key(run_key, t), c), PERSONAL)``,
so the numbers do not depend on the device count, the chunk size or the
client-state home. Each per-example metric of the task is summed over the
client's own test rows (``Population.test_counts``) and
``jaxqfl.engine.client_metrics.spread`` reports mean, std, 10th / 90th
percentiles and the worst client.

Cost: one compiled program evaluates a block of clients: ``chunk`` clients are
vmapped (their test rows gathered, padded to the largest client's ``T`` rows),
the chunks scanned, the block split over the mesh's devices; a Python loop over
blocks (sized so that the block's client states stay under ``block_bytes``)
runs that program, so the host home and populations larger than the devices'
memory work too. Work: C x (K fine-tuning steps + one forward pass over T rows).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxqfl import keys
from jaxqfl.data.population import Population
from jaxqfl.engine import client_metrics
from jaxqfl.engine.evaluation import label_dtype
from jaxqfl.engine.mesh import CLIENTS
from jaxqfl.engine.schedule import LocalSchedule, make_batch_fn
from jaxqfl.models import stats
from jaxqfl.models.core import bound

CHUNK_BYTES = 2**26  # working set of one vmapped chunk (gathered test rows, models, fine-tuning gradients)


class FineTune(NamedTuple):
    """Per-client fine-tuning before the per-client evaluation (``steps = 0``: none)."""

    steps: int = 0
    learning_rate: float = 0.01
    batch_size: int | None = 32

    def check(self) -> "FineTune":
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0:
            raise ValueError(f"fine-tuning steps must be a non-negative integer, got {self.steps!r}")
        lr = self.learning_rate
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not 0 < lr < math.inf:
            raise ValueError(f"fine-tuning learning rate must be a finite number > 0, got {lr!r}")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ValueError(f"fine-tuning batch size must be a positive integer or None, got {self.batch_size!r}")
        return self


def personal_view(global_metrics: dict, personal_metrics: dict) -> dict:
    """The evaluation record of a run whose clients use their own models.

    The personal models' spread becomes ``client_*``; the global model's per-client
    spread (from the pooled evaluation) is kept as ``global_client_*``.
    """
    out = {(f"global_{k}" if k.startswith("client_") else k): v for k, v in global_metrics.items()}
    out.update(personal_metrics)
    return out


def build_client_evaluate(population: Population, model, task, mesh, algorithm, data, *, fine_tune: FineTune,
                          chunk_size: int | None = None, block_bytes: int = 2**30):
    """``evaluate_clients(state) -> {client_<metric>_<stat>: float}`` (module docstring).

    ``data`` is the round's ``DeviceData`` (the clients' training rows, for fine-tuning).
    """
    if population.test_counts is None:
        raise ValueError(f"per-client evaluation needs each client's own test rows, and {population.name or 'the'} "
                         "population has a pooled test set only: split it over the clients "
                         "(jaxqfl.data.split_test_by_labels, --client-test labels)")
    fine_tune = fine_tune.check()
    C, D = population.num_clients, mesh.devices.size
    counts = np.asarray(population.test_counts, np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    T = max(1, int(counts.max()))
    local_stats = stats.has_stats(model) and model.local_stats
    parts = ("algorithm", "model") if local_stats else ("algorithm",)

    params_abs = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1,) + population.feature_shape))
    param_bytes = sum(int(np.prod(a.shape)) * 4 for a in jax.tree.leaves(params_abs))
    row_bytes = 4 * int(np.prod(population.feature_shape, dtype=np.int64)) + 4
    per_client = T * row_bytes * 4 + param_bytes * (3 if fine_tune.steps else 1)
    chunk = chunk_size or int(np.clip(CHUNK_BYTES // max(per_client, 1), 1, math.ceil(C / D)))

    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P(CLIENTS))
    x_test = jax.device_put(population.x_test.astype(np.float32, copy=False), replicated)
    y_test = jax.device_put(population.y_test.astype(label_dtype(population), copy=False), replicated)
    schedule = LocalSchedule(local_steps=max(fine_tune.steps, 1), batch_size=fine_tune.batch_size)
    prepare_plan, step_batch = make_batch_fn(schedule, population.max_count)
    lr = float(fine_tune.learning_rate)

    def one_client(params, frozen, data, x_test, y_test, cstate, cid, start, count, ekey):
        reading = bound(model, frozen)
        p = params if algorithm.personalize is None else algorithm.personalize(params, cstate["algorithm"])
        if local_stats:
            p = stats.with_local(p, cstate["model"])
        if fine_tune.steps:
            ckey = keys.purpose_key(keys.client_key(ekey, cid), keys.PERSONAL)
            n, offset = data.counts[cid], data.offsets[cid]
            plan = prepare_plan(ckey, n)

            def step(p, s):
                sb = step_batch(plan, ckey, n, s)
                xb, yb, m = data.x[offset + sb.rows], data.y[offset + sb.rows], sb.mask.astype(jnp.float32)
                qkey = keys.purpose_key(keys.step_key(ckey, s), keys.QUANT)

                def loss(p):
                    return jnp.sum(task.loss(reading.apply(p, xb, key=qkey), yb) * m) / jnp.maximum(jnp.sum(m), 1.0)

                return jax.tree.map(lambda a, g: a - lr * g, p, jax.grad(loss)(p)), None

            p, _ = jax.lax.scan(step, p, jnp.arange(fine_tune.steps, dtype=jnp.int32))
        mask = jnp.arange(T) < count
        rows = jnp.where(mask, start + jnp.arange(T), 0)
        m = task.metrics(reading.apply(p, x_test[rows], key=None), y_test[rows])
        return {k: jnp.sum(v * mask) for k, v in m.items()}

    def per_device(params, frozen, data, x_test, y_test, cstates, cids, starts, tcounts, ekey):
        shaped = lambda a: a.reshape((-1, chunk) + a.shape[1:])
        chunks = jax.tree.map(shaped, (cstates, cids, starts, tcounts))
        run = jax.vmap(one_client, in_axes=(None,) * 5 + (0, 0, 0, 0, None))
        sums = jax.lax.map(lambda c: run(params, frozen, data, x_test, y_test, *c, ekey), chunks)
        return jax.tree.map(lambda a: a.reshape(-1), sums)

    program = jax.shard_map(per_device, mesh=mesh, in_specs=(P(),) * 5 + (P(CLIENTS),) * 4 + (P(),),
                            out_specs=P(CLIENTS), check_vma=False)

    compiled = jax.jit(program)
    frozen = jax.device_put(model.frozen, replicated)

    def evaluate_clients(state) -> dict:
        cstates = {k: state.client_states[k] for k in parts}
        one_bytes = sum(int(np.prod(a.shape[1:])) * a.dtype.itemsize for a in jax.tree.leaves(cstates))
        per_call = D * chunk * max(1, min(math.ceil(C / (D * chunk)), block_bytes // max(D * chunk * one_bytes, 1)))
        params, ekey = jax.device_put((state.params, keys.round_key(state.key, state.round)), replicated)
        sums = []
        for lo in range(0, C, per_call):
            ids = np.minimum(np.arange(lo, lo + per_call), C - 1).astype(np.int32)  # past C: repeats, dropped below
            take = lambda a: np.take(a, ids, axis=0) if isinstance(a, np.ndarray) else jnp.take(a, ids, axis=0)
            block = jax.device_put(jax.tree.map(take, cstates), sharded)  # the host home's rows are NumPy
            args = (jax.device_put(a, sharded) for a in (ids, starts[ids], counts[ids].astype(np.int32)))
            out = jax.device_get(compiled(params, frozen, data, x_test, y_test, block, *args, ekey))
            sums.append({k: v[: min(per_call, C - lo)] for k, v in out.items()})
        total = {k: np.concatenate([s[k] for s in sums]) for k in sums[0]}
        return client_metrics.spread(total, counts)

    return evaluate_clients
