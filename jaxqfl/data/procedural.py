"""Procedural populations: a client's rows are a pure function of (population seed, client id).

An in-memory :class:`~jaxqfl.data.population.Population` holds every row (a million
Synthetic clients at the default sizes is ~91 GiB). A :class:`ProceduralPopulation`
holds none: the round program generates its cohort's rows inside the program
(``jaxqfl.engine.round``), so memory is O(cohort x max_count), whatever ``num_clients``.

Client ``c``'s rows are

    leaf_c = keys.purpose_key(keys.derive(jax.random.key(seed), keys.CLIENT_TAG, c), keys.POPULATION)
    (x [max_count, *F], y [max_count], count) = generate(c, leaf_c),   1 <= count <= max_count

and its training rows are ``x[:count], y[:count]`` (the rest is never read). The
path does not involve the run seed, a round, a device or a slot, so a client has
the same rows alone, in any cohort, on any device count, or materialised eagerly
(:meth:`ProceduralPopulation.materialize`, for small populations and tests).

Held-out test set: the rows of ``test_clients`` further clients, ids
``num_clients .. num_clients + test_clients - 1``, drawn the same way (clients the
federation never trains on: the test measures the global model on new clients of the
same generator). It is small and built eagerly on the host (``x_test``, ``y_test``).

Generators:

* :func:`procedural_synthetic`: a stated new generator with the law of Synthetic(alpha, beta)
  (Li et al. 2020, FedProx, Section 5.1; the in-memory :func:`jaxqfl.data.synthetic` draws
  from NumPy streams by chunk, so its rows are not these): from one flat standard-normal
  draw ``z`` of ``leaf_c``, sliced in this order,

      u = alpha z_0,  W[j, k] = u + z,  b[k] = u + z           W: [d, K], b: [K]
      B = beta z,     v[j] = B + z                              v: [d]
      x_i[j] = v[j] + sqrt(j^-1.2) z   (j = 1..d, i < max_count)
      y_i = argmax_k (x_i W + b)_k
      count = min(max_count, floor(exp(size_mean + size_sigma z)) + min_size)

* :func:`procedural_mixture`: a stated new generator with the law of the Gaussian mixture
  (:mod:`jaxqfl.data.mixture`) for classification (label = component): the K shared means
  ``mu = separation N(0, I)`` [K, d] from ``purpose_key(key(seed), POPULATION)`` (a path no client's
  meets: theirs start with CLIENT_TAG), and per client, from the sub-keys ``fold_in(leaf_c, i)``
  (``leaf_c`` is then only derived from),

      pi ~ Dirichlet(concentration 1_K)  (i = 0),   z_i ~ Categorical(pi)  (i = 1),
      x_i = mu[z_i] + N(0, I_d)  (i = 2),   count as above from N(0, 1)  (i = 3),   y_i = z_i

* :func:`from_function`: the user's ``generate(client_id, key) -> (x, y, count)``, jittable,
  with static shapes; ``count`` is clipped to ``[1, max_count]``.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxqfl import keys
from jaxqfl.data.footprint import PROCEDURAL_TEST_CHUNK
from jaxqfl.data.population import Population, check_finite, check_labels
from jaxqfl.data.synthetic import FEATURE_DECAY
from jaxqfl.value_kinds import MAX_SEED

__all__ = ["ProceduralPopulation", "client_leaf", "from_function", "procedural_mixture", "procedural_synthetic"]

#: Test clients generated at a time when the test set is built on the host.
TEST_CHUNK = PROCEDURAL_TEST_CHUNK  # test clients drawn at a time (the memory check counts them)


def client_leaf(seed: int, client_id) -> jax.Array:
    """The key client ``client_id``'s rows are drawn from (module docstring); traceable in ``client_id``."""
    root = jax.random.key(seed)
    return keys.purpose_key(keys.derive(root, keys.CLIENT_TAG, client_id), keys.POPULATION)


