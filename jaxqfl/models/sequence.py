"""Sequence models for next-token prediction over bytes: the character LSTM and a small transformer.

Both read token ids ``x [B, T]`` (float32 holding integers ``0..vocab``; the
engine passes features as float32; id ``vocab`` = ``jaxqfl.data.text.PAD_INPUT``
is padding) and return logits ``[B, T, vocab]``: position ``t`` predicts token
``t + 1`` from tokens ``0..t`` only (causal), as :func:`jaxqfl.tasks.next_token`
expects. Embedding tables have ``vocab + 1`` rows (the last one for padding).
They are ordinary Flax Linen modules (``nn.Embed``, ``nn.OptimizedLSTMCell``,
``nn.MultiHeadDotProductAttention``, ``nn.LayerNorm``, ``nn.Dense``).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxqfl.models.core import Model, from_flax

__all__ = ["CharLSTM", "Transformer", "char_lstm", "transformer"]


def _token_ids(x):
    return jnp.asarray(x).astype(jnp.int32)


class CharLSTM(nn.Module):
    """The character LSTM of McMahan et al. 2017 (Shakespeare): an 8-dimensional embedding,
    ``layers`` LSTM layers of ``hidden`` units (2 x 256 in the paper), and a dense
    softmax layer with one output per token, applied at every position.

    McMahan, Moore, Ramage, Hampson, Agüera y Arcas. Communication-Efficient
    Learning of Deep Networks from Decentralized Data. AISTATS 2017 (Section 3:
    "a two-layer LSTM classifier containing 256 nodes in each layer", characters
    embedded "into a learned 8 dimensional space"). Cells: Hochreiter and
    Schmidhuber 1997, with the forget gate of Gers et al. 2000 (``nn.OptimizedLSTMCell``).
    """

    vocab: int = 256
    embed_dim: int = 8
    hidden: int = 256
    layers: int = 2

    @nn.compact
    def __call__(self, x):
        h = nn.Embed(self.vocab + 1, self.embed_dim, name="Embed_0")(_token_ids(x))  # [B, T, E]
        for i in range(self.layers):
            h = nn.RNN(nn.OptimizedLSTMCell(self.hidden), name=f"LSTM_{i}")(h)  # [B, T, H]
        return nn.Dense(self.vocab, name="Dense_0")(h)  # [B, T, vocab]


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``h + MHA(LN(h))`` (causal), then ``h + MLP(LN(h))``, MLP ``W -> 4W -> W`` (GELU)."""

    width: int
    heads: int

    @nn.compact
    def __call__(self, h, mask):
        a = nn.LayerNorm(name="LayerNorm_0")(h)
        h = h + nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=self.width,
                                                 name="Attention_0")(a, a, mask=mask)
        m = nn.LayerNorm(name="LayerNorm_1")(h)
        m = nn.Dense(4 * self.width, name="Dense_0")(m)
        return h + nn.Dense(self.width, name="Dense_1")(nn.gelu(m))


class Transformer(nn.Module):
    """A small decoder-only transformer (Vaswani et al. 2017, "Attention Is All You Need";
    decoder-only language modelling as in Radford et al. 2018/2019, GPT and GPT-2,
    whose pre-LayerNorm block this follows): token embedding plus a learned
    position embedding of ``context`` positions, ``depth`` blocks of causal
    multi-head self-attention (``heads`` heads over ``width``) and a 4x MLP,
    a final LayerNorm and a dense layer to ``vocab`` logits.

    The attention mask is lower-triangular (``nn.make_causal_mask``): position
    ``t`` attends to ``0..t``. Inputs may be shorter than ``context``, never longer.
    """

    vocab: int = 256
    width: int = 64
    depth: int = 2
    heads: int = 4
    context: int = 80

    @nn.compact
    def __call__(self, x):
        ids = _token_ids(x)  # [B, T]
        if ids.shape[-1] > self.context:
            raise ValueError(f"Transformer: input length {ids.shape[-1]} exceeds its context {self.context}")
        h = nn.Embed(self.vocab + 1, self.width, name="Embed_0")(ids)
        pos = self.param("position", nn.initializers.normal(0.02), (self.context, self.width))
        h = h + pos[: ids.shape[-1]]
        mask = nn.make_causal_mask(ids)  # [B, 1, T, T]
        for i in range(self.depth):
            h = Block(self.width, self.heads, name=f"Block_{i}")(h, mask)
        return nn.Dense(self.vocab, name="Dense_0")(nn.LayerNorm(name="LayerNorm_0")(h))


def char_lstm(vocab: int = 256, embed_dim: int = 8, hidden: int = 256, layers: int = 2, policy=None) -> Model:
    """The 2-layer, 256-unit character LSTM of McMahan et al. 2017 (see :class:`CharLSTM`).

    ``policy``: quantization-aware training goes through ``from_flax``'s generic path.
    """
    for name, v in (("vocab", vocab), ("embed_dim", embed_dim), ("hidden", hidden), ("layers", layers)):
        if int(v) < 1:
            raise ValueError(f"char_lstm: {name} must be >= 1, got {v}")
    return from_flax(CharLSTM(vocab=vocab, embed_dim=embed_dim, hidden=hidden, layers=layers), policy)


def transformer(vocab: int = 256, width: int = 64, depth: int = 2, heads: int = 4, context: int = 80,
                policy=None) -> Model:
    """A small decoder-only transformer language model (see :class:`Transformer`).

    ``width`` must be a multiple of ``heads``.
    """
    for name, v in (("vocab", vocab), ("width", width), ("depth", depth), ("heads", heads), ("context", context)):
        if int(v) < 1:
            raise ValueError(f"transformer: {name} must be >= 1, got {v}")
    if width % heads:
        raise ValueError(f"transformer: width {width} is not a multiple of heads {heads}")
    return from_flax(Transformer(vocab=vocab, width=width, depth=depth, heads=heads, context=context), policy)
