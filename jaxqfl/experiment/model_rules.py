"""The zoo models of ``jaxqfl run``: ``--model resnet20|lstm|transformer`` and their size flags.

Checked before JAX starts (``validate``); ``make_model`` builds the model for the
population (the library's factories in ``jaxqfl.models``).

- ``resnet20``: ResNet-20 with GroupNorm (``--resnet-groups``) for images ``[H, W, C]``.
- ``lstm``: the character LSTM of McMahan et al. 2017 (``--lstm-hidden``, ``--lstm-layers``,
  ``--embed-dim``) for next-token data.
- ``transformer``: a decoder-only transformer (``--transformer-width``, ``--transformer-depth``,
  ``--transformer-heads``) for next-token data; its context is the data's window length.

``--context`` sets the window length of ``--dataset text`` (LEAF text rows keep their own length).
"""
from __future__ import annotations

from jaxqfl.experiment.resolved import Refuser, Settings

from jaxqfl import choices
from jaxqfl.registry import attacks as attack_registry
from jaxqfl.registry import models as registry

#: The zoo models this module builds (entries of ``jaxqfl.registry.models``).
ZOO_MODELS = choices.ZOO_MODELS
#: The models of next-token data.
SEQUENCE_MODELS = tuple(e.name for e in registry.ENTRIES if e.tokens)
#: Datasets that hold images a ResNet can read.
IMAGE_DATASETS = ("cifar10", "mnist", "npz", "leaf", "packed")


def validate(refuser: Refuser, args: Settings, task: str | None) -> None:
    """Refuse a zoo model that does not fit the data, or flags that do not fit the model."""
    model = args.model
    next_token = task == "next-token"
    if next_token and model not in SEQUENCE_MODELS:
        refuser.error(f"--model {model} does not predict tokens; next-token data (--dataset {args.dataset}) needs "
                       f"--model {' or '.join(SEQUENCE_MODELS)}")
    if model in SEQUENCE_MODELS and not next_token:
        refuser.error(f"--model {model} predicts the next token; use it with --dataset text (or --dataset leaf "
                       f"--task next-token), not --dataset {args.dataset}")
    if model == "resnet20" and args.dataset not in IMAGE_DATASETS:
        refuser.error(f"--model resnet20 reads images; use it with --dataset {', '.join(IMAGE_DATASETS)}, "
                       f"not {args.dataset}")
    if model == "resnet20" and 16 % args.resnet_groups:
        refuser.error(f"--resnet-groups {args.resnet_groups} must divide 16 (the narrowest layer's channels)")
    if model == "transformer" and args.transformer_width % args.transformer_heads:
        refuser.error(f"--transformer-width {args.transformer_width} is not a multiple of --transformer-heads "
                       f"{args.transformer_heads}")
    if args.dataset != "text" and args.entries_per_client is not None:
        refuser.error("--entries-per-client applies to --dataset text only")
    attack = attack_registry.BY_NAME.get(getattr(args, "attack", "none"))
    if next_token and attack is not None and attack.flips_labels:
        refuser.error(f"--attack {attack.name} relabels classes (y -> K - 1 - y); next-token targets hold padding "
                       "(-1) and are no classes: choose another --attack")


def misfit(args: Settings, population) -> str | None:
    """Why the zoo model ``args.model`` cannot read ``population``'s examples, or None."""
    if args.model == "resnet20" and len(population.feature_shape) not in (2, 3):
        return (f"--model resnet20 reads images [H, W] or [H, W, C]; {population.name} holds examples of shape "
                f"{list(population.feature_shape)}")
    return None


def make_model(args: Settings, num_classes: int, feature_shape: tuple, policy=None):
    """The zoo model ``args.model`` for ``num_classes`` outputs (the vocabulary) and examples of ``feature_shape``."""
    return registry.BY_NAME[args.model].build(args, num_classes, feature_shape, policy)


def num_params(args: Settings, feature_shape: tuple, num_classes: int) -> int:
    """Parameters of the float zoo model ``args.model`` (from its abstract init; nothing is computed)."""
    import jax
    import jax.numpy as jnp

    from jaxqfl import keys

    model = make_model(args, num_classes, feature_shape)
    x = jax.ShapeDtypeStruct((1,) + tuple(feature_shape), jnp.float32)
    shapes = jax.eval_shape(model.init, keys.abstract_key(), x)
    return sum(int(a.size) for a in jax.tree.leaves(shapes))