@dataclasses.dataclass(frozen=True, eq=False)
class ProceduralPopulation:
    """A population whose rows are generated on demand (module docstring)."""

    generate: Callable  # generate(client_id, key) -> (x [max_count, *F], y [max_count], count)
    num_clients: int
    seed: int
    feature_shape: tuple
    num_classes: int
    max_count: int
    test_clients: int = 100
    name: str = "procedural"
    task: str = ""
    test_counts: None = None  # the test set belongs to no training client

    def __post_init__(self):
        for field, low in (("num_clients", 1), ("max_count", 1), ("test_clients", 1), ("seed", 0),
                           ("num_classes", 0)):
            value = getattr(self, field)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
                raise ValueError(f"{field} must be an integer >= {low}, got {value!r}")
            object.__setattr__(self, field, int(value))  # a NumPy integer as a Python one (JSON, hashing)
        if self.num_clients + self.test_clients > 2 ** 31 - 1:
            raise ValueError(f"num_clients + test_clients must be below 2^31 (client ids are int32), got "
                             f"{self.num_clients} + {self.test_clients}")
        if self.seed > MAX_SEED:
            raise ValueError(f"seed must be at most {MAX_SEED} (a key holds 32 bits of it), got {self.seed}")
        shape = tuple(self.feature_shape) if isinstance(self.feature_shape, (tuple, list)) else None
        if not shape or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1
                                for s in shape):
            raise ValueError(f"feature_shape must be a non-empty tuple of positive integers, got "
                             f"{self.feature_shape!r}")
        object.__setattr__(self, "feature_shape", tuple(int(s) for s in shape))
        values = self.max_count * math.prod(self.feature_shape)
        if values >= 2 ** 31:
            raise ValueError(f"max_count x features = {self.max_count:,} x {math.prod(self.feature_shape):,} = "
                             f"{values:,} values a client (its rows are padded to max_count): must be below 2^31; "
                             f"lower max_count")
        if not self.task:
            object.__setattr__(self, "task", "classification" if self.num_classes > 0 else "regression")
        if self.task not in ("classification", "regression"):
            raise ValueError(f"a procedural population's task must be 'classification' or 'regression', "
                             f"got {self.task!r}")
        if not callable(self.generate):
            raise ValueError(f"generate must be a function (client_id, key) -> (x, y, count), got {self.generate!r}")
        out = jax.eval_shape(self.generate, jnp.int32(0), jax.random.key(0))
        want = ((self.max_count,) + self.feature_shape, (self.max_count,), ())
        arrays = isinstance(out, tuple) and len(out) == 3 and all(hasattr(a, "shape") for a in out)
        got = tuple(tuple(a.shape) for a in out) if arrays else None
        if got != want:
            raise ValueError(f"generate(client_id, key) must return (x {want[0]}, y {want[1]}, count ()), "
                             f"got {got if got is not None else out}")
        if self.num_classes > 0 and not jnp.issubdtype(out[1].dtype, jnp.integer):
            raise ValueError(f"generate(client_id, key) must return integer class labels y for a population of "
                             f"{self.num_classes} classes, got dtype {out[1].dtype} (it would be truncated)")

    @property
    def is_classification(self) -> bool:
        return self.num_classes > 0

    def rows(self, client_ids: jax.Array):
        """``(x [n, max_count, *F] float32, y [n, max_count], counts [n] int32)`` of the given ids; traceable."""
        y_dtype = jnp.int32 if self.is_classification else jnp.float32

        def one(c):
            x, y, count = self.generate(c, client_leaf(self.seed, c))
            count = jnp.clip(jnp.asarray(count, jnp.int32), 1, self.max_count)
            return jnp.asarray(x, jnp.float32), jnp.asarray(y, y_dtype), count

        return jax.vmap(one)(jnp.asarray(client_ids, jnp.int32))

    def client(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Client ``c``'s training rows ``(x, y)``, generated alone."""
        if not 0 <= c < self.num_clients:
            raise IndexError(f"client index {c} is outside [0, {self.num_clients})")
        x, y, n = jax.device_get(jax.jit(self.rows)(jnp.array([c])))
        return x[0, :int(n[0])], y[0, :int(n[0])]

    def _eager(self, ids: np.ndarray):
        rows = jax.jit(self.rows)
        xs, ys = [], []
        for start in range(0, len(ids), TEST_CHUNK):
            x, y, n = jax.device_get(rows(ids[start:start + TEST_CHUNK]))
            xs += [xi[:k] for xi, k in zip(x, n)]
            ys += [yi[:k] for yi, k in zip(y, n)]
        counts = np.array([len(a) for a in ys], np.int32)
        return np.concatenate(xs), np.concatenate(ys), counts

    @property
    def x_test(self) -> np.ndarray:
        return self._test_set()[0]

    @property
    def y_test(self) -> np.ndarray:
        return self._test_set()[1]

    def _test_set(self):
        cached = self.__dict__.get("_test")
        if cached is None:
            ids = np.arange(self.num_clients, self.num_clients + self.test_clients, dtype=np.int32)
            cached = self._eager(ids)[:2]
            _check_rows(cached[0], cached[1], self.num_classes)
            object.__setattr__(self, "_test", cached)
        return cached

    def materialize(self) -> Population:
        """Every client's rows in an ordinary in-memory :class:`Population` (same rows; small populations)."""
        if self.num_clients * self.max_count * max(1, math.prod(self.feature_shape)) > 1 << 28:
            raise ValueError(f"materialising {self.num_clients} clients of up to {self.max_count} rows would not "
                             "fit comfortably in memory; a procedural population is meant to stay procedural")
        x, y, counts = self._eager(np.arange(self.num_clients, dtype=np.int32))
        return Population(x=x, y=y, offsets=np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32),
                          counts=counts, x_test=self.x_test, y_test=self.y_test, num_classes=self.num_classes,
                          name=self.name, task=self.task)


