"""One model per client, chosen by a traced index: a tier's quantization-aware forward.

``switch(models, index)`` applies ``models[index]`` for a traced integer
``index`` (a client's tier) with ``lax.switch``: one branch runs when the index
is a single value; under the engine's ``vmap`` over clients (a batched index)
JAX evaluates every branch and selects per client, so a cohort of T tiers
costs T forward and backward passes. The models must share their parameters
(the QAT presets of one architecture, except ``lsq4`` which adds its own):
``init`` is ``models[0]``'s. Models with running statistics or a frozen part
are refused (a tier would change what they keep).

Bit families cost one pass: when the tiers' presets differ only in the widths
of uniform quantizers (``jaxqfl.quant.bit_family``: ``full`` and ``w4a8``),
``family_model(make_model, presets)`` gives ``at(index) -> Model``, ONE model
whose quantizers read their widths from the traced index
(``uniform(table[index], max_bits=...)``, bit for bit the static quantizers'
values and gradients), and ``switch(models, index, at=at)`` returns ``at(index)``
instead of the ``lax.switch``: under the vmap each client runs one forward and
backward pass with its own widths, 1x the compute of one tier instead of T x.
``at`` is called inside the traced per-client function, with the client's
traced tier, so the model closes over that index (the way the ``lax.switch``
branches close over the models).

Measured (2-core CPU; MLP 64-256-256-10, vmap over 16 clients of 32 examples,
value and gradient): the lowered ``lax.switch`` program holds T x the matmuls of
the one-pass one, and after XLA's optimiser (which shares part of the backward)
costs 1.44 x its flops and 1.8 x its time for T = 2 (``full``/``w4a8``), 2.27 x
the flops and 2.25 x the time for T = 4 widths; a whole tiered round (T = 2, 5
local steps, cohort 16): 26.6 ms -> 17.5 ms.
"""
from __future__ import annotations

from typing import Callable, Sequence

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


def switch(models: Sequence[Model], index, *, at: Callable[..., Model] | None = None) -> Model:
    """The model ``models[index]`` for a traced int32 ``index`` (module docstring).

    ``at``: ``at(index) -> Model``, one model computing what ``models[index]`` computes
    for every index (a bit family's, :func:`family_model`); used instead of the
    ``lax.switch`` (1 x the compute instead of T x under a vmap over clients).
    """
    models = tuple(models)
    if at is not None:
        model = at(index)
        return model._replace(init=models[0].init)
    branches = [lambda p, x, k, m=m: m.apply(p, x, key=k) for m in models]

    def apply(params, x, *, key=None):
        return jax.lax.switch(index, branches, params, x, key)

    return Model(init=models[0].init, apply=apply)


def family_model(make_model: Callable[..., Model], presets: Sequence) -> Callable[..., Model] | None:
    """``at(index) -> Model`` for tiers whose presets form a bit family, else ``None``.

    Args:
      make_model: ``make_model(policy) -> Model``, the architecture quantized by a
        ``jaxqfl.quant.Policy`` (the same function that builds each tier's model from
        its preset name).
      presets: the tiers' preset names (or policies), tier ``t`` = member ``t``.

    Returns:
      ``None`` when the presets are not a bit family (``jaxqfl.quant.bit_family``), or
      when they are all the same preset (every tier then has one model already);
      else ``at`` with ``at(t)`` = ``make_model(family.policy(t))`` for a traced ``t``:
      per client ``uniform(b_t)`` weights / inputs with ``b_t`` looked up in the
      family's width table. It builds the model (cheap: a Flax module and its
      binding) every time it is called, i.e. once per trace of the per-client function.
    """
    from jaxqfl.quant.bit_family import bit_family

    presets = tuple(presets)
    if len(set(p if isinstance(p, str) else id(p) for p in presets)) < 2:
        return None
    family = bit_family(presets)
    if family is None:
        return None

    def at(index) -> Model:
        return make_model(family.policy(index))

    return at
