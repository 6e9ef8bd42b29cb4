"""The BatchNorm tests' population: each client's features have their own offset and scale (feature shift,
FedBN's setting), binary labels, the first 8 rows as the test set."""
import numpy as np

from jaxqfl.data.population import Population


def feature_shift_population(num_clients: int, per_client: int, features: int) -> Population:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(2.0 * c, 1.0 + c, (per_client, features))
                        for c in range(num_clients)]).astype(np.float32)
    y = rng.integers(0, 2, num_clients * per_client).astype(np.int32)
    return Population(x, y, np.arange(num_clients, dtype=np.int32) * per_client,
                      np.full(num_clients, per_client, np.int32), x[:8].copy(), y[:8].copy(), 2)