def _check_rows(x: np.ndarray, y: np.ndarray, num_classes: int) -> None:
    """Refuse the test clients' rows (drawn by the same ``generate`` as the training clients') as a
    :class:`Population` refuses its own: a run on them would report NaN, or a wrong accuracy."""
    check_finite("generate(client_id, key)'s test rows x", x)
    check_finite("generate(client_id, key)'s test targets y", y)
    check_labels("generate(client_id, key)'s test labels y", y, num_classes)


def from_function(generate: Callable, num_clients: int, seed: int, *, feature_shape, num_classes: int,
                  max_count: int, test_clients: int = 100, name: str = "procedural",
                  task: str = "") -> ProceduralPopulation:
    """A procedural population of the user's jittable ``generate(client_id, key) -> (x, y, count)``."""
    return ProceduralPopulation(generate, num_clients, seed, feature_shape, num_classes, max_count, test_clients,
                                name, task)  # each checked as given (an int() here would take 10.7 for 10)


def _check_sizes(num_features, size_mean, size_sigma, min_size, max_count) -> None:
    """The client-size and feature arguments both generators share, refused by name before any draw."""
    if not isinstance(num_features, numbers.Integral) or isinstance(num_features, bool) or num_features < 1:
        raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
    if not isinstance(max_count, numbers.Integral) or isinstance(max_count, bool) or max_count < 1:
        raise ValueError(f"max_count must be a positive integer, got {max_count!r}")
    for name, value, low in (("size_mean", size_mean, -math.inf), ("size_sigma", size_sigma, 0.0)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) or value < low:
            raise ValueError(f"{name} must be a finite number{' >= 0' if low == 0 else ''}, got {value!r}")
    if (not isinstance(min_size, numbers.Integral) or isinstance(min_size, bool)
            or not 1 <= min_size <= max_count):
        raise ValueError(f"min_size must be an integer in [1, max_count={max_count}], got {min_size!r}")


def synthetic_generator(alpha: float, beta: float, *, num_features: int = 60, num_classes: int = 10,
                        size_mean: float = 4.0, size_sigma: float = 2.0, min_size: int = 50,
                        max_count: int = 512) -> Callable:
    """``generate(client_id, key)`` of Synthetic(alpha, beta) (module docstring's formulas)."""
    d, k, n = int(num_features), int(num_classes), int(max_count)
    std = jnp.asarray(np.arange(1, d + 1, dtype=np.float64) ** (-FEATURE_DECAY / 2), jnp.float32)  # sqrt(Sigma_jj)
    sizes = np.cumsum([0, 1, d * k, k, 1, d, n * d, 1])

    def generate(client_id, key):
        del client_id  # the key already names the client
        z = jax.random.normal(key, (int(sizes[-1]),), jnp.float32)
        part = [z[sizes[i]:sizes[i + 1]] for i in range(len(sizes) - 1)]
        u = alpha * part[0][0]
        w = u + part[1].reshape(d, k)
        b = u + part[2]
        v = beta * part[3][0] + part[4]
        x = v + std * part[5].reshape(n, d)
        logits = jnp.einsum("nd,dk->nk", x, w, precision=jax.lax.Precision.HIGHEST) + b
        y = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        size = jnp.floor(jnp.exp(size_mean + size_sigma * part[6][0])) + min_size
        count = jnp.minimum(size, n).astype(jnp.int32)
        return x, y, count

    return generate


