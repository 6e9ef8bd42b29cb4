"""Starting from pretrained parameters: read them from what any Flax training wrote, check them, use them.

``load_pretrained(source, model, sample_x)`` reads ``source``, one of

* a params file in Flax msgpack (``flax.serialization.msgpack_serialize`` of the
  params dict, as ``jaxqfl.models.serialization.save_params`` and most Flax
  training scripts write; a ``{'params': ...}`` variables dict is unwrapped);
* a jaxqfl run folder (its ``final_params.msgpack``);
* an Orbax checkpoint folder of a params pytree (``ocp.StandardCheckpointer``
  or ``PyTreeCheckpointer``; a tree holding ``'params'`` is unwrapped),

and checks it against ``model``'s own parameters (from an abstract
``model.init``): every path present with the same shape, nothing extra. A
mismatch is refused naming the first differing paths and both shapes, before
anything trains. ``starting_from(model, params)`` is ``model`` whose ``init``
returns ``params`` (full fine-tuning from a pretrained model); ``jaxqfl.lora``
takes them as its frozen base instead.
"""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxqfl.models.core import Model
from jaxqfl.quant.policy import _key_name, param_paths

FINAL_PARAMS = "final_params.msgpack"  # a jaxqfl run folder's final model (jaxqfl.engine.checkpoint)


def _read(source: pathlib.Path):
    if source.is_dir():
        if (source / FINAL_PARAMS).is_file():
            source = source / FINAL_PARAMS
        else:
            import orbax.checkpoint as ocp

            try:
                return ocp.PyTreeCheckpointer().restore(source.resolve())
            except Exception as e:  # noqa: BLE001 -- any unreadable folder gets the same clear refusal
                raise ValueError(f"{source} is neither a jaxqfl run folder (no {FINAL_PARAMS}) nor an Orbax "
                                 f"checkpoint of a params pytree ({type(e).__name__}: {e})") from None
    if not source.is_file():
        raise FileNotFoundError(f"pretrained parameters not found: {source} is no file or folder")
    from flax import serialization

    try:
        return serialization.msgpack_restore(source.read_bytes())
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{source} is not a Flax msgpack params file ({type(e).__name__}: {e})") from None


def _mismatch(got: dict, want: dict) -> str | None:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    shapes = sorted(p for p in set(got) & set(want) if tuple(np.shape(got[p])) != tuple(want[p].shape))
    parts = []
    if missing:
        parts.append(f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    if extra:
        parts.append(f"not in the model {extra[:4]}{' ...' if len(extra) > 4 else ''}")
    if shapes:
        parts.append("shapes differ: " + ", ".join(f"{p} {tuple(np.shape(got[p]))} vs the model's "
                                                   f"{tuple(want[p].shape)}" for p in shapes[:4]))
    return "; ".join(parts) or None


def load_pretrained(source, model: Model, sample_x) -> dict:
    """The params at ``source`` (module docstring), checked against ``model``'s; float32 JAX arrays."""
    tree = _read(pathlib.Path(source))
    want = param_paths(jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(sample_x)))
    tree = jax.tree.map(np.asarray, tree)
    if not isinstance(tree, dict):
        raise ValueError(f"{source} holds a {type(tree).__name__}, not a params dict")
    if _mismatch(param_paths(tree), want) and isinstance(tree.get("params"), dict):
        tree = tree["params"]  # a variables dict or a training state: its params
    problem = _mismatch(param_paths(tree), want)
    if problem:
        raise ValueError(f"the parameters in {source} do not fit the model: {problem}")
    flat = param_paths(tree)
    return jax.tree_util.tree_map_with_path(  # the model's own structure, the file's values
        lambda path, leaf: jnp.asarray(flat["/".join(_key_name(k) for k in path)], leaf.dtype),
        jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(sample_x)))


def starting_from(model: Model, params) -> Model:
    """``model`` whose ``init`` returns ``params`` (whatever the key): training starts from them."""
    fixed = jax.tree.map(jnp.asarray, params)

    def init(key, sample_x):
        del key, sample_x
        return fixed

    return model._replace(init=init)


def initial_params(model: Model, sample_x, *, seed: int, source=None) -> dict:
    """``load_pretrained(source, ...)``, or without a ``source`` the model's init from the run key's INIT path."""
    if source is not None:
        return load_pretrained(source, model, sample_x)
    from jaxqfl import keys

    return model.init(keys.purpose_key(jax.random.key(int(seed)), keys.INIT), jnp.asarray(sample_x))


def train_centrally(model: Model, population, task, *, steps: int, batch: int, learning_rate: float = 3e-3,
                    seed: int = 0, log=None) -> dict:
    """Pretrain ``model`` on ``population``'s pooled rows: ``steps`` Adam steps of ``batch`` rows drawn uniformly.

    The centralised baseline a federated fine-tune starts from (``examples/pretrain_transformer.py``,
    ``benchmarks/lora.py``): init from ``jax.random.key(seed)``, the mean of ``task.loss``.
    """
    import optax

    for name, v in (("steps", steps), ("batch", batch)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"train_centrally: {name} must be a positive integer, got {v!r}")
    params = model.init(jax.random.key(seed), jnp.asarray(population.x[:1]))
    opt = optax.adam(learning_rate)
    opt_state = opt.init(params)

    @jax.jit
    def step(p, s, x, y):
        value, grads = jax.value_and_grad(lambda q: jnp.mean(task.loss(model.apply(q, x), y)))(p)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    rng = np.random.default_rng(seed)
    for i in range(steps):
        rows = rng.integers(0, population.x.shape[0], batch)
        params, opt_state, value = step(params, opt_state, population.x[rows], population.y[rows])
        if log is not None and ((i + 1) % 100 == 0 or i + 1 == steps):
            log(f"pretraining step {i + 1}: train loss {float(value):.3f}")
    return params
