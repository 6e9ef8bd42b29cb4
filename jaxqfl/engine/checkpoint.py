"""Checkpoints of a run through ``orbax-checkpoint``: the whole run state plus a JSON record.

A checkpoint at round ``r`` is ``DIR/<r>/`` (orbax's ``CheckpointManager``
layout, written to a temporary folder and renamed when complete, so a process
killed while saving leaves the previous checkpoint intact) with two items:

* ``state``: the run state as a pytree of arrays (``_tree``). A run state is a
  ``ServerState`` (synchronous rounds) or a pytree holding one, e.g. FedBuff's
  ``FedBuffState`` (server state, in-flight table, last flush time). A
  ``ServerState`` is written as the dict of its fields: params, algorithm and
  aggregator states, every per-client state (host-home NumPy rows included), the
  round, and the run key as its raw ``jax.random.key_data`` under ``key_data``.
  Every other typed PRNG key of the state (FedBuff's in-flight clients' keys) is
  written in place as its key data. A typed key is not an array orbax can write;
  each is re-wrapped with the PRNG implementation of the template's key at the
  same place on restore.
* ``meta``: JSON chosen by the caller (the CLI stores the config, its
  fingerprint, the bit totals, the clock and the records so far; FedBuff adds
  its staleness histogram).

A sweep's config-stacked state (every leaf ``[S, ...]``, ``SweepSimulation.init()``)
is saved and restored the same way; its step is the round all its configs share.

Restoring needs a template state (``Simulation.init(seed)``): the arrays come
back with the template's structure, shapes, dtypes and shardings, so the resumed
run's programs are the uninterrupted run's and results match bit for bit.

The final global model is written separately by ``save_params`` as Flax msgpack
(``final_params.msgpack``) and read back with one call, ``load_final_model(run_dir)``.
"""
from __future__ import annotations

import pathlib

import jax
import numpy as np

from jaxqfl.engine.state import ServerState

FINAL_PARAMS = "final_params.msgpack"


def _is_key(a) -> bool:
    return hasattr(a, "dtype") and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)


def _server_or_key(x) -> bool:
    return isinstance(x, ServerState) or _is_key(x)


def _key_data(tree):
    return jax.tree.map(lambda a: jax.random.key_data(a) if _is_key(a) else a, tree)


def _tree(state) -> object:
    """The pytree orbax writes for the run state ``state`` (a ``ServerState`` or a pytree holding one).

    A ``ServerState`` becomes the dict of its fields with its key as ``key_data`` (the layout
    of every checkpoint so far); any other typed key becomes its key data in place.
    """

    def disk(x):
        if isinstance(x, ServerState):
            return {"params": _key_data(x.params), "algorithm_state": _key_data(x.algorithm_state),
                    "aggregator_state": _key_data(x.aggregator_state),
                    "client_states": _key_data(x.client_states), "round": x.round,
                    "key_data": jax.random.key_data(x.key)}
        return jax.random.key_data(x) if _is_key(x) else x

    return jax.tree.map(disk, state, is_leaf=_server_or_key)


def _one_replica(tree):
    """``tree`` with each array replicated over several devices of this process as its first device's copy.

    orbax writes a replicated array in slices, one per replica ("replica-parallel" saving), and cuts them
    with a compiled slicing program per array shape: on a first run (nothing in the compilation cache)
    that is 6 compilations, 0.14 s of the default 10-round run on a 2-core CPU, for one process that
    writes every byte anyway. The first device's copy holds the same values (nothing is copied), orbax
    writes it whole, and :func:`restore` places the arrays by the template's shardings as before. Several
    processes (``jax.distributed``) keep orbax's own layout: there each process writes its share.
    """
    if jax.process_count() > 1:
        return tree

    def one(a):
        if isinstance(a, jax.Array) and len(a.sharding.device_set) > 1 and a.is_fully_replicated:
            return a.addressable_shards[0].data
        return a

    return jax.tree.map(one, tree)


def _untree(template, tree):
    """The inverse of ``_tree``: ``tree`` (as orbax restored it) in ``template``'s types, keys wrapped back."""

    def wrap(t, data):
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(t)) if _is_key(t) else data

    def keys_back(t, x):  # a part without keys comes back as orbax gives it (the layout of every checkpoint so far)
        return jax.tree.map(wrap, t, x, is_leaf=_is_key) if any(map(_is_key, jax.tree.leaves(t))) else x

    def back(t, x):
        if isinstance(t, ServerState):
            return ServerState(*(keys_back(getattr(t, f), x[f]) for f in ServerState._fields[:-1]),
                               wrap(t.key, x["key_data"]))
        return wrap(t, x)

    return jax.tree.map(back, template, tree, is_leaf=_server_or_key)