def procedural_synthetic(alpha: float, beta: float, num_clients: int, seed: int, *, num_features: int = 60,
                         num_classes: int = 10, size_mean: float = 4.0, size_sigma: float = 2.0,
                         min_size: int = 50, max_count: int = 512, test_clients: int = 100) -> ProceduralPopulation:
    """Synthetic(alpha, beta) as a procedural population (module docstring; not the in-memory generator's rows)."""
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    _check_sizes(num_features, size_mean, size_sigma, min_size, max_count)
    if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    generate = synthetic_generator(float(alpha), float(beta), num_features=num_features, num_classes=num_classes,
                                   size_mean=float(size_mean), size_sigma=float(size_sigma), min_size=int(min_size),
                                   max_count=max_count)
    return from_function(generate, num_clients, seed, feature_shape=(int(num_features),), num_classes=num_classes,
                         max_count=max_count, test_clients=test_clients,
                         name=f"procedural_synthetic({alpha:g},{beta:g})")


def mixture_generator(means, concentration: float, *, size_mean: float = 4.0, size_sigma: float = 2.0,
                      min_size: int = 50, max_count: int = 512) -> Callable:
    """``generate(client_id, key)`` of the Gaussian mixture with component means ``means`` [K, d] (module docstring)."""
    means = jnp.asarray(means, jnp.float32)
    k, d, n = means.shape[0], means.shape[1], int(max_count)

    def generate(client_id, key):
        del client_id
        sub = [jax.random.fold_in(key, i) for i in range(4)]
        pi = jax.random.dirichlet(sub[0], jnp.full((k,), concentration, jnp.float32))
        z = jax.random.categorical(sub[1], jnp.log(pi), shape=(n,)).astype(jnp.int32)
        x = means[z] + jax.random.normal(sub[2], (n, d), jnp.float32)
        size = jnp.floor(jnp.exp(size_mean + size_sigma * jax.random.normal(sub[3], ()))) + min_size
        return x, z, jnp.minimum(size, n).astype(jnp.int32)

    return generate


def procedural_mixture(num_components: int, num_clients: int, seed: int, *, num_features: int = 10,
                       concentration: float = 0.3, separation: float = 4.0, size_mean: float = 4.0,
                       size_sigma: float = 2.0, min_size: int = 50, max_count: int = 512,
                       test_clients: int = 100) -> ProceduralPopulation:
    """The Gaussian mixture as a procedural classification population (label = component; module docstring)."""
    if not isinstance(num_components, numbers.Integral) or isinstance(num_components, bool) or num_components < 2:
        raise ValueError(f"num_components must be an integer >= 2, got {num_components!r}")
    for name, value, low in (("concentration", concentration, 1e-300), ("separation", separation, 0.0)):
        if not isinstance(value, numbers.Real) or not math.isfinite(value) or value < low:
            raise ValueError(f"{name} must be a finite number {'> 0' if low else '>= 0'}, got {value!r}")
    _check_sizes(num_features, size_mean, size_sigma, min_size, max_count)
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    shared = keys.purpose_key(jax.random.key(int(seed)), keys.POPULATION)
    means = separation * jax.random.normal(shared, (int(num_components), int(num_features)), jnp.float32)
    generate = mixture_generator(means, float(concentration), size_mean=float(size_mean),
                                 size_sigma=float(size_sigma), min_size=int(min_size), max_count=max_count)
    return from_function(generate, num_clients, seed, feature_shape=(int(num_features),),
                         num_classes=int(num_components), max_count=max_count, test_clients=test_clients,
                         name=f"procedural_mixture(K={num_components})")
