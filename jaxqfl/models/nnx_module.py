"""A Flax NNX module as a ``Model``: parameters, BatchNorm statistics and dropout streams.

``from_nnx(module, policy=None, *, batch_stats=None)`` splits the module once
into its graph and its state::

    nnx.Param      -> params (a nested dict by attribute path, 'linear1/kernel')
    nnx.BatchStat  -> params['batch_stats'] (running statistics: jaxqfl.models.stats)
    nnx.RngState   -> the module's own random streams (nnx.Dropout's), re-keyed per call
    anything else  -> refused, naming it

``apply(params, x, *, key)`` merges the values back into the graph and calls
the module, in training mode (``module.train()``: dropout on, BatchNorm on the
batch's moments) when a key is given (every local step) and in evaluation mode
(``module.eval()``: dropout off, running statistics) without one (evaluation).

Dropout keys: every ``nnx.RngKey`` the module holds (a stream at path ``p``,
e.g. ``'drop/rngs/key'``) is replaced, in each training call, by
``fold_in(purpose_key(key, keys.DROPOUT), crc32(p))`` with its count reset to
0, where ``key`` is the model key of the client's local step
(``jaxqfl.keys``): each client and step draws its own masks, whatever the
devices or chunks. The module's own seeds (``nnx.Rngs(0)``) only choose the
initial parameters.

BatchNorm (``batch_stats="local"``, ``"fedbn"`` or ``"averaged"``, as in
``from_flax``; ``jaxqfl.models.stats``): ``train_apply`` returns the running
statistics the training call left in the module; given a row ``mask`` it
takes each ``nnx.BatchNorm``'s moments over the real rows (its own
``mask=``), by calling it through a subclass for that call.
"""
from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp

from jaxqfl import keys
from jaxqfl.models import stats
from jaxqfl.models.core import Model, _quantized


def _path(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def from_nnx(module, policy=None, *, batch_stats: str | None = None) -> Model:
    """Wrap a Flax NNX module (module docstring); a ``policy`` quantizes it by interception.

    ``init`` returns the values the module was built with (construct it with
    ``nnx.Rngs(seed)`` to choose them; ``init``'s key is not used). Rule paths
    are the NNX attribute paths, e.g. ``'linear1/kernel'``.
    """
    from flax import nnx

    name = type(module).__name__
    if batch_stats is not None and batch_stats not in stats.MODES:
        raise ValueError(f"from_nnx: batch_stats must be None or one of {stats.MODES}, got {batch_stats!r}")
    graphdef, params, statistics, streams, rest = nnx.split(module, nnx.Param, nnx.BatchStat, nnx.RngState, ...)
    other = [_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(rest))]
    if other:
        raise ValueError(f"from_nnx: module {name} holds state that is neither nnx.Param, nnx.BatchStat nor an "
                         f"RNG stream at {other}; it is not supported")
    has_stats = bool(jax.tree_util.tree_leaves(nnx.to_pure_dict(statistics)))
    if has_stats and batch_stats is None:
        raise ValueError(f"from_nnx: module {name} has nnx.BatchStat state (BatchNorm): pass batch_stats='local' "
                         "(SiloBN), 'fedbn' or 'averaged'")
    if batch_stats is not None and not has_stats:
        raise ValueError(f"from_nnx: batch_stats={batch_stats!r} was given but module {name} has no nnx.BatchStat")
    initial = nnx.to_pure_dict(params)
    if has_stats:
        if stats.STATS in initial:
            raise ValueError(f"from_nnx: module {name} has an attribute named '{stats.STATS}', a name reserved for "
                             "the running statistics")
        initial = stats.with_stats(initial, nnx.to_pure_dict(statistics))

    def filled(template, values):
        state = nnx.State(template)  # a structure to fill: same paths as the module's
        # JAX arrays: NNX writes statistics into a NumPy value in place, which would change the caller's params
        nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, values))
        return state

    def rekeyed(key):
        """The RNG streams of a training call: per-path keys from the step's dropout key, counts 0."""
        dropout = keys.purpose_key(key, keys.DROPOUT)

        def one(path, value):
            if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
                return jax.random.fold_in(dropout, zlib.crc32(_path(path).encode()) & 0x7FFFFFFF)
            return jnp.zeros_like(value)  # the stream's draw count

        return filled(streams, jax.tree_util.tree_map_with_path(one, nnx.to_pure_dict(streams)))

    def module_of(params_dict, key, training: bool, mask=None):
        trainable, running = stats.split(params_dict) if has_stats else (params_dict, None)
        parts = [filled(params, trainable), filled(statistics, running) if has_stats else statistics,
                 rekeyed(key) if key is not None else streams, rest]
        m = nnx.merge(graphdef, *parts)
        m.train() if training else m.eval()
        if mask is not None:  # BatchNorm moments over the real rows (jaxqfl.models.stats, padding rows)
            for _, node in nnx.iter_graph(m):
                if isinstance(node, nnx.BatchNorm):
                    node.__class__ = _row_masked(type(node), mask)
        return m

    def init(key, sample_x):
        del key, sample_x
        return jax.tree_util.tree_map(lambda a: a, initial)

    def apply(params_dict, x, *, key=None):
        if has_stats and key is not None:  # the training forward, statistics discarded
            return train_apply(params_dict, x, key=key)[0]
        return module_of(params_dict, key, key is not None)(x)

    def train_apply(params_dict, x, *, key=None, mask=None):  # mask [B]: the rows BatchNorm's moments count
        m = module_of(params_dict, key, True, mask)
        out = m(x)
        return out, nnx.to_pure_dict(nnx.state(m, nnx.BatchStat))

    model = Model(init=init, apply=apply, train_apply=train_apply if has_stats else None,
                  local_stats=batch_stats in ("local", "fedbn"), local_layers=batch_stats == "fedbn")
    return _quantized(model, policy)



def _row_masked(cls, mask):
    """A subclass of the BatchNorm class ``cls`` whose calls take their moments over ``mask``'s rows only."""

    class RowMasked(cls):
        def __call__(self, x, use_running_average=None, *, mask=None):
            return super().__call__(x, use_running_average, mask=stats.row_mask_for(rows, x, mask))

    rows = mask
    RowMasked.__name__ = RowMasked.__qualname__ = cls.__name__
    return RowMasked
