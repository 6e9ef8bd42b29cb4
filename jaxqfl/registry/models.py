"""The built-in models (``--model``): one entry each (see ``jaxqfl.registry``).

An entry holds the model's name, its one-line doc, its factory ``build(settings, num_outputs, feature_shape,
policy) -> jaxqfl.models.Model`` (the ``jaxqfl.models`` factory, imported when called; ``policy``: a
``--quant`` preset or None), the size settings it reads (``sizes``: ``--hidden``, ``--lstm-hidden``, ...,
attributes of ``settings``), ``graph(settings)``: its layer graph for the post-training quantization tools
(None: a zoo model, which they do not rebuild), ``zoo``: a ``jaxqfl.models`` zoo model sized from the data's
feature shape and vocabulary (``jaxqfl.experiment.model_rules``), and ``tokens``: it predicts the next token
(next-token data takes these models only, and these models take next-token data only).

Which model a dataset trains by default is its entry's (``jaxqfl.registry.datasets``). Importing this
registry starts no JAX: factories import ``jaxqfl.models`` when called.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

from jaxqfl.registry import check_unique


class ModelEntry(NamedTuple):
    name: str
    doc: str
    build: Callable[..., Any]  # (settings, num_outputs, feature_shape, policy) -> jaxqfl.models.Model
    sizes: tuple = ()  # the size settings it reads
    graph: Optional[Callable[[Any], tuple]] = None  # settings -> its layer graph (jaxqfl.models.graphs)
    zoo: bool = False
    tokens: bool = False
    hyper: tuple = ()  # its sizes are plain settings with defaults (jaxqfl.experiment.training_settings.Zoo)


def _mlp(s, k, shape, policy):
    from jaxqfl import models

    return models.mlp(hidden=tuple(int(h) for h in s.hidden), num_outputs=k, policy=policy)


def _cnn(s, k, shape, policy):
    from jaxqfl import models

    return models.cnn(num_outputs=k, policy=policy)


def _dense(s, k, shape, policy):
    from jaxqfl import models

    return models.logistic_regression(num_outputs=k, policy=policy)


def _resnet20(s, k, shape, policy):
    from jaxqfl import models

    return models.resnet20(num_outputs=k, groups=s.resnet_groups, policy=policy)


def _lstm(s, k, shape, policy):
    from jaxqfl import models

    return models.char_lstm(vocab=k, embed_dim=s.embed_dim, hidden=s.lstm_hidden, layers=s.lstm_layers,
                            policy=policy)


def _transformer(s, k, shape, policy):
    from jaxqfl import models

    return models.transformer(vocab=k, width=s.transformer_width, depth=s.transformer_depth,
                              heads=s.transformer_heads, context=shape[0], policy=policy)


def _graph(name: str, hidden: bool = False, layers: int | None = None):
    def graph(s) -> tuple:
        from jaxqfl import models

        make = getattr(models, name)
        return make(len(s.hidden)) if hidden else (make() if layers is None else make(layers))

    return graph


ENTRIES = (
    ModelEntry("mlp", "a ReLU multi-layer perceptron (--hidden)", _mlp, ("hidden",),
               _graph("mlp_graph", hidden=True)),
    ModelEntry("cnn", "the MNIST CNN of McMahan et al. 2017 (28 x 28 images)", _cnn, (), _graph("cnn_graph")),
    ModelEntry("logreg", "one dense layer, softmax", _dense, (), _graph("mlp_graph", layers=0)),
    ModelEntry("linear", "one dense layer (= logreg) for regression targets", _dense, (),
               _graph("mlp_graph", layers=0)),
    ModelEntry("resnet20", "ResNet-20 with GroupNorm (--resnet-groups) for images", _resnet20, ("resnet_groups",),
               zoo=True),
    ModelEntry("lstm", "the character LSTM of McMahan et al. 2017", _lstm,
               ("embed_dim", "lstm_hidden", "lstm_layers"), zoo=True, tokens=True),
    ModelEntry("transformer", "a small decoder-only transformer", _transformer,
               ("transformer_width", "transformer_depth", "transformer_heads"), zoo=True, tokens=True),
)
check_unique(ENTRIES, "model")
BY_NAME = {e.name: e for e in ENTRIES}
NAMES = tuple(BY_NAME)
