"""Error feedback: each client keeps what its codec dropped and adds it back next time.

Karimireddy, Rebjock, Stich, Jaggi, "Error Feedback Fixes SignSGD and other
Gradient Compression Schemes", ICML 2019 (Algorithm 2, EF-SGD), also Seide et
al. 2014 and Stich et al. 2018 ("memory"). With residual ``e`` (``e_0 = 0``)::

    c_t     = delta_t + e_t             (corrected update)
    sent_t  = decode(encode(c_t))
    e_{t+1} = c_t - sent_t

so the updates telescope: ``sum_{t<T} sent_t + e_T = sum_{t<T} delta_t``.
Nothing a biased codec drops is lost, only delayed.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from jaxqfl.compress.base import Codec


class ErrorFeedbackState(NamedTuple):
    """One client's residual ``e`` (float32, shaped like the params) and the inner codec's state."""

    residual: Any
    inner: Any


def error_feedback(inner: Optional[Codec] = None):
    """Wrap ``inner`` with error feedback; its state is the per-client residual.

    Args:
      inner: the codec whose error is fed back. When omitted, returns a
        wrapper (``Codec -> Codec``) for :func:`~jaxqfl.compress.chain`.

    Bits: the inner codec's (the residual never travels). ``decode`` and
    ``finalize`` are the inner codec's. The state costs one float32 copy of
    the params per client: the engine stores ``num_clients`` of them. On the
    downlink there is one sender, so one residual (kept by the server). No
    integer-domain aggregation (the residual makes each client's input its
    own).
    """
    if inner is None:
        return error_feedback
    if not isinstance(inner, Codec):
        raise TypeError(f"error_feedback wraps a Codec, got {type(inner).__name__}")

    def init(params):
        residual = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
        return ErrorFeedbackState(residual, inner.init(params))

    def encode(delta, state, key):
        corrected = jax.tree.map(lambda d, e: jnp.asarray(d, jnp.float32) + e, delta, state.residual)
        message, inner_state = inner.encode(corrected, state.inner, key)
        residual = jax.tree.map(jnp.subtract, corrected, inner.decode(message))
        return message, ErrorFeedbackState(residual, inner_state)

    return Codec(init=init, encode=encode, decode=inner.decode, bits=inner.bits, finalize=inner.finalize)
