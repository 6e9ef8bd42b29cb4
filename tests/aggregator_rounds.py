"""One aggregator round driven by hand, without the engine (shared by the secure-sum and distributed-DP tests)."""
import jax
import jax.numpy as jnp

from jaxqfl import keys
from jaxqfl.aggregate.base import CohortInfo, CohortStatistics
from jaxqfl.algorithms.base import ClientInfo


def aggregator_round(agg, ids, updates, rkey, weights=None):
    """The pre-pass (maxima over the cohort), the vmapped clients (weight 1 each unless ``weights`` [M]), the sum,
    the server.

    Returns ``(out, new_state, server_metrics, client_metrics, stats, infos, reduced)``.
    """
    infos = jax.vmap(lambda i: ClientInfo(i, jnp.int32(5), jnp.int32(1), keys.client_key(rkey, i), jnp.int32(0)))(ids)
    st = jax.vmap(lambda u, inf: agg.statistics(u, 1.0, (), None, inf))(updates, infos)
    stats = CohortStatistics(maxes=jax.tree.map(lambda a: a.max(0), st.maxes))
    state = agg.init(None)
    weights = jnp.ones(ids.shape[0], jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    summands, _, m = jax.vmap(lambda u, w, inf: agg.client(u, w, (), state, stats, inf))(updates, weights, infos)
    reduced = jax.tree.map(lambda a: a.sum(0), summands)
    cohort = CohortInfo(ids, jnp.ones(ids.shape[0], bool), rkey, jnp.int32(0))
    out, new_state, sm = agg.server(reduced, state, stats, cohort)
    return out, new_state, sm, m, stats, infos, reduced