def load_in_background() -> None:
    """Import orbax-checkpoint on a thread now, so that the run's first ``save`` finds it loaded.

    The import takes 0.2-0.3 s on a 2-core CPU once JAX is loaded; a run starts it before compiling
    (the compiler and the rounds release the GIL, so it costs the run almost nothing). An import
    error here is left for the first ``save`` to raise, where it is handled.
    """
    import sys
    import threading

    if "orbax.checkpoint" in sys.modules:
        return

    def load():
        try:
            import orbax.checkpoint  # noqa: F401
        except Exception:  # raised again, where it is handled, by the first save
            pass

    # Not a daemon: the interpreter waits for the import before it exits. A run refused meanwhile (0.2-0.3 s)
    # otherwise tore the import down mid-way, and the process aborted ("terminate called ...", status 134).
    threading.Thread(target=load, name="jaxqfl-orbax-import").start()


def _manager(directory, keep: int | None):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False, create=True)
    return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


def save(directory, state, meta: dict, *, keep: int | None = 2) -> int:
    """Write a checkpoint of the run state ``state`` (and the JSON-able ``meta``) at its round; returns the round.

    ``state``: a ``ServerState``, a sweep's stacked one, or a state with a ``round`` holding one
    (``FedBuffState``).

    Synchronous: when it returns the files are complete (the caller may then donate
    ``state``'s buffers to the next block). Keeps the ``keep`` latest checkpoints.
    """
    import orbax.checkpoint as ocp

    step = int(np.max(np.asarray(jax.device_get(state.round))))  # a sweep's states: one round, [S] copies
    with _manager(directory, keep) as mgr:
        mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_one_replica(_tree(state))),
                                               meta=ocp.args.JsonSave(meta)), force=True)
        mgr.wait_until_finished()
    return step


def latest_round(directory) -> int | None:
    """The round of the newest complete checkpoint in ``directory`` (None when there is none)."""
    if not pathlib.Path(directory).is_dir():
        return None
    with _manager(directory, None) as mgr:
        return mgr.latest_step()


def all_rounds(directory) -> list[int]:
    """The rounds of every complete checkpoint kept in ``directory``, oldest first."""
    if not pathlib.Path(directory).is_dir():
        return []
    with _manager(directory, None) as mgr:
        return sorted(mgr.all_steps())


def read_meta(directory, step: int | None = None) -> dict:
    """The JSON record of the checkpoint at ``step`` (default: the latest)."""
    import orbax.checkpoint as ocp

    with _manager(directory, None) as mgr:
        step = mgr.latest_step() if step is None else step
        return mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore(directory, template, step: int | None = None) -> tuple[object, dict]:
    """``(state, meta)`` of the checkpoint at ``step`` (default: the latest), shaped and placed like ``template``.

    ``template``: a state of the same run (``Simulation.init(seed)``, any seed): a ``ServerState``
    or a ``FedBuffState``; the state comes back of its type.
    """
    import orbax.checkpoint as ocp

    def abstract(a):
        if isinstance(a, np.ndarray):
            return np.zeros(a.shape, a.dtype)  # host-home rows come back as NumPy
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding)

    target = jax.tree.map(abstract, _tree(template))
    with _manager(directory, None) as mgr:
        step = mgr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        got = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                        meta=ocp.args.JsonRestore()))
    return _untree(template, got["state"]), got["meta"]


def save_params(path, params) -> None:
    """Write ``params`` as Flax msgpack (``jaxqfl.models.serialization.save_params``)."""
    from jaxqfl.models.serialization import save_params as write

    write(path, jax.device_get(params))


def load_final_model(run_dir):
    """The final global model of a run: the params pytree (nested dicts of NumPy arrays).

    ``params = jaxqfl.load_final_model("runs/my-run")``; use it with the run's model,
    e.g. ``model.apply(params, x, key=None)``.
    """
    from jaxqfl.models.serialization import load_params

    path = pathlib.Path(run_dir)
    path = path / FINAL_PARAMS if path.is_dir() else path
    if not path.is_file():
        sweep = (path.parent / "sweep.json").is_file()
        raise FileNotFoundError(f"no {FINAL_PARAMS} in {run_dir}: " + (
            "a sweep keeps one model per config, in its config folders (e.g. seed=0/)" if sweep
            else "is it a jaxqfl run folder?"))
    try:
        params = load_params(path)
    except Exception as e:  # msgpack's and flax's errors for a truncated or foreign file
        raise ValueError(f"{str(path)!r} is not a readable params file ({type(e).__name__}: {e}); a run writes "
                         f"it as {FINAL_PARAMS}") from None
    if not isinstance(params, dict):
        raise ValueError(f"{str(path)!r} holds a {type(params).__name__}, not a model's params")
    return params
