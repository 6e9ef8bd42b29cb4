"""A small model zoo: MLP, the MNIST CNN of McMahan et al. (2017), logistic and
linear regression. Every factory returns a ``jaxqfl.models.Model`` and takes a
quantization ``policy`` (``None`` / ``'none'`` = float).

Layer names are fixed (``Dense_0``, ``Conv_1``, ...) and identical with and
without a policy, so float parameters load into the QAT model unchanged and
policy rules (regexes on ``'Dense_0/kernel'``-style paths) read the same for
every model.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn

from jaxqfl.models.core import Model, from_flax


def _no_policy(policy) -> bool:
    return policy is None or (isinstance(policy, str) and policy == "none")


def _flatten(x):
    """[B, *feature_shape] -> [B, prod(feature_shape)]."""
    return x.reshape((x.shape[0], -1))


class MLP(nn.Module):
    """Flatten, then ``len(hidden)`` ReLU dense layers, then a linear output layer.

    ``hidden=()`` gives a single dense layer (logistic / linear regression).
    """

    hidden: Sequence[int] = (200, 200)
    num_outputs: int = 10
    layers: Any = None  # jaxqfl.models.layers.QATLayers, or None = float Flax layers

    @nn.compact
    def __call__(self, x):
        dense = nn.Dense if self.layers is None else self.layers.dense
        x = _flatten(x)
        for i, width in enumerate(self.hidden):
            x = nn.relu(dense(width, name=f"Dense_{i}")(x))
        return dense(self.num_outputs, name=f"Dense_{len(self.hidden)}")(x)


class CNN(nn.Module):
    """The MNIST CNN of McMahan et al. 2017 ("Communication-efficient learning of
    deep networks from decentralized data"), 1,663,370 parameters for 10 outputs:

    conv 5x5x32 'SAME' -> ReLU -> max-pool 2x2 -> conv 5x5x64 'SAME' -> ReLU ->
    max-pool 2x2 -> dense 512 -> ReLU -> dense num_outputs.

    Input ``[B, 28, 28, 1]`` or ``[B, 28, 28]`` (a channel axis is added).
    """

    num_outputs: int = 10
    layers: Any = None

    @nn.compact
    def __call__(self, x):
        conv = nn.Conv if self.layers is None else self.layers.conv
        dense = nn.Dense if self.layers is None else self.layers.dense
        if x.ndim == 3:  # [B, H, W] -> [B, H, W, 1]
            x = x[..., None]
        x = nn.relu(conv(32, (5, 5), padding="SAME", name="Conv_0")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))  # [B, 14, 14, 32]
        x = nn.relu(conv(64, (5, 5), padding="SAME", name="Conv_1")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))  # [B, 7, 7, 64]
        x = _flatten(x)  # [B, 3136]
        x = nn.relu(dense(512, name="Dense_0")(x))
        return dense(self.num_outputs, name="Dense_1")(x)


def _build(module_fn, policy) -> Model:
    """Float module when there is no policy, else the QAT twin (same param paths)."""
    if _no_policy(policy):
        return from_flax(module_fn(None))
    from jaxqfl.models.qat import qat_model

    return qat_model(module_fn, policy)


def mlp(hidden: Sequence[int] = (200, 200), num_outputs: int = 10, policy=None) -> Model:
    """Multi-layer perceptron on the flattened input, ReLU activations.

    The default is the "2NN" of McMahan et al. 2017 (199,210 parameters on MNIST).
    """
    hidden = tuple(int(h) for h in hidden)
    return _build(lambda layers: MLP(hidden=hidden, num_outputs=num_outputs, layers=layers), policy)


def cnn(num_outputs: int = 10, policy=None) -> Model:
    """The MNIST CNN of McMahan et al. 2017 (see ``CNN``)."""
    return _build(lambda layers: CNN(num_outputs=num_outputs, layers=layers), policy)


def logistic_regression(num_outputs: int, policy=None) -> Model:
    """One dense layer on the flattened input; outputs logits ``W x + b`` (softmax
    lives in the loss)."""
    return _build(lambda layers: MLP(hidden=(), num_outputs=num_outputs, layers=layers), policy)


def linear_regression(num_outputs: int = 1, policy=None) -> Model:
    """One dense layer on the flattened input: ``y = W x + b``, ``[B, num_outputs]``."""
    return _build(lambda layers: MLP(hidden=(), num_outputs=num_outputs, layers=layers), policy)
