"""A saved run's data and model, rebuilt exactly from its config.

``jaxqfl run`` writes the resolved config (every data and model setting, defaults
filled in) into ``OUT/summary.json`` (key ``"config"``) and ``OUT/config.toml``.
``rebuild(config)`` turns it back into the run's population (the same generator
settings: Synthetic alpha and beta, features, client sizes, mixture settings;
the same file, partition and seed) and the run's model, so that the saved final
parameters evaluate on the run's own test set:

    run = jaxqfl.saved_run.load("runs/my-run")
    params = jaxqfl.load_final_model("runs/my-run")
    logits = run.model.apply(params, run.population.x_test)

A sweep's population is built once from its first seed (``jaxqfl run --seeds``),
so a config with ``seeds`` rebuilds from ``seeds[0]``.
"""
from __future__ import annotations

import json
import pathlib
import tomllib
from typing import NamedTuple

import numpy as np

from jaxqfl.registry import models as _model_registry

#: config key (the ``jaxqfl run`` flag) -> ``jaxqfl.data.build`` keyword; absent or null keys take
#: ``build``'s defaults, which are the flags' defaults.
DATA_KEYS = {
    "num_clients": "num_clients", "partition": "partition", "alpha": "alpha",
    "shards_per_client": "shards_per_client", "sigma": "sigma", "data_path": "data_path",
    "synthetic_alpha": "synthetic_alpha", "synthetic_beta": "synthetic_beta", "task": "task",
    "client_size_mean": "size_mean", "client_size_sigma": "size_sigma", "min_client_size": "min_size",
    "max_client_size": "max_size", "num_outputs": "num_outputs", "noise": "noise", "components": "components",
    "concentration": "concentration", "separation": "separation", "num_features": "num_features",
}
#: The models it rebuilds: the entries of ``jaxqfl.registry.models`` with a layer graph (not the zoo's).
MODELS = tuple(e.name for e in _model_registry.ENTRIES if e.graph is not None)


class RebuiltRun(NamedTuple):
    """``model``: the run's model (its ``quant`` policy, as trained and evaluated);
    ``float_model``: the same architecture without quantization; ``graph``: its layer
    graph (``jaxqfl.models.mlp_graph`` / ``cnn_graph``) for post-training quantization."""

    config: dict
    population: object
    model: object
    float_model: object
    graph: tuple


def read_config(run_dir) -> dict:
    """The config of a run folder: ``summary.json``'s ``"config"``, else ``config.toml``.

    Raises ``ValueError`` naming the file when neither holds a config.
    """
    run = pathlib.Path(run_dir)
    summary, toml = run / "summary.json", run / "config.toml"
    if summary.is_file():
        try:
            config = json.loads(summary.read_text())["config"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise ValueError(f"{summary}: not a jaxqfl run summary ({type(e).__name__}: {e})") from None
        if not isinstance(config, dict):
            raise ValueError(f"{summary}: its 'config' is not a table of settings")
        return config
    if toml.is_file():
        try:
            return {k.replace("-", "_"): v for k, v in tomllib.loads(toml.read_text()).items()}
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{toml}: not valid TOML ({e})") from None
    raise ValueError(f"{run_dir!r} has neither summary.json nor config.toml: is it a jaxqfl run folder?")


def data_kwargs(config: dict) -> dict:
    """``jaxqfl.data.build``'s keywords for the run's population (dataset and seed included)."""
    kwargs = {DATA_KEYS[k]: v for k, v in config.items() if k in DATA_KEYS and v is not None}
    kwargs.setdefault("num_clients", None)
    seeds = config.get("seeds")
    kwargs["seed"] = int(seeds[0]) if seeds else int(config.get("seed") or 0)
    return {"dataset": config.get("dataset", "synthetic"), **kwargs}


def model_for(name: str, population, *, hidden=(200, 200), policy=None):
    """The ``jaxqfl.models`` model ``name`` sized for ``population``'s outputs; ``(model, graph)``.

    Outputs: the number of classes, or for regression the target dimension
    (``prod(y.shape[1:])``, 1 for targets ``[N]``).
    """
    from types import SimpleNamespace

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed models are {', '.join(MODELS)}")
    if population.task == "regression":
        k = int(np.prod(population.y.shape[1:], dtype=np.int64))
    else:
        k = population.num_classes
    entry, sizes = _model_registry.BY_NAME[name], SimpleNamespace(hidden=hidden)  # the sizes it reads
    return entry.build(sizes, k, population.feature_shape, policy), entry.graph(sizes)


def rebuild(config: dict) -> RebuiltRun:
    """The run's population and model from its saved ``config`` (module docstring).

    Raises ``ValueError`` (or ``OSError`` for a data file that is gone) naming the setting.
    """
    from jaxqfl import data

    population = data.build(**data_kwargs(config))
    name = config.get("model")
    hidden = config.get("hidden") or (200, 200)
    quant = config.get("quant")
    policy = None if quant in (None, "none") else quant
    model, graph = model_for(name, population, hidden=hidden, policy=policy)
    float_model, _ = model_for(name, population, hidden=hidden)
    return RebuiltRun(config, population, model, float_model, graph)


def check_params(run: RebuiltRun, params: dict, source: str = "params") -> None:
    """Refuse ``params`` that do not fit ``run.float_model`` (e.g. another run's file), naming the parameter
    and both shapes; ``ValueError``. Shapes only: nothing is compiled."""
    import jax

    x = run.population.x_test[:1]
    want = jax.eval_shape(run.float_model.init, jax.random.key(0), x)
    flat_want = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(want)}
    flat_got = {jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}
    for name in sorted(set(flat_want) | set(flat_got)):
        if flat_want.get(name) != flat_got.get(name):
            raise ValueError(f"{source}: parameter {name} has shape {flat_got.get(name)}, but the run's model "
                             f"rebuilt from its config needs {flat_want.get(name)}; the file is not this run's")


def load(run_dir) -> RebuiltRun:
    """``rebuild(read_config(run_dir))``."""
    return rebuild(read_config(run_dir))
