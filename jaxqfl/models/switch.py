"""One model per client, chosen by a traced index: a tier's quantization-aware forward.

``switch(models, index)`` applies ``models[index]`` for a traced integer
``index`` (a client's tier) with ``lax.switch``: one branch runs when the index
is a single value; under the engine's ``vmap`` over clients (a batched index)
JAX evaluates every branch and selects per client, so a cohort of T tiers
costs T forward and backward passes. The models must share their parameters
(the QAT presets of one architecture, except ``lsq4`` which adds its own):
``init`` is ``models[0]``'s. Models with running statistics or a frozen part
are refused (a tier would change what they keep).
"""
from __future__ import annotations

from typing import Sequence

import jax

from jaxqfl.models.core import Model


def check_switchable(models: Sequence[Model], sample_x, names: Sequence[str] | None = None) -> None:
    """Refuse models whose parameters differ, or that keep statistics or a frozen part, naming them."""
    names = list(names) if names is not None else [f"model {i}" for i in range(len(models))]
    shapes = [jax.eval_shape(m.init, jax.random.key(0), sample_x) for m in models]
    for name, m, s in zip(names, models, shapes):
        if m.train_apply is not None or m.bind is not None:
            raise ValueError(f"{name}: a model with running statistics (BatchNorm) or a frozen base (LoRA) cannot "
                             f"differ per client tier")
        if jax.tree.structure(s) != jax.tree.structure(shapes[0]) or any(
                a.shape != b.shape or a.dtype != b.dtype for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(shapes[0]))):
            raise ValueError(f"{name} has other parameters than {names[0]} (e.g. lsq4's learned scales); client "
                             f"tiers must share one set of parameters")


def switch(models: Sequence[Model], index) -> Model:
    """The model ``models[index]`` for a traced int32 ``index`` (module docstring)."""
    models = tuple(models)
    branches = [lambda p, x, k, m=m: m.apply(p, x, key=k) for m in models]

    def apply(params, x, *, key=None):
        return jax.lax.switch(index, branches, params, x, key)

    return Model(init=models[0].init, apply=apply)
