"""Small hand-made populations for the engine tests (CSR layout, clients in row order)."""
import numpy as np

from jaxqfl.data.population import from_client_indices


def _contiguous_clients(sizes):
    bounds = np.cumsum([0, *sizes])
    return [np.arange(bounds[i], bounds[i + 1]) for i in range(len(sizes))]


def classification_population(sizes, num_features=6, num_classes=3, seed=0):
    """Client i holds ``sizes[i]`` rows; labels from a noisy linear model; test set = first 40 rows."""
    rng = np.random.default_rng(seed)
    n = int(sum(sizes))
    x = rng.normal(size=(n, num_features)).astype(np.float32)
    w = rng.normal(size=(num_features, num_classes))
    y = np.argmax(x @ w + 0.5 * rng.normal(size=(n, num_classes)), -1).astype(np.int32)
    return from_client_indices(x, y, _contiguous_clients(sizes), x[:40], y[:40], num_classes)


def regression_population(sizes, num_features=4, seed=1):
    """Client i holds ``sizes[i]`` rows; y = x w + noise; test set = first 20 rows."""
    rng = np.random.default_rng(seed)
    n = int(sum(sizes))
    x = rng.normal(size=(n, num_features)).astype(np.float32)
    y = (x @ rng.normal(size=num_features) + 0.1 * rng.normal(size=n)).astype(np.float32)
    return from_client_indices(x, y, _contiguous_clients(sizes), x[:20], y[:20], 0)


def assert_same_population(a, b):
    """Every array of the population cache's layout equal, dtypes and shapes included, and the same scalars."""
    from jaxqfl.data import population_cache

    for name in population_cache.ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), name
    assert (a.num_classes, a.name, a.task) == (b.num_classes, b.name, b.task)
