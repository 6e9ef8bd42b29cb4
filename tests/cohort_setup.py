"""A tiny population and a plain-function softmax regression for the availability and selection tests.

The model is written twice: in JAX for the engine and in NumPy (``numpy_client_losses``) for the
references, so a candidate's loss is recomputed independently of the engine's code.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxqfl import engine, keys, models
from jaxqfl import algorithms
from populations import classification_population

C, F, K = 16, 5, 3
SIZES = np.random.default_rng(0).integers(3, 20, size=C).tolist()


def population():
    return classification_population(SIZES, num_features=F, num_classes=K, seed=0)


def model():
    def init(key, x):  # random weights: the clients' losses differ from the first round on
        return {"w": 0.5 * jax.random.normal(key, (F, K)), "b": jnp.zeros((K,))}

    def apply(params, x, key=None):
        return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]

    return models.from_functions(init, apply)


def build(pop, cohort_size=4, num_devices=2, chunk_size=2, **kw):
    return engine.build(pop, model(), algorithms.fedavg(optax.sgd(0.3)),
                        engine.LocalSchedule(local_steps=2, batch_size=4), cohort_size=cohort_size,
                        num_devices=num_devices, chunk_size=chunk_size, **kw)


def numpy_client_losses(params, pop, clients):
    """``(mean, rms)`` per client: softmax cross-entropy of ``x W + b`` over each client's rows, in float64."""
    w, b = (np.asarray(params[k], np.float64) for k in ("w", "b"))
    means, rms = [], []
    for c in clients:
        rows = slice(int(pop.offsets[c]), int(pop.offsets[c] + pop.counts[c]))
        z = np.asarray(pop.x[rows], np.float64) @ w + b
        zmax = z.max(axis=1, keepdims=True)
        lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
        loss = lse - z[np.arange(z.shape[0]), np.asarray(pop.y[rows])]
        means.append(loss.mean())
        rms.append(np.sqrt((loss ** 2).mean()))
    return np.array(means), np.array(rms)


def round_uniforms(seed, round_index, purpose, n=C):
    """The ``[C]`` uniforms a round draws for ``purpose`` (``keys.COHORT``, ``keys.AVAILABILITY``)."""
    rkey = keys.round_key(jax.random.key(seed), round_index)
    return np.asarray(jax.random.uniform(keys.purpose_key(rkey, purpose), (n,)))


def pool_of(seed, round_index, size, available=None):
    """The candidate pool a round draws: the ``size`` available clients with the largest cohort uniforms."""
    u = round_uniforms(seed, round_index, keys.COHORT)
    if available is not None:
        u = np.where(available, u, -1.0)
    order = np.argsort(-u, kind="stable")[:size]
    return order, u[order] >= 0
