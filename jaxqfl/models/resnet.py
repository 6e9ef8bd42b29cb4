"""ResNet-20 for 32x32 images (CIFAR-10), with GroupNorm in place of BatchNorm.

He, Zhang, Ren, Sun. Deep Residual Learning for Image Recognition. CVPR 2016,
Section 4.2: a 3x3 convolution with 16 filters, then 3 stages of ``n`` basic
blocks (two 3x3 convolutions each) with 16, 32 and 64 filters on 32x32, 16x16
and 8x8 maps (the first convolution of stages 2 and 3 has stride 2), global
average pooling and a dense layer: ``6n + 2`` layers, ResNet-20 for ``n = 3``.
Shortcuts are identities; where the shape changes, the paper's option A: the
input subsampled by 2 and zero-padded to the new width (no parameters). With
10 classes the model has 269,722 parameters (the paper's "0.27M").

Normalisation: GroupNorm (Wu and He, ECCV 2018) after every convolution, as
federated learning uses instead of BatchNorm, whose batch statistics break
under non-IID client data (Hsieh, Phanishayee, Mutlu, Gibbons. The Non-IID Data
Quagmire of Decentralized Machine Learning. ICML 2020). ``groups`` channel
groups per layer: 2 by default, as in the federated ResNets of Reddi, Charles,
Zaheer, Garrett, Rush, Konečný, Kumar, McMahan (Adaptive Federated Optimization,
ICLR 2021). Its scale and bias are ordinary parameters.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxqfl.models.core import Model, from_flax

__all__ = ["ResNet", "resnet20"]


class BasicBlock(nn.Module):
    """``relu(GN(conv(relu(GN(conv(x))))) + shortcut(x))``, convolutions 3x3 without bias."""

    filters: int
    stride: int
    groups: int

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(self.filters, (3, 3), strides=self.stride, padding="SAME", use_bias=False, name="Conv_0")(x)
        h = nn.relu(nn.GroupNorm(num_groups=self.groups, name="GroupNorm_0")(h))
        h = nn.Conv(self.filters, (3, 3), padding="SAME", use_bias=False, name="Conv_1")(h)
        h = nn.GroupNorm(num_groups=self.groups, name="GroupNorm_1")(h)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.filters:  # option A: subsample, zero-pad the channels
            shortcut = x[:, :: self.stride, :: self.stride, :]
            extra = self.filters - x.shape[-1]
            shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
        return nn.relu(h + shortcut)


class ResNet(nn.Module):
    """The CIFAR ResNet of He et al. 2016 with ``6 * blocks + 2`` layers and GroupNorm (module docstring).

    Input ``[B, H, W, C]`` (or ``[B, H, W]``: a channel axis is added); output ``[B, num_outputs]``.
    """

    blocks: int = 3
    num_outputs: int = 10
    groups: int = 2

    @nn.compact
    def __call__(self, x):
        if x.ndim == 3:
            x = x[..., None]
        h = nn.Conv(16, (3, 3), padding="SAME", use_bias=False, name="Conv_0")(x)
        h = nn.relu(nn.GroupNorm(num_groups=self.groups, name="GroupNorm_0")(h))
        for stage, filters in enumerate((16, 32, 64)):
            for b in range(self.blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                h = BasicBlock(filters, stride, self.groups, name=f"Block_{stage}_{b}")(h)
        h = jnp.mean(h, axis=(1, 2))  # global average pooling: [B, 64]
        return nn.Dense(self.num_outputs, name="Dense_0")(h)


def resnet20(num_outputs: int = 10, groups: int = 2, policy=None) -> Model:
    """ResNet-20 (He et al. 2016) with GroupNorm (Hsieh et al. 2020), 269,722 parameters for 10 classes.

    ``groups`` must divide 16 (the narrowest layer). ``policy``: quantization-aware
    training goes through ``from_flax``'s generic path.
    """
    if groups < 1 or 16 % groups:
        raise ValueError(f"resnet20: groups must divide 16 (the narrowest layer's channels), got {groups}")
    if num_outputs < 1:
        raise ValueError(f"resnet20: num_outputs must be >= 1, got {num_outputs}")
    return from_flax(ResNet(blocks=3, num_outputs=num_outputs, groups=groups), policy)
