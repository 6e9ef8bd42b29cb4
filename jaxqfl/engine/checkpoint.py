"""Checkpoints of a run through ``orbax-checkpoint``: the whole ``ServerState`` plus a JSON record.

A checkpoint at round ``r`` is ``DIR/<r>/`` (orbax's ``CheckpointManager``
layout, written to a temporary folder and renamed when complete, so a process
killed while saving leaves the previous checkpoint intact) with two items:

* ``state``: ``ServerState`` as a pytree of arrays: params, algorithm and
  aggregator states, every per-client state (host-home NumPy rows included),
  the round, and the run key as its raw ``jax.random.key_data`` (a typed key is
  not an array orbax can write; it is re-wrapped with the template's PRNG
  implementation on restore).
* ``meta``: JSON chosen by the caller (the CLI stores the config, its
  fingerprint, the bit totals and the records so far).

A sweep's config-stacked state (every leaf ``[S, ...]``, ``SweepSimulation.init()``)
is saved and restored the same way; its step is the round all its configs share.

Restoring needs a template state (``Simulation.init(seed)``): the arrays come
back with the template's shapes, dtypes and shardings, so the resumed run's
programs are the uninterrupted run's and results match bit for bit.

The final global model is written separately by ``save_params`` as Flax msgpack
(``final_params.msgpack``) and read back with one call, ``load_final_model(run_dir)``.
"""
from __future__ import annotations

import pathlib

import jax
import numpy as np

from jaxqfl.engine.state import ServerState

FINAL_PARAMS = "final_params.msgpack"


def _tree(state: ServerState) -> dict:
    return {"params": state.params, "algorithm_state": state.algorithm_state,
            "aggregator_state": state.aggregator_state, "client_states": state.client_states,
            "round": state.round, "key_data": jax.random.key_data(state.key)}


def _manager(directory, keep: int | None):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False, create=True)
    return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


def save(directory, state: ServerState, meta: dict, *, keep: int | None = 2) -> int:
    """Write a checkpoint of ``state`` (and the JSON-able ``meta``) at its round; returns the round.

    Synchronous: when it returns the files are complete (the caller may then donate
    ``state``'s buffers to the next block). Keeps the ``keep`` latest checkpoints.
    """
    import orbax.checkpoint as ocp

    step = int(np.max(np.asarray(jax.device_get(state.round))))  # a sweep's states: one round, [S] copies
    with _manager(directory, keep) as mgr:
        mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_tree(state)),
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


def restore(directory, template: ServerState, step: int | None = None) -> tuple[ServerState, dict]:
    """``(state, meta)`` of the checkpoint at ``step`` (default: the latest), shaped and placed like ``template``."""
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
    tree = got["state"]
    key = jax.random.wrap_key_data(tree["key_data"], impl=jax.random.key_impl(template.key))
    state = ServerState(tree["params"], tree["algorithm_state"], tree["aggregator_state"], tree["client_states"],
                        tree["round"], key)
    return state, got["meta"]


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
        raise FileNotFoundError(f"no {FINAL_PARAMS} in {run_dir}: is it a jaxqfl run folder?")
    return load_params(path)
